"""Host dispatches of a pooled draft-ahead job outside its CUDA graph (issue 20), on the CPU.

    python -m bench.pool_ops [--peers 3,16] [--label after] [--out bench/results/pool_ops.jsonl]

`ContextPool.draft_ahead` (drafters/head/pool.py) runs once per batched step: it places the step's
accepted paths into the pool's static inputs, replays the job's graph and queues the drafts' copy
to the host. On a GPU every aten op it dispatches outside `_job` (the graph's body) costs the host
a dispatch, and those on device tensors a kernel launch or copy; the GPU split (`--split`) put the
whole call near 1 ms. Here a random head over a tiny random llama drafts for `--peers`
sequences and a `TorchDispatchMode` counts the ops `draft_ahead` dispatches, `_job` excluded; one
row per peer count: ops in total and by name. A count, not a time: no GPU figure.
"""

from __future__ import annotations

import argparse
import collections
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import jetspec
from jetspec.bench.rows import append_row, run_row
from jetspec.core.interfaces import DecodeState
from jetspec.drafters.head import HeadOptions, jetspec_drafter
from jetspec.drafters.head.pool import ContextPool
from jetspec.testing.models import tiny_hf_model

VOCAB, HIDDEN = 96, 64


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
    """The ops of one pooled job of `peers` head drafters (the pool made by an earlier job) over a tiny
    random llama through the `decoder` target: each drafter has seen a short prompt, then each job
    gets a tree of N_i rows and an acceptance of k_i of its D_i + 1 path slots (random, fixed)."""
    folder = Path(tempfile.mkdtemp()) / "model"
    tiny_hf_model("llama", seed=3, vocab=VOCAB, hidden=HIDDEN, layers=2).save_pretrained(folder)
    target = (jetspec.builder().target("decoder", path=str(folder), device="cpu", dtype="float32", cuda_graphs=False)
              .attention("torch").kv_cache("paged").drafter("ngram").build()).target
    shutil.rmtree(folder.parent)
    pooled = [jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=4, lookup=False), target) for _ in range(peers)]
    g = torch.Generator().manual_seed(0)
    k = len(pooled[0].hidden_layers)
    for i, d in enumerate(pooled):
        state = DecodeState(tokens=torch.randint(8, VOCAB, (4 + i % 5,), generator=g).tolist(), prompt_len=4 + i % 5)
        d.reset(state)
        d.observe(state, torch.randn(len(state.tokens) - 1, k, HIDDEN, generator=g))  # [n, k, H]

    def results() -> list:  # per peer: its tree's hidden rows [N, k, H], its acceptance [2 D + 3]; made outside the count
        made = []
        for i in range(peers):
            n, depth, accepted = 7 + i % 3, 2 + i % 3, 1 + i % 3
            path = [0] + sorted(torch.randperm(n - 1, generator=g)[:depth].add(1).tolist())  # [D + 1] node indices
            tokens = torch.randint(8, VOCAB, (depth + 1,), generator=g).tolist()
            made.append((torch.randn(n, k, HIDDEN, generator=g), torch.tensor([accepted] + path + tokens)))
        return made

    def step(made: list) -> None:  # one job over every peer
        assert pooled[0].draft_ahead_together(pooled, [h for h, _ in made], [p for _, p in made], budget=16)

    step(results())  # makes the pool
    counted = results()
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
