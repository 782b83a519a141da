"""Decoding with the heap that existed before it set aside from Python's cyclic garbage collector.

A torch process tracks 10^5-10^6 container objects (modules, imported code, tokenizers). A full
collection traverses every one of them (~0.3 s on the dev CPU with transformers imported), and the
collector starts one whenever the objects that survived its younger collections exceed a quarter
of the long-lived ones, which a decode loop's many small objects bring about every few seconds:
a stall of the host and, behind it, of the GPU. Nothing of that older heap becomes garbage while
the loop runs, so `frozen_heap()` moves it to the collector's permanent generation (`gc.freeze()`:
never traversed) when the outermost decode starts, and back (`gc.unfreeze()`) when it ends.

The loop's own objects are collected as usual, cyclic garbage included. A process that froze its
heap itself (the frozen count is not 0 when a decode starts) is left as it is.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0  # decodes running (nested or in threads) that share this freeze
_ours = False  # whether the outermost one froze the heap (and so unfreezes it)


@contextmanager
def frozen_heap() -> Iterator[None]:
    global _depth, _ours
    with _lock:
        if _depth == 0:
            _ours = gc.get_freeze_count() == 0
            if _ours:
                gc.freeze()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _ours:
                gc.unfreeze()
