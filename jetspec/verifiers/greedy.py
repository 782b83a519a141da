"""`greedy` tree verifier.

With t(i) = argmax of the target's logits at node i (the target's own next token after the path
root -> i), a draft node i is *correct* iff tokens[i] == t(parent(i)). Accept the deepest node
whose whole ancestor chain is correct (sibling tokens are distinct, so at most one child of an
accepted node is correct and the accepted path is unique); the bonus token is t(deepest).

Every committed token is therefore exactly the token plain greedy decoding would produce:
speculation changes how many forwards it takes, never what is emitted.

`accept_on_device` applies the same rule on the logits' device (`walk_on_device`), so the
pipeline reads back only the packed path (`core/on_device.py`), not N argmaxes: on CUDA in one
Triton launch (`triton_walk.py`), elsewhere by the ten torch ops of `walk_ops`, its reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict

from ..core.interfaces import Acceptance, DecodeState
from ..core import on_device
from ..core.on_device import DeviceTree
from ..core.tree import DraftTree


class GreedyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def accept_greedy(tree: DraftTree, target_next: list[int]) -> Acceptance:
    """`target_next[i]` = argmax token at node i. Walk down from the root, following the child
    whose token the target chose."""
    tokens = tree.tokens.tolist()
    sizes = tree.subtree_sizes.tolist()
    node, path = 0, [0]
    while True:
        want = target_next[node]
        child, end, found = node + 1, node + sizes[node], None
        while child < end:  # children of `node` in pre-order: hop over each child's subtree
            if tokens[child] == want:
                found = child
                break
            child += sizes[child]
        if found is None:
            return Acceptance(path=path, bonus=int(want))
        node = found
        path.append(node)


def walk_on_device(tree: DeviceTree, choice: torch.Tensor) -> torch.Tensor:
    """`choice` [N] int64 on the device, the target's token at each node (its argmax, or a
    sampling verifier's draw) -> packed [2D + 3] int64 (`core/on_device.py`), no host sync: one
    Triton launch on CUDA (`triton_walk.walk`), the torch ops of `walk_ops` elsewhere; both
    write the same integers."""
    if on_device.fused(choice) and tree.size > 1:  # the root alone: one cat (`walk_ops`) is one launch too
        from .triton_walk import walk

        return walk(tree, choice)
    return walk_ops(tree, choice)


def walk_ops(tree: DeviceTree, choice: torch.Tensor) -> torch.Tensor:
    """The reference walk: the path and tokens of `accept_greedy`, by ten array ops:

    * draft i is wrong iff tokens[i] != choice[parent(i)]; the root is never wrong;
    * i is rejected iff a wrong j has i in its subtree, j <= i < ends[j] (pre-order), i.e. iff the
      running maximum of ends[j] over the wrong j <= i exceeds i (the root's `ends` is 0);
    * the accepted nodes form one root-down path (sibling tokens are distinct), in pre-order
      index order: a stable sort puts them first, so path[d] is the accepted node at depth d, and
      choice[path] are the drafts it accepts followed by the bonus."""
    n, d = tree.size, tree.max_depth
    if n == 1:  # plain decoding: [k = 1, path = [0], choice[0]]; sizes[0] = 1 and parents[0] = 0
        return torch.cat((tree.subtree_sizes, tree.parents, choice))
    wrong = tree.tokens != choice[tree.parents]  # [N] bool
    reach = torch.where(wrong, tree.ends, 0).cummax(0).values  # [N]: furthest end of a wrong subtree so far
    accepted = reach <= tree.index  # [N] bool
    path = torch.sort(accepted, descending=True, stable=True).indices[: d + 1]  # [D + 1], accepted first
    return torch.cat((accepted.sum().view(1), path, choice[path]))  # [2D + 3]


class GreedyVerifier:
    def __init__(self, options: GreedyOptions | None = None):
        self.options = options or GreedyOptions()

    def accept(self, tree: DraftTree, logits: torch.Tensor, state: DecodeState) -> Acceptance:
        target_next = logits.argmax(dim=-1).tolist()  # [N]; the round's one host sync
        return accept_greedy(tree, target_next)

    def accept_on_device(self, tree: DeviceTree, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """`AcceptsOnDevice`: logits [N, V] -> packed [2D + 3] int64, no host sync."""
        return walk_on_device(tree, logits.argmax(dim=-1))

    def accept_batch_on_device(self, trees: Sequence[DeviceTree], logits: torch.Tensor,
                               cu_rows: Sequence[int]) -> list[torch.Tensor]:
        """`AcceptsBatchOnDevice` (greedy keeps no per-sequence state): one argmax over the step's
        R rows; a step of roots alone (plain decoding) packs [1, 0, choice_s] for every sequence in
        one op; else on CUDA the trees of one block are walked in one launch (`walk_many`), and
        otherwise each over its own rows of the choice."""
        choice = logits.argmax(dim=-1)  # [R]
        if all(t.size == 1 for t in trees):  # as `walk_ops` packs a root alone: k = 1, path [0], its token
            packed = torch.stack((torch.ones_like(choice), torch.zeros_like(choice), choice), dim=1)  # [S, 3]
            return list(packed.unbind(0))
        if on_device.fused(choice):
            from .triton_walk import one_block, walk_many

            if one_block(trees, cu_rows):  # the engine's trees (`TreeUpload.many`): one launch for the step
                return walk_many(trees, choice, cu_rows)
        return [walk_on_device(t, choice[cu_rows[s] : cu_rows[s + 1]]) for s, t in enumerate(trees)]
