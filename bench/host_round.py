"""Host time of a decode round on the CPU, the target's forward stubbed out.

    python -m bench.host_round [--rounds 400] [--repeats 7] [--vocab 256] [--profile] [--label before] \
        [--out bench/results/host_round.jsonl]
    TRITON_INTERPRET=1 python -m bench.host_round --kernels [--out ...]

What a round costs the host besides the model: drafting, tree building and checks, the forward's
inputs (tree tensors, attention metadata), acceptance, the KV commit and the bookkeeping. The
target is `StubTarget`: one layer, one K/V head of width 1, logits read from a [V, V] table
(`next(t)` is a fixed random cycle over the vocabulary, so greedy output repeats and the n-gram
drafter finds matches). The time spent inside its `forward` is measured and subtracted; what is
left is host work a GPU run pays too (on a GPU each torch op also costs a launch, ~3-8 us, so
these CPU figures rank the parts, they do not predict GPU microseconds).

Per pipeline (plain; n-gram at budgets 16 and 64; dense and paged KV) it prints host us per
round: this thread's CPU time (the difference of a long and a short generation, least of
`--repeats`, median beside it: what the code itself costs, whoever else shares the core), and
wall time in total and per phase (`verify` minus the stub's own time) from the least disturbed
of `--repeats` generations (the median beside it), the aten ops per round outside the stub (each a
dispatch on the host; on a GPU, those on device tensors are kernel launches or copies), and
appends one JSON row each.
`--profile` prints the cProfile top functions of one speculative pipeline.
`--kernels` counts, untimed, the device path as CUDA runs it (`on_device.fused`): the greedy walk and
the staged K/V move as one Triton launch each, here in Triton's interpreter; a launch counts as
one op (`kernel_launches_per_round` says how many), the interpreter's own tensor handling as none.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import platform
import pstats
import shlex
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest.mock import patch

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import jetspec
from jetspec.core import on_device
from jetspec.core.interfaces import AttentionMeta, KVCache, TargetInfo, TargetOutput
from jetspec.core.results import PHASES


class StubTarget:
    """A `Target` whose forward is one table lookup plus a K/V write of 1-wide rows; the seconds
    spent inside it are summed in `self.seconds` (subtracted from the round's time)."""

    tokenizer = None
    provides = ()

    def __init__(self, vocab: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.info = TargetInfo(
            name="stub", architecture="stub", vocab_size=vocab, hidden_size=1, num_layers=1, num_kv_heads=1,
            head_dim=1, max_positions=1 << 16, dtype=torch.float32, device=torch.device("cpu"),
        )
        nxt = torch.randperm(vocab, generator=g)  # [V] next(t): one cycle decomposition of V
        self.table = torch.randn(vocab, vocab, generator=g)  # [V, V] logits after token t
        self.table[torch.arange(vocab), nxt] = 10.0  # argmax is next(t), by a wide margin
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # this thread's CPU time inside forward
        self.inside = False  # inside forward (`OpCounter` skips the stub's own ops)

    def forward(self, tokens: torch.Tensor, meta: AttentionMeta, cache: KVCache, hidden_layers=()) -> TargetOutput:
        t0, c0 = time.perf_counter(), time.thread_time()
        self.inside = True
        n = tokens.numel()
        kv = torch.zeros(n, 1, 1)  # [n, Hkv=1, D=1]
        cache.write(0, kv, kv)
        out = TargetOutput(logits=self.table[tokens])  # [n, V]
        self.inside = False
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.thread_time() - c0
        return out


def cpu_name() -> str:
    try:
        line = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
        return line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def pipelines(target: StubTarget):
    """(name, pipeline, speculative) for the configurations measured. "device": acceptance on
    the device and the commit staged there, as a GPU target runs them (`accept_on_device =
    "always"`; on the CPU the device is the host); "host": the argmax read back and walked on the
    host (what "auto" picks for a CPU target), in the same run."""
    for cache in ("dense", "paged"):
        for mode, budgets in (("always", (0, 16, 64)), ("never", (0, 16))):
            for budget in budgets:
                b = jetspec.builder().target(target).kv_cache(cache).drafter("ngram")
                pipe = b.generation(budget=budget, max_new_tokens=1, accept_on_device=mode).build()
                kind = f"ngram@{budget}" if budget else "plain"
                yield f"{kind}/{cache}/{'device' if mode == 'always' else 'host'}", pipe, budget > 0


class OpCounter(TorchDispatchMode):
    """Counts aten ops (what a GPU run would launch or dispatch per op), outside the stub's forward,
    and Triton launches (`launches()`: each one op; the interpreter's tensor handling inside none)."""

    def __init__(self, target: StubTarget):
        super().__init__()
        self.target, self.ops, self.kernels, self._in_kernel = target, 0, 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (self.target.inside or self._in_kernel):
            self.ops += 1
        return func(*args, **(kwargs or {}))

    @contextmanager
    def launches(self):
        from triton.runtime.interpreter import GridExecutor

        run = GridExecutor.__call__

        def launch(executor, *args, **kwargs):
            self.ops += 1
            self.kernels += 1
            self._in_kernel = True
            try:
                return run(executor, *args, **kwargs)
            finally:
                self._in_kernel = False

        with patch.object(GridExecutor, "__call__", launch):
            yield


def ops_per_round(target: StubTarget, pipe, speculative: bool, prompt: list[int], rounds: int,
                  kernels: bool = False) -> tuple[float, float]:
    """(aten ops + Triton launches, Triton launches) per round of the pipeline's own code (the stub's
    forward not counted), untimed; `kernels`: the fused device path (`on_device.fused`) in the interpreter."""
    counter = OpCounter(target)
    with ExitStack() as stack:
        if kernels:
            stack.enter_context(patch.object(on_device, "fused", lambda x: True))
            stack.enter_context(counter.launches())
        stack.enter_context(counter)
        stats = pipe.generate(prompt, max_new_tokens=rounds * (8 if speculative else 1), speculative=speculative).stats
    return counter.ops / stats.rounds, counter.kernels / stats.rounds


def cpu_per_round(target: StubTarget, pipe, speculative: bool, prompt: list[int], rounds: int) -> float:
    """This thread's CPU us per round outside the stub, from two generations of different lengths
    (their difference cancels prefill and setup). CPU time, not wall time: on a shared machine the
    wall clock also counts the time other processes held the core."""
    cost = []
    for n in (rounds // 4, rounds):
        target.cpu_seconds = 0.0
        c0 = time.thread_time()
        stats = pipe.generate(prompt, max_new_tokens=n * (8 if speculative else 1), speculative=speculative).stats
        cost.append((time.thread_time() - c0 - target.cpu_seconds, stats.rounds))
    (c1, r1), (c2, r2) = cost
    return (c2 - c1) / (r2 - r1) * 1e6


def measure(target: StubTarget, pipe, speculative: bool, prompt: list[int], rounds: int, repeats: int) -> dict:
    """`repeats` generations of about `rounds` rounds each; host us per round, total and per
    phase, from the repeat with the least host time (the machine is shared: the least disturbed
    repeat is the closest to the code's own cost)."""
    pipe.generate(prompt, max_new_tokens=32, speculative=speculative)  # warm-up
    runs = []
    for _ in range(repeats):
        target.seconds = 0.0
        stats = pipe.generate(prompt, max_new_tokens=rounds * (8 if speculative else 1), speculative=speculative).stats
        per_round = {p: stats.seconds[p] / stats.rounds * 1e6 for p in PHASES[1:]}
        per_round["verify"] -= target.seconds / stats.rounds * 1e6  # what is left: the forward's inputs, checks
        runs.append((sum(per_round.values()), per_round, stats, target.seconds / stats.rounds * 1e6))
    host, per_round, stats, stub = min(runs, key=lambda r: r[0])
    cpu = sorted(cpu_per_round(target, pipe, speculative, prompt, rounds) for _ in range(repeats))
    return {
        "host_cpu_us_per_round": round(cpu[0], 1), "host_cpu_us_per_round_median": round(cpu[len(cpu) // 2], 1),
        "rounds": stats.rounds, "repeats": repeats, "tau": round(stats.tau, 3),
        "host_us_per_round": round(host, 1),
        "host_us_per_round_median": round(sorted(r[0] for r in runs)[len(runs) // 2], 1),
        "phase_us_per_round": {p: round(v, 1) for p, v in per_round.items()},
        "stub_forward_us_per_round": round(stub, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--label", default="", help="a word kept in each row, e.g. before / after")
    ap.add_argument("--profile", action="store_true", help="cProfile one speculative pipeline")
    ap.add_argument("--kernels", action="store_true", help="count (untimed) the device path with its Triton kernels, in the interpreter")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    target = StubTarget(args.vocab)
    prompt = torch.randint(0, args.vocab, (64,), generator=torch.Generator().manual_seed(1)).tolist()
    if args.profile:
        pipe = jetspec.builder().target(target).drafter("ngram").generation(budget=64).build()
        pipe.generate(prompt, max_new_tokens=32)
        prof = cProfile.Profile()
        prof.runcall(pipe.generate, prompt, max_new_tokens=4 * args.rounds)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    common = {
        "bench": "host_round", "label": args.label, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"dev machine, {os.cpu_count()}-core {cpu_name()} (shared), CPU only, torch {torch.__version__}, 1 thread",
        "command": "python " + shlex.join(sys.argv), "vocab": args.vocab, "dtype": str(target.info.dtype).removeprefix("torch."),
        "note": "CPU host overhead per round, target forward stubbed and subtracted; not a GPU figure",
    }
    if args.kernels:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("--kernels runs the Triton kernels on the CPU: set TRITON_INTERPRET=1")
        common["note"] = "aten ops + Triton launches per round of the fused device path (interpreter), untimed; not a GPU figure"
        for name, pipe, speculative in pipelines(target):
            if name.endswith("/device"):
                ops, launches = ops_per_round(target, pipe, speculative, prompt, 50, kernels=True)
                row = {**common, "pipeline": name + "+kernels", "aten_ops_per_round": round(ops, 1),
                       "kernel_launches_per_round": round(launches, 2)}
                print(f"{name + '+kernels':28s} ops {ops:5.1f} (of which Triton launches {launches:4.2f})")
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
        return
    for name, pipe, speculative in pipelines(target):
        row = {**common, "pipeline": name, **measure(target, pipe, speculative, prompt, args.rounds, args.repeats)}
        row["aten_ops_per_round"] = round(ops_per_round(target, pipe, speculative, prompt, 50)[0], 1)
        phases = "  ".join(f"{p} {v:6.1f}" for p, v in row["phase_us_per_round"].items())
        print(f"{name:28s} cpu {row['host_cpu_us_per_round']:6.1f} (median {row['host_cpu_us_per_round_median']:6.1f}) "
              f"wall {row['host_us_per_round']:7.1f} us/round (median {row['host_us_per_round_median']:7.1f}) "
              f"ops {row['aten_ops_per_round']:5.1f}  tau {row['tau']:5.2f}  | {phases}")
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
