"""Concrete `Proposal`s: what drafters hand to tree scorers.

A proposal is a lazy trie of candidate continuations below the root. `children(path)` gives the
candidate next tokens after `path` (a tuple of draft tokens) with conditional log-probs
log q(token | root, path), sorted descending. Scorers only ever walk it from the root, so a
proposal may be infinite in principle (per-depth marginals) and is never materialised whole.
"""

from __future__ import annotations

import math
from operator import itemgetter
from typing import Callable, Iterable, Sequence

import torch


class WellFormed:
    """Marker of a proposal kind whose rows are (int token, float log-prob) tuples by construction
    (the built-in kinds: a trie, per-depth marginals, their calibrated forms, nothing). A round
    reads such a proposal (and a `MergedProposal` of them) without `core/checks.Checked`'s pass
    over every row; the tree built from it is still checked whole (`check_tree`), and a build or
    check that fails re-reads the proposal through `Checked`, so a drafter's fault stays its own."""

    __slots__ = ()


class TokenTrie(WellFormed):
    """An explicit trie (n-gram continuations, rescored trees, oracles).

    Built from paths with log-probs; a child's conditional log-prob is given per edge. A path's
    sorted row is made once, when first asked for, and handed out as the same immutable tuple
    after (a scorer reads some paths more than once; the pipeline's checks read a tuple once)."""

    def __init__(self) -> None:
        self._children: dict[tuple[int, ...], dict[int, float]] = {}
        self._rows: dict[tuple[int, ...], tuple[tuple[int, float], ...]] = {}  # path -> its sorted children

    def add_edge(self, path: tuple[int, ...], token: int, logp: float) -> None:
        """Add `token` after `path` (keeping the larger log-prob if it exists)."""
        kids = self._children.setdefault(path, {})
        kids[token] = max(logp, kids.get(token, -math.inf))
        self._rows.pop(path, None)

    def set_children(self, path: tuple[int, ...], kids: dict[int, float]) -> None:
        """All of `path`'s children at once (distinct tokens -> log-probs), replacing any it had."""
        self._children[path] = kids
        self._rows.pop(path, None)

    def add_sequence(self, tokens: Sequence[int], logps: Sequence[float] | None = None) -> None:
        """Add a whole continuation; edge d gets `logps[d]` (default 0: log 1)."""
        for d, tok in enumerate(tokens):
            self.add_edge(tuple(tokens[:d]), int(tok), 0.0 if logps is None else float(logps[d]))

    @staticmethod
    def from_counts(continuations: Iterable[Sequence[int]],
                    edge_logp: Callable[[int, int, int], float] | None = None) -> "TokenTrie":
        """Edge log-prob = log(count(path + token) / count(path)) over the given continuations:
        the empirical conditional distribution of a set of observed continuations. `edge_logp`
        (depth of the edge, count(path + token), count(path)) -> log-prob <= 0 scores the edges
        instead (a calibration, `drafters/lookup_calibration.py`)."""
        counts = path_counts(continuations)
        trie = TokenTrie()
        for path, c in counts.items():
            if path:  # each (parent, token) once: no max to keep
                parent = path[:-1]
                whole = counts[parent]
                logp = math.log(c / whole) if edge_logp is None else edge_logp(len(path), c, whole)
                trie._children.setdefault(parent, {})[path[-1]] = logp
        return trie

    def children(self, path: tuple[int, ...]) -> Sequence[tuple[int, float]]:
        path = path if type(path) is tuple else tuple(path)
        row = self._rows.get(path)
        if row is None:
            kids = self._children.get(path)
            row = self._rows[path] = tuple(sorted(kids.items(), key=lambda kv: (-kv[1], kv[0]))) if kids else ()
        return row


def path_counts(continuations: Iterable[Sequence[int]]) -> dict[tuple[int, ...], int]:
    """path -> how many of the continuations start with it (the empty path: all of them)."""
    counts: dict[tuple[int, ...], int] = {(): 0}
    for seq in continuations:
        counts[()] += 1
        path: tuple[int, ...] = ()
        for token in seq:
            path += (int(token),)
            counts[path] = counts.get(path, 0) + 1
    return counts


class DepthMarginals(WellFormed):
    """Per-depth top-k distributions from a parallel drafter: the children of ANY path of length
    d are the same top-k candidates of depth d + 1, with their marginal log-probs. A branch's
    score is then the sum of per-depth log-probs (the product of marginals)."""

    def __init__(self, tokens: torch.Tensor, logps: torch.Tensor):
        # tokens [D, K] int64, logps [D, K] float, each row sorted descending
        self._kids = tuple(tuple(zip(t, lp)) for t, lp in zip(tokens.tolist(), logps.float().tolist()))  # [D][K] (token, logp)

    @property
    def depth(self) -> int:
        return len(self._kids)

    def children(self, path: tuple[int, ...]) -> Sequence[tuple[int, float]]:
        d = len(path)
        return self._kids[d] if d < len(self._kids) else []  # the same (immutable) row for every path of length d


class MergedProposal:
    """Several proposals as one: the children of a path are the union of every part's children
    of that path; a token proposed by more than one part keeps its best log-prob. Used to put a
    head's per-depth candidates and prompt-lookup continuations into one tree, whose scorer then
    spends the budget on whichever branches score best."""

    def __init__(self, *parts: "object"):
        self.parts = parts  # each has children(path) -> [(token, logp)]

    def children(self, path: tuple[int, ...]) -> Sequence[tuple[int, float]]:
        found = [kids for part in self.parts if (kids := part.children(path))]  # type: ignore[attr-defined]
        if len(found) < 2:  # most paths leave all but one part (already sorted): nothing to merge
            return found[0] if found else []
        best, rest = dict(found[0]), found[1:]  # the parts' pairs as they gave them (the pipeline checks the merged row)
        if len(best) < len(found[0]):  # a token twice in one row: the dict kept its last log-prob, not its best
            best, rest = {}, found
        for kids in rest:
            for token, logp in kids:
                if logp > best.get(token, -math.inf):
                    best[token] = logp
        row = sorted(best.items())  # by token: the order of equal log-probs
        row.sort(key=itemgetter(1), reverse=True)  # best first (a stable sort: equal log-probs stay in token order)
        return row


class EmptyProposal(WellFormed):
    """No candidates: the round verifies the root alone (plain decoding)."""

    def children(self, path: tuple[int, ...]) -> list[tuple[int, float]]:
        return []
