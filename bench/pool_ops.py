"""Host dispatches of a pooled draft-ahead job outside its CUDA graph (issue 20), on the CPU.

    python -m bench.pool_ops [--peers 3,16] [--label after] [--out bench/results/pool_ops.jsonl]

`ContextPool.draft_ahead` (drafters/head/pool.py) runs once per batched step: it places the step's
accepted paths into the pool's static inputs, replays the job's graph and queues the drafts' copy
to the host. On a GPU every aten op it dispatches outside `_job` (the graph's body) costs the host
a dispatch, and those on device tensors a kernel launch or copy; the GPU split (`--split`) put the
whole call near 1 ms. Here a tiny random head (tests/head_fixtures.py) drafts for `--peers`
sequences and a `TorchDispatchMode` counts the ops `draft_ahead` dispatches, `_job` excluded; one
row per peer count: ops in total and by name. A count, not a time: no GPU figure.
"""

from __future__ import annotations

import argparse
import collections
import shlex
import sys
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

from jetspec.bench.rows import append_row, run_row

ROOT = Path(__file__).resolve().parents[1]


class Dispatches(TorchDispatchMode):
    """Counts the aten ops dispatched while `on`."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.on = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count(peers: int) -> collections.Counter[str]:
    """The ops of one pooled job of `peers` head drafters (the pool made by an earlier job)."""
    if str(ROOT / "tests") not in sys.path:  # the head tests' tiny target and drafters
        sys.path.insert(0, str(ROOT / "tests"))
    from test_context_pool import HeadTarget, drafters, observed, round_result, tiny_llama

    from jetspec.drafters.head.pool import ContextPool

    target = HeadTarget(tiny_llama())
    pooled = drafters(target, peers)
    for i, d in enumerate(pooled):
        observed(d, target, [5 + i, 17, 33, 8, 61, 12, 40, 9][: 3 + i % 6])
    def results(seed: int) -> list:  # every peer's tree rows and acceptance, made outside the count
        return [round_result(seed + i, n=7 + i % 3, d=2 + i % 3, k=1 + i % 3) for i in range(peers)]

    def step(made: list) -> None:  # one job over every peer
        assert pooled[0].draft_ahead_together(pooled, [h for h, _ in made], [p for _, p in made], budget=16)

    step(results(0))  # makes the pool
    counted = results(100)
    mode, job = Dispatches(), ContextPool._job

    def unseen_job(self, *args):
        mode.on = False
        try:
            return job(self, *args)
        finally:
            mode.on = True

    ContextPool._job = unseen_job
    try:
        with mode:
            step(counted)
    finally:
        ContextPool._job = job
    return mode.ops


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default="3,16")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    stamp = run_row("python -m bench.pool_ops " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)), {})
    for peers in [int(p) for p in args.peers.split(",")]:
        ops = count(peers)
        row = {"kind": "pool_ops", "label": args.label, "peers": peers, "ops": sum(ops.values()), "by_op": dict(ops.most_common()),
               "dtype": "float32", **{k: stamp[k] for k in ("date", "machine", "command", "python", "torch")}}
        print(f"{peers:3d} peers: {row['ops']} ops outside the job  " + " ".join(f"{k.split('.')[-1]} {v}" for k, v in ops.most_common()))
        if args.out:
            append_row(args.out, row)


if __name__ == "__main__":
    main()
