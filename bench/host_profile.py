"""Where the host's time goes in a decode round on the GPU (issue 18: host time per round <= 100 us).

    python -m bench.host_profile [--model smollm2] [--pipelines plain ngram@32] [--new 256] [--top 25] \
        [--out bench/results/host_profile.jsonl]

The real pipeline around our decoder with random weights of the model's shape (`round_cost.random_target`:
exact, CUDA graphs, paged KV, Triton attention; no checkpoint, so it runs on a bare machine), greedy,
from a prompt of random tokens said three times (the random model's output soon loops too, so prompt
lookup drafts). Per pipeline: one warm-up generate (compiles, captures), then
* a timed generate: the phases of `GenerationStats` per round — host = draft + build + verify + accept +
  commit, wait = the host blocked on the round's one read-back (`wait`; before 2026-12-07 the phases had no
  `wait`, and this script counted all of `accept` as waiting), i.e. what the bench's phases show, on this run's model;
* the same generate with the verify phase split: the cache's `begin`, the tree's upload and the
  target's forward call (static-input copies, graph replay), host µs per round each — what the pipeline
  pays in its loop, beside `bench/graph_launch.py`'s same steps timed alone;
* the same generate under `cProfile`: the Python functions by own time per round (what to cut);
* the same under `torch.profiler` (CPU and CUDA activities): per round, the CUDA runtime calls by name
  (cudaLaunchKernel, cudaGraphLaunch, cudaMemcpyAsync, ...: count and host us) and the torch operators
  by self CPU time. Both profilers add their own cost per call: their us rank, the timed run measures.
Appends one JSON row per pipeline. Without CUDA it runs the tiny shape on the CPU with torch attention in
free order (a dry run of the script: no runtime calls to count, no figure to cite).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

import jetspec  # noqa: E402
from bench.kernel_breakdown import MODELS  # noqa: E402
from bench.round_cost import random_target  # noqa: E402
from jetspec.bench.rows import append_row, run_row  # noqa: E402
from jetspec.core.invariant import launch_options  # noqa: E402
from jetspec.core.results import PHASES  # noqa: E402

HOST_PHASES = [p for p in PHASES if p not in ("wait", "prefill")]  # wait: blocked on the GPU


def build(target, drafter: str | None, budget: int, new: int):
    b = jetspec.builder().target(target).kv_cache("paged", page_size=16).scorer("best-first")
    if drafter == "jetspec":  # a random head (the random target has no trained one): junk drafts, the real per-round machinery
        b = b.drafter(drafter, checkpoint="random")
    elif drafter:
        b = b.drafter(drafter, n_max=4)
    return b.generation(budget=budget, max_new_tokens=new, stop_token_ids=[]).build()


def per_round(stats) -> dict[str, float]:
    """us per round of each phase (`wait` among them), and host: every phase but the wait and the prefill."""
    r = max(stats.rounds, 1)
    out = {p: 1e6 * stats.seconds[p] / r for p in PHASES if p != "prefill"}
    out["host"] = sum(out[p] for p in HOST_PHASES)
    return out


def verify_split(pipe, run, rounds: int) -> dict[str, float]:
    """The verify phase's host µs per round by step: the pipeline's cache's `begin` (the prompt's one
    included), its tree upload, its forward call. Wrappers on the instances, taken off after."""
    spent = {"begin": 0.0, "upload": 0.0, "forward": 0.0}

    def timed(name, fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[name] += time.perf_counter() - t0
            return out
        return call

    wrapped = [(pipe._cache, "begin", "begin"), (pipe, "_upload", "upload"), (pipe, "_forward", "forward")]
    before = [owner.__dict__.get(attr) for owner, attr, _ in wrapped]  # the TreeUpload; None: a method of the class
    for owner, attr, name in wrapped:
        setattr(owner, attr, timed(name, getattr(owner, attr)))
    try:
        run()
    finally:
        for (owner, attr, _), old in zip(wrapped, before):
            setattr(owner, attr, old) if old is not None else delattr(owner, attr)
    return {name: 1e6 * t / rounds for name, t in spent.items()}


def python_top(run, rounds: int, top: int) -> list[dict]:
    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    st = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, _) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}:{fn}", "calls": nc / rounds, "own_us": 1e6 * tt / rounds,
                     "cum_us": 1e6 * ct / rounds})
    return sorted(rows, key=lambda r: -r["own_us"])[:top]


def torch_top(run, rounds: int, top: int, cuda: bool) -> tuple[list[dict], list[dict]]:
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=acts) as prof:
        run()
        if cuda:
            torch.cuda.synchronize()
    runtime, ops = [], []
    for e in prof.key_averages():
        row = {"name": e.key, "calls": e.count / rounds, "self_cpu_us": e.self_cpu_time_total / rounds}
        (runtime if e.key.startswith("cuda") else ops).append(row)
    by = lambda r: -r["self_cpu_us"]  # noqa: E731
    return sorted(runtime, key=by)[:top], sorted(ops, key=by)[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default=None, help="the shape (default: smollm2 on CUDA, tiny-llama on the CPU)")
    ap.add_argument("--pipelines", nargs="+", default=["plain", "ngram@32"], help="plain, or DRAFTER@BUDGET (ngram; jetspec: a random head with prompt lookup)")
    ap.add_argument("--new", type=int, default=256, help="new tokens per generate")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--speed-only", type=int, default=0, metavar="N",
                    help="no profiling: N timed generates per pipeline after the warm-up, their tok/s (A/B runs)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = args.model or ("smollm2" if cuda else "tiny-llama")
    cfg = MODELS[model]
    dtype = torch.bfloat16 if cuda else torch.float32
    target = random_target(cfg, device, dtype, "triton" if cuda else "torch", autotune=False, graphs=cuda, exact=cuda)
    g = torch.Generator().manual_seed(0)
    words = torch.randint(3, cfg.vocab_size, (40,), generator=g).tolist()
    prompt = words * 3  # [120] token ids
    pdl = launch_options(device)["PDL"] if cuda else None
    command = "python -m bench.host_profile " + shlex.join(sys.argv[1:] if argv is None else argv)
    for name in args.pipelines:
        drafter, budget = (None, 0) if name == "plain" else (name.split("@")[0], int(name.split("@")[1]))
        pipe = build(target, drafter, budget, args.new)
        run = lambda: pipe.generate(prompt, speculative=drafter is not None)  # noqa: E731
        run()  # warm-up: compiles, captures
        if args.speed_only:
            speeds = [run().stats.tokens_per_second for _ in range(args.speed_only)]
            print(f"== {name}: tok/s " + " ".join(f"{v:.1f}" for v in speeds) + f"; median {statistics.median(speeds):.1f}")
            if args.out:
                append_row(args.out, {**run_row(command, {}), "kind": "speed", "model": model, "pipeline": name,
                                      "device": str(device), "dtype": str(dtype).removeprefix("torch."), "exact": cuda,
                                      "pdl": pdl, "tokens_per_s": speeds, "median_tokens_per_s": statistics.median(speeds)})
            continue
        res = run()
        rounds = res.stats.rounds
        phases = per_round(res.stats)
        split = verify_split(pipe, run, rounds)
        py = python_top(run, rounds, args.top)
        runtime, ops = torch_top(run, rounds, args.top, cuda)
        print(f"\n== {name}: {rounds} rounds, tau {res.stats.tau:.2f}, {res.stats.tokens_per_second:.1f} tok/s; us per round: "
              + "  ".join(f"{k} {v:.0f}" for k, v in phases.items()))
        print("-- verify, host us per round: " + "  ".join(f"{k} {v:.0f}" for k, v in split.items()))
        print("-- CUDA runtime calls per round (calls, host us under the profiler)")
        for r in runtime:
            print(f"   {r['name'][:60]:60} {r['calls']:7.2f} {r['self_cpu_us']:8.1f}")
        print("-- torch operators by self CPU us per round (calls, us)")
        for r in ops:
            print(f"   {r['name'][:60]:60} {r['calls']:7.2f} {r['self_cpu_us']:8.1f}")
        print("-- Python functions by own time per round under cProfile (calls, own us, cumulative us)")
        for r in py:
            print(f"   {r['function'][:70]:70} {r['calls']:7.2f} {r['own_us']:8.1f} {r['cum_us']:8.1f}")
        if args.out:
            append_row(args.out, {**run_row(command, {}), "kind": "host_profile", "model": model, "pipeline": name,
                                  "device": str(device), "dtype": str(dtype).removeprefix("torch."), "exact": cuda, "pdl": pdl,
                                  "rounds": rounds, "tau": res.stats.tau, "tokens_per_s": res.stats.tokens_per_second,
                                  "us_per_round": phases, "verify_us_per_round": split,
                                  "runtime_calls": runtime, "operators": ops, "python_functions": py})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
