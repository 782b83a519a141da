"""What one launch of the pooled job's input fill costs the host (issue 20), on a GPU.

    python -m bench.launch_cost [--peers 8,16,32] [--slots 32] [--calls 2000] [--out bench/results/launch_cost.jsonl]

A batched `--split` run put `pool_fill.fill` (then ONE host Triton launch a step; since 94910f8 inside the pooled job's graph) at ~0.7 ms a call at 32 sequences
with overlap. Here the same launch, on inputs of the shapes a step gives it (random paths, SmolLM2's hidden
width), `--calls` times back to back: µs of host time a call (the clock read before the final synchronize)
and per call with the device drained, beside a one-element torch add (a plain aten launch) for scale.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from jetspec.bench.rows import append_row, run_row
from jetspec.drafters.head.graphs import APPEND_ROWS
from jetspec.drafters.head.pool_fill import fill, fill_ints

HIDDEN = 576  # SmolLM2-135M's width; one fused target layer (k = 1)


def inputs(peers: int, slots: int, depth: int, nodes: int, device: str) -> tuple:
    """One step's fill arguments: `peers` results [2 D + 3] end to end, their trees' hidden rows, the pool's statics."""
    rng = np.random.default_rng(peers)
    d1 = np.full(peers, depth + 1)
    poff = np.arange(peers) * (2 * depth + 3)
    flat = torch.from_numpy(rng.integers(0, nodes, size=peers * (2 * depth + 3))).to(device)
    rows = torch.randn(peers * nodes, 1, HIDDEN, dtype=torch.bfloat16, device=device)  # [sum N_i, k, H]
    peer_of = np.full(slots, -1)
    peer_of[:peers] = np.arange(peers)
    ints = torch.from_numpy(fill_ints(peer_of, np.arange(slots) * 7, poff, d1, np.full(peers, nodes))).to(device)
    hidden = torch.zeros(slots, APPEND_ROWS, 1, HIDDEN, dtype=torch.bfloat16, device=device)
    start, root, anchor = (torch.zeros(slots, dtype=torch.int64, device=device) for _ in range(3))
    return ints, flat, rows, hidden, start, root, anchor, peers


def per_call(fn, calls: int) -> tuple[float, float]:
    """(µs of host time a call, µs a call until the device drained)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - t0
    torch.cuda.synchronize()
    return 1e6 * host / calls, 1e6 * (time.perf_counter() - t0) / calls


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default="8,16,32")
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--out", default="bench/results/launch_cost.jsonl")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("launch_cost: needs a CUDA GPU (it times launches)")
    stamp = run_row("python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]), {})
    stamp = {k: stamp[k] for k in ("date", "machine", "command", "torch")}
    x = torch.zeros(1, device="cuda")
    for peers in (int(p) for p in args.peers.split(",")):
        a = inputs(peers, max(args.slots, peers), 7, 17, "cuda")
        fill(*a)  # compile
        add = per_call(lambda: x.add_(1), args.calls)
        launch = per_call(lambda: fill(*a), args.calls)
        row = {"kind": "launch_cost", "peers": peers, "slots": max(args.slots, peers), "calls": args.calls,
               "fill_host_us": launch[0], "fill_drained_us": launch[1], "add_host_us": add[0], "add_drained_us": add[1],
               "dtype": "bfloat16"} | stamp  # the hidden rows the fill copies
        append_row(Path(args.out), row)
        print(f"peers {peers:3d}: fill {launch[0]:7.1f} µs host, {launch[1]:7.1f} drained; torch add {add[0]:6.1f} / {add[1]:6.1f}", flush=True)


if __name__ == "__main__":
    main()
