"""Goodness of fit of observed outcomes to an exact law (Pearson's chi-square), with no SciPy.

Every statistical test in this suite rejects at p < ALPHA. With fixed seeds a run is
deterministic; over independent base seeds (JETSPEC_STAT_SEED) each correct-sampler check fails
with probability ALPHA, so a suite of m such checks fails falsely with probability <= m * ALPHA.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Iterable

import torch

ALPHA = 1e-4
BASE_SEED = int(os.environ.get("JETSPEC_STAT_SEED", "0"))  # vary to re-draw every statistical test


@dataclass(frozen=True)
class Fit:
    stat: float
    df: int
    p_value: float
    n: int
    tv: float  # total-variation distance between empirical and exact laws

    def __str__(self) -> str:
        return f"chi2 {self.stat:.1f} on {self.df} df, p = {self.p_value:.2e}, n = {self.n}, TV = {self.tv:.3f}"


def chi2_sf(stat: float, df: int) -> float:
    """P(chi2_df >= stat) = Q(df/2, stat/2), the regularized upper incomplete gamma."""
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)))


def fit(samples: Iterable[Hashable], law: dict[Hashable, float], min_expected: float = 5.0) -> Fit:
    """Pearson chi-square of `samples` against `law` (outcome -> probability, summing to 1).
    Outcomes expected fewer than `min_expected` times are pooled into one cell (so the chi-square
    approximation holds); an outcome of probability 0 that occurs gives p = 0."""
    counts = Counter(samples)
    n = sum(counts.values())
    if any(law.get(s, 0.0) == 0.0 for s in counts):
        return Fit(float("inf"), 0, 0.0, n, 1.0)
    tv = 0.5 * sum(abs(counts.get(s, 0) / n - p) for s, p in law.items())
    # pool every outcome expected < min_expected times (and, smallest first, more until the pool
    # reaches min_expected); every other outcome is its own cell
    cells, pool_obs, pool_exp = [], 0, 0.0
    for s, p in sorted(law.items(), key=lambda kv: kv[1]):
        if n * p < min_expected or pool_exp < min_expected:
            pool_obs, pool_exp = pool_obs + counts.get(s, 0), pool_exp + n * p
        else:
            cells.append((counts.get(s, 0), n * p))
    if pool_exp > 0:
        cells.append((pool_obs, pool_exp))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    df = len(cells) - 1
    return Fit(stat, df, chi2_sf(stat, df) if df > 0 else 1.0, n, tv)
