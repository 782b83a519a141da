"""What a parallel head's drafted token is worth: acceptance rates measured on the target's own text.

One head forward gives per-depth marginals q_d(t) = P(token at depth d = t | context, root): the
same top-k row below every path of length d - 1 (`DepthMarginals`). A tree scored by
sum_d log q_d(t_d) ignores two facts that verification makes matter:
  * an edge is only ever verified when the path above it was accepted;
  * the head's depth-d row is mostly the continuation of its own rank-1 path: below a parent that is
    its row's rank 1 the rank-1 child is right far more often than below a rank-3 parent.
A calibration scores each edge by what edges like it turned out to be:

    score(edge) = log rate[d][g][b]
    rate[d][g][b] = P(t is the target's next token | the path to t was accepted, depth d, parent group g,
                      q_d(t) in bin b)
      d = the edge's depth - 1 (0 .. depths - 1, one row per drafted depth of the head)
      g = 0: the root's children (d = 0); 1, 2: the parent is rank 1 / rank 2 of its row; 3: a lower rank
      b = bin of q_d(t) over BIN_EDGES

The `jetspec` drafter uses it with `head_calibration = true` (off by default: bench/RESULTS.md).
`calibration_fit.py` measures it on held-out greedy answers (`jetspec calibrate-head`; `jetspec
train-head` writes one beside every head it saves). Rates are smoothed ((s + 1) / (t + 2)), a thin
cell (< MIN_TRIALS) takes its depth and bin's rate over all groups, and each (d, g) row is made
non-decreasing in q (pool-adjacent-violators): a surer head is never worth less. Every rate lies
in (0, 1), so every edge scores below 0 and the best-first tree stays prefix-closed.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ...core.errors import InputError
from ...core.format_file import read_format_file, write_format_file
from ...core.proposal import WellFormed

FORMAT = "jetspec-head-calibration/1"
FILE = "head_rates.json"  # beside head.json
BIN_EDGES = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # bins of q
BINS = len(BIN_EDGES) - 1
GROUPS = 4  # root's children, below a rank-1 parent, below rank 2, below rank >= 3
MIN_TRIALS = 30


def q_bin(logp: float) -> int:
    return min(BINS - 1, max(0, bisect.bisect_right(BIN_EDGES, math.exp(logp)) - 1))


def group(parent_rank: int | None) -> int:
    """parent_rank: 0-based rank of the parent in its row; None for the root's children."""
    return 0 if parent_rank is None else min(parent_rank + 1, GROUPS - 1)


@dataclass
class HeadCalibration:
    """rates / trials / successes: [depths][GROUPS][BINS]."""

    depths: int
    rates: list[list[list[float]]]
    trials: list[list[list[int]]]
    successes: list[list[list[int]]]
    source: dict = field(default_factory=dict)  # how it was made: command, rows, head, target, weights' sha256

    # ---------------------------------------------------------------------------------- fitting
    @staticmethod
    def fit(walks: Iterable[tuple[Sequence[Sequence[float]], Sequence[Sequence[int]], Sequence[int]]], depths: int,
            source: dict | None = None) -> "HeadCalibration":
        """walks: (logp [D][K], tokens [D][K] of one draft, each row sorted descending; truth: the
        target's next tokens after the root, as many as are known). Walk the true path down the
        rows: every candidate of the row below an accepted path is one trial of its cell, a success
        where it is the true token; the walk ends where the true token is not in the row."""
        trials = [[[0] * BINS for _ in range(GROUPS)] for _ in range(depths)]
        successes = [[[0] * BINS for _ in range(GROUPS)] for _ in range(depths)]
        for logp, tokens, truth in walks:
            parent: int | None = None
            for d in range(min(depths, len(logp), len(truth))):
                g, row, true = group(parent), tokens[d], truth[d]
                for lp, t in zip(logp[d], row):
                    b = q_bin(lp)
                    trials[d][g][b] += 1
                    successes[d][g][b] += t == true
                if true not in row:
                    break
                parent = list(row).index(true)
        return HeadCalibration.from_counts(depths, trials, successes, source)

    @staticmethod
    def from_counts(depths: int, trials: list, successes: list, source: dict | None = None) -> "HeadCalibration":
        rates = []
        for d in range(depths):
            pooled = []  # per bin: the rate over all groups, or the bin's centre q (the head's own word) where that is thin too
            for b in range(BINS):
                t, s = sum(trials[d][g][b] for g in range(GROUPS)), sum(successes[d][g][b] for g in range(GROUPS))
                pooled.append((s + 1) / (t + 2) if t >= MIN_TRIALS else (BIN_EDGES[b] + BIN_EDGES[b + 1]) / 2)
            rows = []
            for g in range(GROUPS):
                t, s = trials[d][g], successes[d][g]
                raw = [(s[b] + 1) / (t[b] + 2) if t[b] >= MIN_TRIALS else pooled[b] for b in range(BINS)]
                weights = [max(t[b], 1) for b in range(BINS)]
                rows.append(_non_decreasing(raw, weights))
            rates.append(rows)
        return HeadCalibration(depths, rates, trials, successes, dict(source or {}))

    # ---------------------------------------------------------------------------------- drafting
    def marginals(self, tokens: torch.Tensor, logp: torch.Tensor) -> "CalibratedMarginals":
        """The head's draft (tokens, logp [D, K], rows sorted by q) as a proposal scored by the rates."""
        tok, lp = tokens.cpu().numpy(), logp.float().cpu().numpy()  # [D, K] each (a device's: one copy each)
        return self.drafts(tok[None], lp[None]).marginals(0)

    def drafts(self, tokens: np.ndarray, logp: np.ndarray) -> "CalibratedDrafts":
        """S drafts at once (a pooled step's: tokens [S, D, K] int64, logp [S, D, K] float32)."""
        return CalibratedDrafts(self, tokens, logp)

    @functools.cached_property
    def log_rates(self) -> np.ndarray:
        return np.log(np.array(self.rates, dtype=np.float64))  # [depths, GROUPS, BINS]

    @functools.cached_property
    def edges(self) -> np.ndarray:
        return np.array(BIN_EDGES, dtype=np.float32)

    # ---------------------------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        body = {"format": FORMAT, "depths": self.depths, "groups": GROUPS, "bin_edges": list(BIN_EDGES),
                "rates": self.rates, "trials": self.trials, "successes": self.successes, "source": self.source}  # fmt: skip
        return write_format_file(path, body)

    @staticmethod
    def load(path: str | Path) -> "HeadCalibration":
        """Read a calibration file; anything else is a one-line InputError naming the file."""
        path, how = Path(path), "make one with `jetspec calibrate-head`"
        body = read_format_file(path, "head calibration", FORMAT, how)
        try:
            depths = int(body["depths"])
            rates = [[[float(r) for r in row] for row in rows] for rows in body["rates"]]
            shape_ok = body["groups"] == GROUPS and tuple(body["bin_edges"]) == BIN_EDGES and depths >= 1 \
                and len(rates) == depths and all(len(rows) == GROUPS and all(len(row) == BINS for row in rows) for rows in rates)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"head calibration {path}: malformed ({type(e).__name__}: {e})") from e
        if not shape_ok:
            raise InputError(f"head calibration {path}: rates must be [depths][{GROUPS}][{BINS}] over this version's bins; {how}")
        if not all(0.0 < r < 1.0 for rows in rates for row in rows for r in row):
            raise InputError(f"head calibration {path}: every rate must lie in (0, 1)")
        return HeadCalibration(depths, rates, body.get("trials", []), body.get("successes", []), body.get("source", {}))


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, mtime, size) -> sha256: a batch's drafters hash once


def weights_digest(path: str | Path) -> str:
    """sha256 of a head's weights file: what a calibration was measured for."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _non_decreasing(values: list[float], weights: list[float]) -> list[float]:
    """The weighted least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for v, w in zip(values, weights):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [v for v, _, n in blocks for _ in range(n)]


class CalibratedDrafts:
    """The calibrated orders of S drafts (tokens, logp [S, D, K], rows sorted by q), computed for
    all of them in one pass of array ops — a pooled step's drafters share one (`pool.PooledDrafts`)
    instead of paying the ops' overhead each; `marginals(s)` is draft s's proposal.

        bins   [S, d, K]     bin of q over BIN_EDGES, d = min(D, the calibration's depths)
        scores [S, d, G, K]  log rate[depth][group][bin], each (s, depth, group) row sorted best first
                             (stable: ties keep the head's order), the tokens in that order beside it"""

    def __init__(self, calibration: HeadCalibration, tokens: np.ndarray, logp: np.ndarray):
        d = min(tokens.shape[1], calibration.depths)
        bins = (np.searchsorted(calibration.edges, np.exp(logp[:, :d]), side="right") - 1).clip(0, BINS - 1)  # [S, d, K]
        scores = calibration.log_rates[np.arange(d)[None, :, None, None], np.arange(GROUPS)[None, None, :, None],
                                       bins[:, :, None, :]]  # [S, d, G, K]
        order = np.argsort(-scores, axis=-1, kind="stable")  # best first; ties keep the head's order
        self.tokens = np.take_along_axis(np.broadcast_to(tokens[:, :d, None, :], scores.shape), order, -1)  # [S, d, G, K]
        self.scores = np.take_along_axis(scores, order, -1)  # [S, d, G, K]
        self.q_tokens, self.q_logp, self.depths = tokens, logp, d  # [S, D, K] each: the head's own order

    def marginals(self, s: int) -> "CalibratedMarginals":
        return CalibratedMarginals(self, s)


class CalibratedMarginals(WellFormed):
    """A parallel head's draft scored by a `HeadCalibration`: the children of a path of length d
    are the head's depth-(d + 1) candidates, scored log rate[d][g][bin(q)] with g from the rank of
    the path's last token in its own row, sorted descending. Depths the calibration has no rows for
    keep the raw log q (never the case for the head it was measured on). Scores and orders of every
    (depth, group) are computed at once (`CalibratedDrafts`); a row becomes Python pairs when first read."""

    def __init__(self, drafts: CalibratedDrafts, s: int):
        d = drafts.depths
        self._tokens = drafts.tokens[s].tolist()  # [d][G][K]
        self._scores = drafts.scores[s].tolist()  # [d][G][K]
        self._raw = list(zip(drafts.q_tokens[s, d:].tolist(), drafts.q_logp[s, d:].tolist()))  # depths past the calibration: log q
        self._q_order = drafts.q_tokens[s].tolist()  # [D][K] the head's own order (ranks)
        self._rows: dict[tuple[int, int], tuple[tuple[int, float], ...]] = {}
        self._rank: dict[int, dict[int, int]] = {}

    @property
    def depth(self) -> int:
        return len(self._q_order)

    def children(self, path: tuple[int, ...]) -> Sequence[tuple[int, float]]:
        d = len(path)
        if d >= len(self._q_order):
            return ()
        if d >= len(self._scores):
            row_tokens, row_logp = self._raw[d - len(self._scores)]
            return tuple(zip(row_tokens, row_logp))
        if d == 0:
            g = 0
        else:
            ranks = self._rank.get(d - 1)
            if ranks is None:
                ranks = self._rank[d - 1] = {t: r for r, t in enumerate(self._q_order[d - 1])}
            g = group(ranks.get(path[-1], GROUPS))  # a path the head did not draft: the lowest group
        row = self._rows.get((d, g))
        if row is None:
            row = self._rows[(d, g)] = tuple(zip(self._tokens[d][g], self._scores[d][g]))
        return row
