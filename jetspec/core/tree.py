"""`DraftTree`: the candidate tree one decode round verifies.

Vocabulary
----------
* node 0 is the **root**: the last committed token (the previous round's bonus token). Its K/V
  has not been computed yet, so the target's verify pass runs over the root AND the drafts.
* every other node is a **draft** token; the **budget** is the number of draft nodes (N - 1).
* nodes are stored in **DFS pre-order**, so `parents[i] < i` and the subtree of node j is the
  contiguous range `[j, j + subtree_sizes[j])`. Hence the interval rule

      j is an ancestor-or-self of i  <=>  j <= i < j + subtree_sizes[j]

  Two int vectors (pre-order index, subtree size) replace an N x N attention mask: a node sees
  the whole committed prefix and, among tree nodes, its ancestors and itself.
* the RoPE position of node i is `prefix_len + depths[i]` (prefix_len = committed tokens in KV).
* `scores[i]` is the drafter's cumulative log-prob of the path root -> i (root: 0).

A chain (plain prefill, plain greedy decode) is the special case `parents[i] = i - 1`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .errors import InputError


@dataclass(frozen=True)
class DraftTree:
    tokens: torch.Tensor  # [N] int64, tokens[0] = root token
    parents: torch.Tensor  # [N] int64, parents[0] = -1, parents[i] < i
    depths: torch.Tensor  # [N] int64, depths[0] = 0
    subtree_sizes: torch.Tensor  # [N] int64, subtree_sizes[0] = N
    scores: torch.Tensor  # [N] float32, cumulative drafter log-prob, scores[0] = 0

    # ------------------------------------------------------------------ construction
    @staticmethod
    def from_parents(
        tokens: Sequence[int],
        parents: Sequence[int],
        scores: Sequence[float] | None = None,
    ) -> "DraftTree":
        """Build from nodes in any order where node 0 is the root and every parent index is
        valid; nodes are re-laid in DFS pre-order (children keep their given relative order).
        The layout makes every invariant of `validate` but distinct sibling tokens, checked here."""
        n = len(tokens)
        if n == 0 or len(parents) != n or (scores is not None and len(scores) != n):
            raise InputError(
                f"a draft tree needs equal-length tokens/parents/scores with a root; got "
                f"{len(tokens)} tokens, {len(parents)} parents"
            )
        if parents[0] != -1:
            raise InputError(f"node 0 must be the root (parent -1), got parent {parents[0]}")
        children: list[list[int]] = [[] for _ in range(n)]
        for i in range(1, n):
            p = parents[i]
            if not 0 <= p < n or p == i:
                raise InputError(f"node {i} has parent {p}; parents must name another node 0..{n - 1}")
            children[p].append(i)
        order: list[int] = []
        new_index = [0] * n
        stack = [0]
        while stack:  # iterative pre-order DFS
            v = stack.pop()
            new_index[v] = len(order)
            order.append(v)
            if kids := children[v]:
                stack.extend(kids[::-1])
        if len(order) != n:
            raise InputError(f"the draft tree is not connected: {n - len(order)} node(s) unreachable from the root")
        new_parents = [-1] + [new_index[parents[o]] for o in order[1:]]
        depths, sizes = _depths_and_sizes(new_parents)
        new_tokens = [tokens[o] for o in order]
        if len({(new_parents[i], new_tokens[i]) for i in range(1, n)}) != n - 1:  # the one invariant not made here
            seen: set[tuple[int, int]] = set()
            for i in range(1, n):
                if (new_parents[i], new_tokens[i]) in seen:
                    raise InputError(f"node {new_parents[i]} has two children with token {new_tokens[i]}; sibling tokens must differ")
                seen.add((new_parents[i], new_tokens[i]))
        return DraftTree._assemble(new_tokens, new_parents, depths, sizes, None if scores is None else [scores[o] for o in order])

    @staticmethod
    def from_preorder(
        tokens: Sequence[int], parents: Sequence[int], scores: Sequence[float] | None = None
    ) -> "DraftTree":
        """Build from nodes already in DFS pre-order (checked as `validate` checks)."""
        depths, sizes = _depths_and_sizes(parents)
        tree = DraftTree._assemble(tokens, parents, depths, sizes, scores)
        if not invariants_hold(list(tokens), list(parents), depths, sizes):
            tree.validate()  # names the first broken invariant
        return tree

    @staticmethod
    def _assemble(tokens: Sequence[int], parents: Sequence[int], depths: list[int], sizes: list[int],
                  scores: Sequence[float] | None) -> "DraftTree":
        """The tensors of a pre-order tree, unchecked: the four int vectors are rows of one [4, N]
        int64 array made by numpy (one allocation; a torch.tensor per field cost more than the rest
        of a small tree's construction)."""
        try:
            ints = np.array((tokens, parents, depths, sizes), dtype=np.int64)  # [4, N]
            floats = np.zeros(len(tokens), np.float32) if scores is None else np.array(scores, dtype=np.float32)  # [N]
        except (TypeError, ValueError, OverflowError) as e:
            raise InputError(f"a draft tree's tokens and parents must be integers and its scores numbers: {e}") from None
        rows = torch.from_numpy(ints)
        return DraftTree(tokens=rows[0], parents=rows[1], depths=rows[2], subtree_sizes=rows[3], scores=torch.from_numpy(floats))

    @staticmethod
    def chain(tokens: Sequence[int], scores: Sequence[float] | None = None) -> "DraftTree":
        """A single path root -> tokens[1] -> tokens[2] ... (prefill and plain decode)."""
        return DraftTree.from_preorder(tokens, [-1] + list(range(len(tokens) - 1)), scores)

    @staticmethod
    def root_only(token: int) -> "DraftTree":
        """The tree of plain greedy decoding: just the root, no drafts. Built every plain round,
        so only its token is a new tensor: the structure is one shared, valid template (trees are
        never changed in place)."""
        return DraftTree(torch.tensor([token]), _ROOT.parents, _ROOT.depths, _ROOT.subtree_sizes, _ROOT.scores)

    # ------------------------------------------------------------------ queries
    @property
    def size(self) -> int:
        """N, the number of nodes including the root."""
        return int(self.tokens.numel())

    @property
    def budget(self) -> int:
        """Number of draft nodes (N - 1)."""
        return self.size - 1

    def is_ancestor(self, j: int, i: int) -> bool:
        """True iff node j is an ancestor of node i or i itself (the interval rule)."""
        return j <= i < j + int(self.subtree_sizes[j])

    def ancestor_mask(self) -> torch.Tensor:
        """[N, N] bool, mask[i, j] = j is an ancestor-or-self of i. For references and tests:
        kernels use the interval rule instead of materialising this."""
        return interval_ancestors(self.subtree_sizes)

    def position_ids(self, prefix_len: int) -> torch.Tensor:
        """[N] int64 RoPE positions: prefix_len + depth."""
        return self.depths + prefix_len

    def path_to(self, i: int) -> list[int]:
        """Node indices root -> i (inclusive)."""
        path = []
        while i != -1:
            path.append(i)
            i = int(self.parents[i])
        return path[::-1]

    def children(self, i: int) -> list[int]:
        """Direct children of node i, in pre-order."""
        out, c, end = [], i + 1, i + int(self.subtree_sizes[i])
        while c < end:
            out.append(c)
            c += int(self.subtree_sizes[c])
        return out

    # ------------------------------------------------------------------ invariants
    def validate(self) -> None:
        """Raise `InputError` naming the first broken invariant (`invariants_hold` is the fast
        check; this is the one that explains)."""
        n = self.size
        shapes = {t.shape for t in (self.tokens, self.parents, self.depths, self.subtree_sizes, self.scores)}
        if shapes != {torch.Size([n])}:
            raise InputError(f"draft tree fields must all have shape [N]={n}; got {sorted(map(tuple, shapes))}")
        parents = self.parents.tolist()
        sizes = self.subtree_sizes.tolist()
        depths = self.depths.tolist()
        tokens = self.tokens.tolist()
        if parents[0] != -1 or depths[0] != 0 or sizes[0] != n:
            raise InputError("node 0 must be the root: parent -1, depth 0, subtree size N")
        seen_children: set[tuple[int, int]] = set()
        for i in range(1, n):
            p = parents[i]
            if not 0 <= p < i:
                raise InputError(f"node {i} has parent {p}; in DFS pre-order a parent comes before its child")
            if not p < i < p + sizes[p]:
                raise InputError(f"node {i} lies outside its parent {p}'s subtree range: not DFS pre-order")
            if depths[i] != depths[p] + 1:
                raise InputError(f"node {i} has depth {depths[i]}, its parent {p} has depth {depths[p]}")
            if (p, tokens[i]) in seen_children:
                raise InputError(f"node {p} has two children with token {tokens[i]}; sibling tokens must differ")
            seen_children.add((p, tokens[i]))
        recount = [1] * n
        for i in range(n - 1, 0, -1):
            recount[parents[i]] += recount[i]
        if recount != sizes:
            bad = next(i for i in range(n) if recount[i] != sizes[i])
            raise InputError(f"node {bad} has subtree size {sizes[bad]} but {recount[bad]} descendants-or-self")


def _depths_and_sizes(parents: Sequence[int]) -> tuple[list[int], list[int]]:
    """Depths and subtree sizes of a tree in pre-order (parents[i] < i), from its parents alone."""
    n = len(parents)
    depths = [0] * n
    for i in range(1, n):
        depths[i] = depths[parents[i]] + 1
    sizes = [1] * n
    for i in range(n - 1, 0, -1):  # children come after parents in pre-order
        sizes[parents[i]] += sizes[i]
    return depths, sizes


def invariants_hold(tokens: list[int], parents: list[int], depths: list[int], sizes: list[int]) -> bool:
    """Every invariant `DraftTree.validate` checks, in one pass from the last node up: root first
    (parent -1, depth 0, subtree N), pre-order (0 <= parent < node, node inside its parent's
    subtree interval), depth = parent's + 1, subtree size = 1 + the children's, sibling tokens
    distinct. Plain Python over lists: for trees of a decode round (tens of nodes) it is several
    times faster than numpy, whose per-call cost dominates at that size."""
    n = len(tokens)
    if not (n >= 1 and len(parents) == len(depths) == len(sizes) == n):
        return False
    if not (parents[0] == -1 and depths[0] == 0 and sizes[0] == n):
        return False
    recount, siblings = [1] * n, set()
    for i in range(n - 1, 0, -1):  # children come after parents: a subtree is counted before its root
        p = parents[i]
        if not (0 <= p < i and i < p + sizes[p] and depths[i] == depths[p] + 1):
            return False
        recount[p] += recount[i]
        siblings.add((p, tokens[i]))
    return recount == sizes and len(siblings) == n - 1


_ROOT = DraftTree.chain([0])  # root_only's template


# ---------------------------------------------------------------------------- the tree mask
# The one materialised form of the tree mask; the reference attention, the `transformers` target
# and the draft heads build theirs here (kernels apply the interval rule without a mask).


def interval_ancestors(subtree_sizes: torch.Tensor) -> torch.Tensor:
    """subtree_sizes [N] of a DFS pre-order tree -> [N, N] bool, [i, j] = j is an
    ancestor-or-self of i (the interval rule j <= i < j + subtree_sizes[j]), on their device."""
    idx = torch.arange(subtree_sizes.numel(), device=subtree_sizes.device)
    j, i = idx[None, :], idx[:, None]
    return (j <= i) & (i < j + subtree_sizes[None, :])


def with_prefix(ancestors: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """ancestors [M, M] bool among M new inputs -> [M, prefix_len + M] bool attention mask:
    every input sees the whole committed prefix, then its ancestors-or-self."""
    m = ancestors.shape[0]
    return torch.cat([torch.ones(m, prefix_len, dtype=torch.bool, device=ancestors.device), ancestors], dim=1)


def tree_mask(subtree_sizes: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """[N, prefix_len + N] bool, True where query i may attend to key j (`AttentionMeta`'s rule)."""
    return with_prefix(interval_ancestors(subtree_sizes), prefix_len)
