"""How the bench times one generation: wall seconds between device synchronisations, and the
peak CUDA memory of the call."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, int | None]:
    """(result, wall seconds, peak CUDA bytes or None), synchronised around the call."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    return result, wall, (torch.cuda.max_memory_allocated(device) if cuda else None)
