"""`best-first` and `chain` tree scorers.

best-first (exact): the B draft nodes whose paths have the highest cumulative log-prob
    score(v) = sum over edges e on root -> v of log q(e)
chosen from the proposal's lazy trie. Because every log q <= 0, a node never outscores its
parent, so the top-B set is prefix-closed and a max-heap finds it exactly: each pop adds ONE
node and pushes (a) its next sibling (rank + 1 under the same parent) and (b) its first child.
The heap never holds more than 2 entries per added node, so a build costs O(B log B) children()
calls plus sorting.

chain: the rank-1 path only (linear speculation), at most B deep.
"""

from __future__ import annotations

import heapq
from typing import Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..core.cuda_graphs import GraphSet
from ..core.device_proposal import DeviceProposals, DeviceTrees
from ..core.interfaces import Proposal
from ..core.tree import DraftTree
from ..core.invariant import interpreted
from .best_first_device import GraphedGrowth, fills, grow


class BestFirstOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_depth: int | None = Field(None, ge=1, le=4096, description="deepest draft level allowed (None: no limit)")
    device_build: Literal["graph", "triton"] = Field(
        "graph", description="how `build_on_device` runs on CUDA: the torch form replayed from a CUDA graph per shape "
                             "(graph), or one Triton launch per step (triton, `best_first_kernel.py`; measured slower end "
                             "to end, bench/RESULTS.md); the same trees. On a CPU the torch form (the Triton one under "
                             "TRITON_INTERPRET=1)")


class ChainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BestFirstScorer:
    def __init__(self, options: BestFirstOptions | None = None):
        self.options = options or BestFirstOptions()
        self._graphed = GraphedGrowth()  # CUDA: `build_on_device` replayed from graphs (none captured elsewhere)

    @property
    def device_graphs(self) -> GraphSet:
        """The device build's CUDA graphs (the bench counts their captures)."""
        return self._graphed.graphs

    def build_on_device(self, proposals: DeviceProposals, roots: torch.Tensor, prefix_lens: torch.Tensor,
                        budget: int) -> DeviceTrees | None:
        """`BuildsOnDevice`: the same top-B set, grown level by level on the device for every
        sequence at once (`best_first_device.py`); None where a proposal holds fewer than `budget` nodes."""
        if budget < 1 or not fills(proposals, budget, self.options.max_depth):
            return None
        if self.options.device_build == "triton" and (roots.is_cuda or interpreted()):
            from .best_first_kernel import grow_kernel  # Triton, imported where it runs

            return grow_kernel(proposals, roots, prefix_lens, budget, self.options.max_depth)
        if not roots.is_cuda:
            return grow(proposals, roots, prefix_lens, budget, self.options.max_depth)
        return self._graphed(proposals, roots, prefix_lens, budget, self.options.max_depth)

    def build(self, proposal: Proposal, root: int, budget: int) -> DraftTree:
        deepest = self.options.max_depth or budget  # a tree of `budget` drafts is at most `budget` deep
        tokens, parents, scores, depths = [root], [-1], [0.0], [0]
        paths: list[tuple[int, ...]] = [()]
        kids: list[Sequence[tuple[int, float]]] = [proposal.children(()) if budget >= 1 else ()]
        heap: list[tuple[float, int, int, int]] = []  # (-score, tie-break, parent node, child rank)
        if kids[0]:
            heap.append((-(0.0 + kids[0][0][1]), 0, 0, 0))
        counter, push, pop = 1, heapq.heappush, heapq.heappop
        while heap:
            neg_score, _, parent, rank = pop(heap)
            row = kids[parent]
            token = int(row[rank][0])
            node, depth, path = len(tokens), depths[parent] + 1, paths[parent] + (token,)
            tokens.append(token)
            parents.append(parent)
            scores.append(-neg_score)
            depths.append(depth)
            if node == budget:  # full: the last node's children are never read
                break
            paths.append(path)
            if rank + 1 < len(row):  # next sibling
                push(heap, (-(scores[parent] + row[rank + 1][1]), counter, parent, rank + 1))
                counter += 1
            mine = proposal.children(path) if depth < deepest else ()
            kids.append(mine)
            if mine:  # first child
                push(heap, (-(scores[node] + mine[0][1]), counter, node, 0))
                counter += 1
        return DraftTree.from_parents(tokens, parents, scores)


class ChainScorer:
    def __init__(self, options: ChainOptions | None = None):
        self.options = options or ChainOptions()

    def build(self, proposal: Proposal, root: int, budget: int) -> DraftTree:
        tokens, scores, path = [root], [0.0], ()
        while len(tokens) <= budget:
            kids = proposal.children(path)
            if not kids:
                break
            token, logp = kids[0]
            tokens.append(int(token))
            scores.append(scores[-1] + float(logp))
            path = path + (int(token),)
        return DraftTree.chain(tokens, scores)
