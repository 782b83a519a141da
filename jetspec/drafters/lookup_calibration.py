"""What a prompt-lookup edge is worth: acceptance rates measured on the target's own text.

The `ngram` drafter's raw edge score is the empirical conditional over the matched occurrences,
log(count(path + t) / count(path)): a continuation seen once scores log 1 = 0 at every depth, as if
certain, whether it followed a 1-token or a 4-token match. In one tree with a head's log-probs (the
`jetspec` default) such chains take the budget first, and are mostly rejected early. A calibration
scores each edge by what edges like it turned out to be instead:

    logp(edge) = log rate[n][d][f]
    rate[n][d][f] = P(t is the target's next token | the path to t was, n, d, f)
      n = length of the matched suffix n-gram (n_min .. n_max)
      d = the edge's depth below the root (1 .. DEPTHS; deeper edges share the last)
      f = count fraction bucket of count(path + t) / count(path): 2 = all occurrences agree (= 1),
          1 = [1/2, 1), 0 = below 1/2

`lookup_fit.py` measures it (`jetspec fit-lookup`). Every rate is in (0, 1), so every edge scores
below 0 and the best-first scorer's tree stays prefix-closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.errors import InputError
from ..core.format_file import read_format_file, write_format_file

FORMAT = "jetspec-lookup-calibration/1"
DEPTHS = 8  # depth buckets: 1 .. DEPTHS - 1, and DEPTHS for every deeper edge
BUCKETS = 3  # count fraction buckets (see `fraction_bucket`)
MIN_TRIALS = 20  # a cell with fewer trials takes the rate of the depth above it


def fraction_bucket(count: int, whole: int) -> int:
    """2: every occurrence continues this way; 1: at least half do; 0: fewer."""
    return 2 if count == whole else 1 if 2 * count >= whole else 0


@dataclass
class LookupCalibration:
    """rates / trials / successes: [n_max][DEPTHS][BUCKETS], row n - 1 for match length n."""

    n_min: int
    n_max: int
    rates: list[list[list[float]]]
    trials: list[list[list[int]]]
    successes: list[list[list[int]]]
    source: dict = field(default_factory=dict)  # how it was made: command, corpus, rows, target
    origin: str = "(in memory)"  # the file it was read from, for messages
    _logs: dict[int, list[list[float]]] = field(default_factory=dict, init=False, repr=False, compare=False)  # n -> `edge_logs(n)`

    @staticmethod
    def from_counts(n_min: int, n_max: int, trials: list, successes: list, source: dict | None = None) -> "LookupCalibration":
        """Rates from counts: (successes + 1) / (trials + 2), a thin cell (< MIN_TRIALS) taking
        the rate of the depth above it (depth 1 keeps its own)."""
        rates = [[[0.0] * BUCKETS for _ in range(DEPTHS)] for _ in range(n_max)]
        for n in range(n_max):
            for d in range(DEPTHS):
                for f in range(BUCKETS):
                    t, s = trials[n][d][f], successes[n][d][f]
                    rates[n][d][f] = rates[n][d - 1][f] if d and t < MIN_TRIALS else (s + 1) / (t + 2)
        return LookupCalibration(n_min, n_max, rates, trials, successes, dict(source or {}))

    def edge_logs(self, n: int) -> list[list[float]]:
        """log rate[n][d][f] for a match of length n: [DEPTHS][BUCKETS], row d - 1 for depth d (made
        once per n; the caller reads it, never writes it)."""
        logs = self._logs.get(n)
        if logs is None:
            logs = self._logs[n] = [[math.log(r) for r in row] for row in self.rates[min(n, self.n_max) - 1]]
        return logs

    def edge_logp(self, n: int) -> Callable[[int, int, int], float]:
        """`TokenTrie.from_counts`'s edge score for a match of length n: (depth, count, whole) -> log rate."""
        logs = self.edge_logs(n)
        return lambda depth, count, whole: logs[min(depth, DEPTHS) - 1][fraction_bucket(count, whole)]

    def save(self, path: str | Path) -> Path:
        body = {"format": FORMAT, "n_min": self.n_min, "n_max": self.n_max, "depths": DEPTHS, "buckets": BUCKETS,
                "rates": self.rates, "trials": self.trials, "successes": self.successes, "source": self.source}  # fmt: skip
        return write_format_file(path, body, indent=1)

    @staticmethod
    def load(path: str | Path) -> "LookupCalibration":
        """Read a calibration file; anything else is a one-line InputError naming the file."""
        path = Path(path)
        body = read_format_file(path, "lookup calibration", FORMAT, "make one with `jetspec fit-lookup`")
        try:
            n_min, n_max = int(body["n_min"]), int(body["n_max"])
            rates = [[[float(r) for r in cell] for cell in row] for row in body["rates"]]
            shape_ok = (body["depths"], body["buckets"]) == (DEPTHS, BUCKETS) and len(rates) == n_max \
                and all(len(row) == DEPTHS and all(len(cell) == BUCKETS for cell in row) for row in rates)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"lookup calibration {path}: malformed ({type(e).__name__}: {e})") from e
        if not (1 <= n_min <= n_max and shape_ok):
            raise InputError(f"lookup calibration {path}: rates must be [n_max][{DEPTHS}][{BUCKETS}] with 1 <= n_min <= n_max")
        if not all(0.0 < r < 1.0 for row in rates for cell in row for r in cell):
            raise InputError(f"lookup calibration {path}: every rate must lie in (0, 1)")
        return LookupCalibration(n_min, n_max, rates, body.get("trials", []), body.get("successes", []),
                                 body.get("source", {}), origin=str(path))
