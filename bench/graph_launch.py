"""What the host pays, piece by piece, to start one verification forward on the GPU (issue 18: host <= 100 µs a round).

    python -m bench.graph_launch [--model smollm2] [--context 512] [--nodes 1 16 20 32 48] [--reps 200] \
        [--out bench/results/graph_launch.jsonl]

The 2026-12-04 host profile put a tree round's `verify` phase (begin + upload + the graphed forward's
call) at 0.55-0.68 ms of host time and its graph launch at ~6x a plain step's, unexplained. This script
times each host step alone, on the real decoder with random weights of the model's shape (exact, CUDA
graphs, paged KV, Triton attention; `round_cost.random_target`), at `--context` committed tokens, for
trees of each `--nodes` (best-first shaped, `kernel_bench.best_first_tree`):

    begin          cache.begin(pending_for(N))                      (host bookkeeping, slot-table sync; the
                                                                     graph's bucket, as the pipeline reserves)
    upload         TreeUpload.many([tree])                          (the round's one tree copy)
    forward        target.forward(tokens, meta, cache)              (static-input copies, padding, replay)
    replay         the bucket's graph.replay() alone
    replay_other   the same replay when another bucket's graph was the last one replayed
    replay_busy    the same replay queued behind the previous replay (the GPU still working)

Each is the median host wall time (perf_counter around the call only, the GPU idle before it unless
`busy`) of --reps calls; kernels are not timed. One JSON row per (N, step) with its µs. With no GPU the
script says so and exits 0 (nothing to measure).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from typing import Callable

import torch
from pathlib import Path

from bench.kernel_bench import best_first_tree
from bench.kernel_breakdown import MODELS
from bench.round_cost import fill, new_cache, random_target
from jetspec.bench.rows import append_row, run_row
from jetspec.core.interfaces import AttentionMeta
from jetspec.core.on_device import TreeUpload


def pending_for(target, n: int, cache) -> int:
    """What the pipeline reserves for a forward of n tokens (`PadsForward`); N on a jetspec/ from before
    `pending_for` (h200.sh host-ab's "before" side), whose pipeline reserved N."""
    return target.pending_for(n, cache) if hasattr(target, "pending_for") else n


def host_us(fn: Callable[[], object], reps: int, before: Callable[[], object] = torch.cuda.synchronize) -> float:
    """Median µs of host wall time of fn(), `before()` run (untimed) ahead of each call."""
    times = []
    for _ in range(reps):
        before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return 1e6 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 16, 20, 32, 48])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("graph_launch: no CUDA device here; it measures CUDA launches only")
        return 0
    stamp = run_row("python -m bench.graph_launch " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)), {})
    dev = torch.device("cuda")
    target = random_target(MODELS[args.model], dev, torch.bfloat16, "triton", autotune=False, graphs=True, exact=True)
    cache = new_cache(target, "paged", args.context + max(args.nodes) + target.extra_pending, seed=0)
    fill(cache, target.info, args.context, seed=0)
    upload = TreeUpload(dev)
    work: dict[int, tuple] = {}
    for n in args.nodes:  # every bucket captured (the first forward on the cache) and replayed once
        tree = best_first_tree(n, seed=n)
        meta = AttentionMeta.for_tree(tree, args.context, dev)
        tokens = torch.randint(0, target.info.vocab_size, (n,), device=dev)
        cache.begin(n)
        target.forward(tokens, meta, cache)
        work[n] = (tree, meta, tokens)
    torch.cuda.synchronize()
    graphs = target.graphs.graphs._graphs  # (cache id, hidden layers, bucket) -> (graph, outputs)
    buckets = target.graphs.buckets
    print(f"{args.model}, context {args.context}, {len(graphs)} bucket graphs; host µs, median of {args.reps}")
    print(f"{'N':>4} {'bucket':>6} " + " ".join(f"{s:>12}" for s in ("begin", "upload", "forward", "replay", "replay_other", "replay_busy")))
    for n, (tree, meta, tokens) in work.items():
        b = min(x for x in buckets if x >= n)
        graph = graphs[(id(cache), (), b)][0]
        other = graphs[(id(cache), (), 1 if b != 1 else 2)][0]
        row = {
            "begin": host_us(lambda: cache.begin(pending_for(target, n, cache)), args.reps),
            "upload": host_us(lambda: upload.many([tree], [args.context]), args.reps),
            "forward": host_us(lambda: target.forward(tokens, meta, cache), args.reps,
                               before=lambda: (torch.cuda.synchronize(), cache.begin(pending_for(target, n, cache)))),
            "replay": host_us(graph.replay, args.reps),
            "replay_other": host_us(graph.replay, args.reps, before=lambda: (other.replay(), torch.cuda.synchronize())),
            "replay_busy": host_us(graph.replay, args.reps, before=lambda: None),
        }
        print(f"{n:>4} {b:>6} " + " ".join(f"{row[s]:12.1f}" for s in row))
        if args.out:
            for step, us in row.items():
                append_row(args.out, {"kind": "graph_launch", "model": args.model, "dtype": "bfloat16", "exact": True,
                                      "context": args.context, "nodes": n,
                                      "bucket": b, "step": step, "host_us": us, **{k: stamp[k] for k in ("date", "machine", "command", "torch")}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
