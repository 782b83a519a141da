"""A run's wall time with the device synchronised at both ends (`timed`), and the same under
torch.profiler against the time the GPU ran anything (`traced`: `python -m bench.batched_throughput --trace DIR`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, run: Callable[[], Any]) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = run()
    sync(device)
    return out, time.perf_counter() - t0


def traced(device: str, run: Callable[[], Any], folder: Path, name: str, stamp: dict[str, Any]) -> tuple[Any, float]:
    """`timed(run)` under torch.profiler; writes folder/<name>.trace.txt (kernels by GPU time: name,
    launches, total ms) and appends to folder/trace.jsonl {variant, wall_s, gpu_busy_s (the union of
    the device events' intervals: time the GPU ran anything), gpu_sum_s (their durations summed),
    kernels (device events)} and the run's stamp (date, machine, command, dtype)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        out, seconds = timed(device, run)
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
    busy, reach = 0.0, float("-inf")  # union of [start, end) intervals, in µs
    for a, b in spans:
        if b > reach:
            busy += b - max(a, reach)
            reach = b
    by_name: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            c = by_name.setdefault(e.name, [0, 0.0])
            c[0] += 1
            c[1] += e.time_range.end - e.time_range.start
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.trace.txt", "w") as f:
        f.write(f"{name}: wall {seconds:.3f} s, GPU busy {busy / 1e6:.3f} s, {len(spans)} device events\n")
        for kname, (n, us) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:40]:
            f.write(f"{us / 1e3:10.2f} ms {n:8d}x  {kname[:150]}\n")
    with open(folder / "trace.jsonl", "a") as f:
        f.write(json.dumps({"variant": name, "wall_s": round(seconds, 4), "gpu_busy_s": round(busy / 1e6, 4),
                            "gpu_sum_s": round(sum(b - a for a, b in spans) / 1e6, 4), "kernels": len(spans)} | stamp) + "\n")
    return out, seconds
