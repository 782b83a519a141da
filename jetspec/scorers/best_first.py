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
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..core.interfaces import Proposal
from ..core.tree import DraftTree


class BestFirstOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_depth: int | None = Field(None, ge=1, le=4096, description="deepest draft level allowed (None: no limit)")


class ChainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BestFirstScorer:
    def __init__(self, options: BestFirstOptions | None = None):
        self.options = options or BestFirstOptions()

    def build(self, proposal: Proposal, root: int, budget: int) -> DraftTree:
        max_depth = self.options.max_depth
        tokens, parents, scores, depths = [root], [-1], [0.0], [0]
        paths: list[tuple[int, ...]] = [()]
        kids: list[Sequence[tuple[int, float]]] = [proposal.children(())]
        heap: list[tuple[float, int, int, int]] = []  # (-score, tie-break, parent node, child rank)
        counter = 0

        def push(parent: int, rank: int) -> None:
            nonlocal counter
            if rank < len(kids[parent]) and (max_depth is None or depths[parent] < max_depth):
                heapq.heappush(heap, (-(scores[parent] + kids[parent][rank][1]), counter, parent, rank))
                counter += 1

        push(0, 0)
        while heap and len(tokens) <= budget:
            neg_score, _, parent, rank = heapq.heappop(heap)
            token = int(kids[parent][rank][0])
            node = len(tokens)
            tokens.append(token)
            parents.append(parent)
            scores.append(-neg_score)
            depths.append(depths[parent] + 1)
            paths.append(paths[parent] + (token,))
            kids.append(proposal.children(paths[node]))
            push(parent, rank + 1)  # next sibling
            push(node, 0)  # first child
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
