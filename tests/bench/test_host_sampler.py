"""`jetspec.bench.sampling.Sampler`: a statistical host profiler — samples land where the profiled
thread spends its time, in proportion to it."""

import sys
import time

import pytest

from jetspec.bench.sampling import Sampler


def _hot() -> None:
    _spin_here(0.4)


def _cold() -> None:
    _spin_here(0.1)


def _spin_here(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _both() -> None:
    _hot()
    _cold()


def _share(counts, name: str, n: int) -> float:
    return sum(c for f, c in counts.items() if f.endswith(f"({name})")) / n


def test_samples_fall_where_the_time_goes_own_and_inclusive(tmp_path):
    switch = sys.getswitchinterval()
    with Sampler(interval=0.002) as s:
        _both()
    assert sys.getswitchinterval() == switch  # restored
    assert s.samples >= 100
    own = _share(s.own, "_spin_here", s.samples)
    hot, cold = _share(s.inclusive, "_hot", s.samples), _share(s.inclusive, "_cold", s.samples)
    assert own > 0.9  # the spinning frame is innermost
    assert _share(s.inclusive, "_both", s.samples) > 0.95
    assert 0.65 < hot < 0.9 and 0.1 < cold < 0.35  # 0.4 s against 0.1 s
    text = s.report(tmp_path / "x.sample.txt").read_text()
    assert "by own samples:" in text and "by inclusive samples:" in text and "(_hot)" in text


def test_an_interval_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="interval must be > 0"):
        Sampler(interval=0)
