"""`greedy` tree verifier.

With t(i) = argmax of the target's logits at node i (the target's own next token after the path
root -> i), a draft node i is *correct* iff tokens[i] == t(parent(i)). Accept the deepest node
whose whole ancestor chain is correct (sibling tokens are distinct, so at most one child of an
accepted node is correct and the accepted path is unique); the bonus token is t(deepest).

Every committed token is therefore exactly the token plain greedy decoding would produce:
speculation changes how many forwards it takes, never what is emitted.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from ..core.interfaces import Acceptance, DecodeState
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


class GreedyVerifier:
    def __init__(self, options: GreedyOptions | None = None):
        self.options = options or GreedyOptions()

    def accept(self, tree: DraftTree, logits: torch.Tensor, state: DecodeState) -> Acceptance:
        target_next = logits.argmax(dim=-1).tolist()  # [N]; the round's one host sync
        return accept_greedy(tree, target_next)
