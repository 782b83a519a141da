"""Host cost of the paged KV cache's bookkeeping in a batched step, on the CPU: B sequences of one
pool each `begin` a tree's pending rows, then each `commit`s its accepted path, as the batched
engine's step does (no model, no writes: the page allocation, the slot-map and page-table
uploads, the commit's gather bookkeeping).

    python -m bench.paged_host [--batch-size 8] [--pending 17] [--keep 4] [--steps 400] [--label L] \
        [--out bench/results/paged_host.jsonl]

µs per sequence-step = the least of 5 timings of --steps steps / (steps x B), and the uploads
(int32 host tensors made for the device tables) per sequence-step. A CPU figure: on a GPU each
upload is also a pinned buffer and a host-to-device copy on the stream.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from unittest.mock import patch

import torch

from jetspec.bench.rows import append_row, run_row
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.interfaces import TargetInfo


def caches(batch: int, capacity: int) -> list[PagedKVCache]:
    info = TargetInfo(name="t", architecture="llama", vocab_size=10, hidden_size=16, num_layers=2, num_kv_heads=2,
                      head_dim=4, max_positions=capacity, dtype=torch.float32, device=torch.device("cpu"))
    return PagedKVCache(info, capacity, PagedCacheOptions()).sequences(batch)


def steps(cs: list[PagedKVCache], n: int, pending: int, keep: int) -> None:
    for _ in range(n):
        for c in cs:
            c.begin(pending)
        for c in cs:
            c.commit(list(range(keep)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--pending", type=int, default=17, help="rows a sequence's tree adds a step (budget 16: 17)")
    ap.add_argument("--keep", type=int, default=4, help="tokens a sequence keeps a step (its τ)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    capacity = args.steps * args.keep + args.pending + 16
    best = float("inf")
    for _ in range(5):
        cs = caches(args.batch_size, capacity)
        t0 = time.perf_counter()
        steps(cs, args.steps, args.pending, args.keep)
        best = min(best, time.perf_counter() - t0)
    made: list[torch.dtype | None] = []
    real = torch.tensor
    cs = caches(args.batch_size, capacity)
    with patch.object(torch, "tensor", side_effect=lambda *a, **k: made.append(k.get("dtype")) or real(*a, **k)):
        steps(cs, args.steps, args.pending, args.keep)
    seq_steps = args.steps * args.batch_size
    stamp = run_row("python -m bench.paged_host " + shlex.join(sys.argv[1:] if argv is None else argv), {})
    row = {"kind": "paged_host", "label": args.label, "batch_size": args.batch_size, "pending": args.pending,
           "keep": args.keep, "steps": args.steps, "dtype": "float32", "us_per_sequence_step": 1e6 * best / seq_steps,
           "uploads_per_sequence_step": sum(d == torch.int32 for d in made) / seq_steps,
           **{k: stamp[k] for k in ("date", "machine", "command", "python", "torch")}}
    print(f"B={args.batch_size} pending {args.pending} keep {args.keep}: {row['us_per_sequence_step']:.1f} us and "
          f"{row['uploads_per_sequence_step']:.2f} uploads per sequence-step", flush=True)
    if args.out:
        append_row(args.out, row)


if __name__ == "__main__":
    main()
