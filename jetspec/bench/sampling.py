"""A statistical profiler of the host: where a run's wall time goes, without cProfile's cost per call.

cProfile charges every call it sees (Python functions and builtins alike), so code made of many
small calls — a prompt lookup's dict probes, a tree's list appends — looks several times its real
share. `Sampler` instead looks at the profiled thread's stack every `interval` seconds from a side
thread:

    own[f]        samples whose innermost Python frame is f (time in a C function is its caller's)
    inclusive[f]  samples with f anywhere on the stack (counted once per sample)
    share         samples / all samples ~ the fraction of the wall spent there

The side thread needs the GIL to look, so while sampling Python's switch interval is cut to a
tenth of `interval` (restored after): the profiled thread hands the GIL over at the next bytecode
boundary, and a sample lands where that thread was, or where it is blocked (a device wait that
releases the GIL is counted where it was called).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_filename}:{code.co_firstlineno}({code.co_name})"


class Sampler:
    """`with Sampler() as s: run()`, then `s.report(path)`; samples the thread that entered it."""

    def __init__(self, interval: float = 0.001):
        if not interval > 0:
            raise ValueError(f"Sampler interval must be > 0 seconds, got {interval}")
        self.interval = interval
        self.own: Counter[str] = Counter()
        self.inclusive: Counter[str] = Counter()
        self.samples = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._target = threading.get_ident()
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(self.interval / 10)
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="jetspec-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.seconds = time.perf_counter() - self._t0
        sys.setswitchinterval(self._switch)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self._target)
            if frame is None:
                continue
            self.samples += 1
            self.own[_where(frame)] += 1
            seen = set()
            while frame is not None:
                seen.add(_where(frame))
                frame = frame.f_back
            self.inclusive.update(seen)

    def table(self, top: int = 40) -> str:
        """The `top` functions by own samples, then by inclusive samples, with shares of all samples."""
        n = max(self.samples, 1)
        lines = [f"{self.samples} samples every {1e3 * self.interval:g} ms over {self.seconds:.2f} s of wall"]
        for title, counts in (("own", self.own), ("inclusive", self.inclusive)):
            lines += ["", f"by {title} samples:", f"{'share':>7} {'samples':>8}  function"]
            lines += [f"{c / n:7.1%} {c:8d}  {f}" for f, c in counts.most_common(top)]
        return "\n".join(lines) + "\n"

    def report(self, path: Path, top: int = 40) -> Path:
        path.write_text(self.table(top))
        return path
