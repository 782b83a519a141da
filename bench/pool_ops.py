"""Host dispatches of a pooled draft-ahead job outside its CUDA graph (issue 20), on the CPU.

    python -m bench.pool_ops [--peers 3,16] [--label after] [--out bench/results/pool_ops.jsonl]
    TRITON_INTERPRET=1 python -m bench.pool_ops --kernel [...]

`ContextPool.draft_ahead` (drafters/head/pool.py) runs once per batched step: it places the step's
accepted paths into the pool's static inputs, replays the job's graph and queues the drafts' copy
to the host. On a GPU every aten op it dispatches outside `_job` (the graph's body) costs the host
a dispatch, and those on device tensors a kernel launch or copy; the GPU split (`--split`) put the
whole call near 1 ms. Here a random head over `bench.head_ops`' SmolLM2-shaped stub target drafts for `--peers`
sequences and `bench.head_ops.Ops` counts the ops `draft_ahead` dispatches, `_job`'s taken out; one
row per peer count: ops in total and by name. A count, not a time: no GPU figure. `--kernel`: the path CUDA
runs (`on_device.fused`), in the interpreter: the job's inputs copied into static buffers and filled by one
Triton kernel (`pool_fill.py`) that is the first kernel of the job's graph (`ContextPool._filled_job`, taken
out as `_job` is on the torch path); a launch outside a graph body would count as one op (`triton_launch`),
the interpreter's own tensor handling inside it as none.
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest.mock import patch

import torch

from bench.head_ops import Ops, StubTarget
from jetspec.bench.rows import append_row, run_row
from jetspec.core.interfaces import DecodeState
from jetspec.drafters.head import HeadOptions, jetspec_drafter
from jetspec.drafters.head.pool import ContextPool

HIDDEN = 576  # `StubTarget`'s (SmolLM2-135M's) width


def count(peers: int, kernel: bool = False) -> collections.Counter[str]:
    """The ops of one pooled job of `peers` random head drafters over `bench.head_ops.StubTarget` (the pool
    made by an earlier job), `_job`'s own taken out: each drafter has seen a short prompt, then each job
    gets a tree of N_i rows and an acceptance of k_i of its D_i + 1 path slots (random, fixed)."""
    g = torch.Generator().manual_seed(0)
    target = StubTarget(torch.float32)
    pooled = [jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=4, lookup=False), target) for _ in range(peers)]
    k = len(pooled[0].hidden_layers)
    for i, d in enumerate(pooled):
        state = DecodeState(tokens=torch.randint(8, 1000, (4 + i % 5,), generator=g).tolist(), prompt_len=4 + i % 5)
        d.reset(state)
        d.observe(state, torch.randn(len(state.tokens) - 1, k, HIDDEN, generator=g))  # [n, k, H]

    def results() -> list:  # per peer: its tree's hidden rows [N, k, H], its acceptance [2 D + 3]; made outside the count
        made = []
        for i in range(peers):
            n, depth, accepted = 7 + i % 3, 2 + i % 3, 1 + i % 3
            path = [0] + sorted(torch.randperm(n - 1, generator=g)[:depth].add(1).tolist())  # [D + 1] node indices
            tokens = torch.randint(8, 1000, (depth + 1,), generator=g).tolist()
            made.append((torch.randn(n, k, HIDDEN, generator=g), torch.tensor([accepted] + path + tokens)))
        return made

    def step(made: list) -> None:  # one job over every peer
        assert pooled[0].draft_ahead_together(pooled, [h for h, _ in made], [p for _, p in made], budget=16)

    step(results())  # makes the pool
    counted = results()
    whole, inside = Ops(), Ops()
    inside.active = False  # within the body now
    body = "_filled_job" if kernel else "_job"  # what a CUDA graph replays: on CUDA the fill is in it
    job = getattr(ContextPool, body)

    def counted_job(self, *args):  # its ops reach both counters (modes stack): taken out below
        inside.active = True
        try:
            with inside:
                return job(self, *args)
        finally:
            inside.active = False

    setattr(ContextPool, body, counted_job)
    try:
        with whole, ExitStack() as stack:
            if kernel:
                stack.enter_context(kernel_path(whole, inside))
            step(counted)
    finally:
        setattr(ContextPool, body, job)
    return whole.count - inside.count


@contextmanager
def kernel_path(whole: Ops, inside: Ops):
    """The job's inputs through `pool_fill`'s Triton launch, as on CUDA (`fused` true), in the interpreter: each
    launch counts as one op ("triton_launch"; inside the job's graph body, taken out with it), the
    interpreter's own tensor handling inside it as none."""
    from triton.runtime.interpreter import GridExecutor

    from jetspec.drafters.head import pool

    run = GridExecutor.__call__

    def launch(executor, *args, **kwargs):
        whole.count["triton_launch"] += 1
        if inside.active:  # launched inside the job's graph body: no host launch on CUDA (its ops taken out with the body's)
            inside.count["triton_launch"] += 1
            return run(executor, *args, **kwargs)
        with inside:  # the interpreter's own tensor handling: taken out
            return run(executor, *args, **kwargs)

    with patch.object(pool, "fused", lambda x: True), patch.object(GridExecutor, "__call__", launch):
        yield


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default="3,16")
    ap.add_argument("--label", default="")
    ap.add_argument("--kernel", action="store_true", help="the CUDA path: the inputs in one Triton launch (needs TRITON_INTERPRET=1)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.kernel and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("--kernel runs the Triton kernel on the CPU: set TRITON_INTERPRET=1")
    stamp = run_row("python -m bench.pool_ops " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)), {})
    for peers in [int(p) for p in args.peers.split(",")]:
        ops = count(peers, args.kernel)
        row = {"kind": "pool_ops", "label": args.label, "peers": peers, "kernel": args.kernel, "ops": sum(ops.values()),
               "by_op": dict(ops.most_common()),
               "dtype": "float32", **{k: stamp[k] for k in ("date", "machine", "command", "python", "torch")}}
        print(f"{peers:3d} peers: {row['ops']} ops outside the job  " + " ".join(f"{k} {v}" for k, v in ops.most_common()))
        if args.out:
            append_row(args.out, row)


if __name__ == "__main__":
    main()
