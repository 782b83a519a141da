"""How a batched step's verify rows are shared when `max_verify_rows` caps them (`generation.row_sharing`).

With C rows and A sequences in flight, every sequence verifies its root; the C - A draft rows go
    even    to every sequence alike: b_s = min(budget, C // A - 1) drafts, its scorer building at b_s
    scores  where a draft is likeliest to be accepted: every scorer builds at the full budget, and the
            step keeps the C - A draft nodes of highest score over all the trees (`keep_best`).
A node's score is its drafter's cumulative log-prob (`DraftTree.scores`): log P(the path is
accepted) where the drafter's log-probs are acceptance probabilities (the calibrated lookup,
`drafters/lookup_calibration.py`), so the kept nodes are those with the most expected accepted
tokens a row can buy. Each sequence's output is unchanged (lossless for any tree); its τ per row is
what changes.
"""

from __future__ import annotations

import math

from .tree import DraftTree


def keep_best(trees: list[DraftTree], drafts: int) -> list[DraftTree]:
    """The trees cut to the `drafts` draft nodes of highest score over all of them.

    A node ranks by its effective score, min(its score, its parent's effective score) (NaN: -inf),
    then by depth, shallower first: a parent never ranks after its child, so every cut tree keeps a
    prefix-closed subtree (laid out in the same pre-order) whatever scores a scorer wrote."""
    ranked: list[tuple[float, int, int, int]] = []  # (-effective score, depth, tree, node)
    for t, tree in enumerate(trees):
        parents, depths = tree.parents.tolist(), tree.depths.tolist()
        effective = [0.0] * len(parents)
        for i, score in enumerate(tree.scores.tolist()[1:], 1):  # pre-order: a parent comes before its children
            effective[i] = min(-math.inf if score != score else score, effective[parents[i]])
            ranked.append((-effective[i], depths[i], t, i))
    ranked.sort()
    kept: list[list[int]] = [[0] for _ in trees]
    for _, _, t, i in ranked[: max(drafts, 0)]:
        kept[t].append(i)
    return [tree if len(keep) == tree.size else _cut(tree, sorted(keep)) for tree, keep in zip(trees, kept)]


def _cut(tree: DraftTree, keep: list[int]) -> DraftTree:
    """The prefix-closed subtree of nodes `keep` (ascending pre-order indices, root first)."""
    where = {node: k for k, node in enumerate(keep)}
    parents = tree.parents.tolist()
    tokens, scores = tree.tokens.tolist(), tree.scores.tolist()
    return DraftTree.from_preorder([tokens[i] for i in keep], [-1] + [where[parents[i]] for i in keep[1:]],
                                   [scores[i] for i in keep])
