"""Which kernels one decoder forward launches, how many per layer, and on CUDA what each costs.

    python -m bench.kernel_breakdown --model smollm2 --exact on off          # the H200
    python -m bench.kernel_breakdown --model qwen3-8b --exact on --nodes 1 64
    python -m bench.kernel_breakdown --model smollm2 --exact on --graphs    # replays
    python -m bench.kernel_breakdown --model tiny-llama --exact on off      # any machine
    python -m bench.kernel_breakdown --model smollm2 --exact on --graphs --split-keys 128 256 512

Builds our `DecoderTarget` with random weights of the named shape (`round_cost.random_target`:
the kernels a forward launches do not depend on the weights' values), a paged cache (page 16) with
`--context` committed tokens, and runs forwards of N = `--nodes` tokens (1: a plain step; N > 1:
a best-first tree, as round_cost.py) after `--warmup` untimed ones. `--split-keys`: in exact mode, one
run per value of the triton backend's `split_keys` (keys per split-K range: part of the reduction
order, so a model's plain and speculative decoding must share it; free to choose per model).

* CUDA: `torch.profiler` records `--steps` forwards; the table groups device kernels by name:
  launches per forward, per layer (launches / L, for kernels launched at least L times: the others
  run once or twice per forward, outside the layers), GPU µs per forward and per launch. Eager by
  default (what the layers launch, one kernel per launch); `--graphs` profiles CUDA-graph replays
  instead (the same kernels, without launch gaps). `forward_ms`: one synchronised forward between
  CUDA events, median of `--steps`, profiler off.
* CPU: no device kernels to record. Counts what a GPU would launch: every Triton kernel launch (the
  interpreter, TRITON_INTERPRET=1, which this script sets) and every torch operator that computes
  (a `TorchDispatchMode`; views, `empty` and the ops inside a Triton launch are not counted, nor
  the torch operators a custom operator such as `jetspec::invariant_tree_attention` runs inside:
  its Triton launches are). A torch operator is one kernel on a GPU in most cases. No times. Use
  the tiny models: a kernel count per layer depends on the architecture, not on the sizes, and the
  interpreter takes many minutes over a full-size model.

Prints one table per (exact, nodes) and a summary line with kernels per layer, so two runs (before
and after a change, or exact on and off) compare line by line; `--out` appends JSON rows.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import shlex
import statistics
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

from bench.kernel_bench import best_first_tree  # noqa: E402
from bench.round_cost import QWEN3_8B, TINY, fill, new_cache, random_target  # noqa: E402

from jetspec.bench.rows import append_row, run_row  # noqa: E402
from jetspec.core.interfaces import AttentionMeta  # noqa: E402
from jetspec.core.invariant import launch_options  # noqa: E402
from jetspec.targets.decoder.config import DecoderConfig, RopeConfig  # noqa: E402

SMOLLM2_135M = DecoderConfig(  # HuggingFaceTB/SmolLM2-135M-Instruct config.json
    architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
    num_kv_heads=3, head_dim=64, max_positions=8192, rms_norm_eps=1e-5, tie_embeddings=True,
    rope=RopeConfig(theta=100000.0), eos_token_ids=(2,),
)
TINY_LLAMA = dataclasses.replace(TINY, architecture="llama", qk_norm=False, tie_embeddings=True)
MODELS = {"smollm2": SMOLLM2_135M, "qwen3-8b": QWEN3_8B, "tiny": TINY, "tiny-llama": TINY_LLAMA}  # tiny: Qwen3-like
VIEWS = {  # torch operators that launch nothing: views, allocation, metadata
    "view", "_unsafe_view", "reshape", "slice", "select", "t", "transpose", "expand", "unsqueeze", "squeeze",
    "as_strided", "alias", "detach", "permute", "split", "split_with_sizes", "chunk", "unbind", "empty", "empty_like",
    "empty_strided", "lift_fresh", "_reshape_alias", "unflatten", "flatten", "narrow", "numpy_T", "is_same_size",
}


# ---------------------------------------------------------------------------- CUDA: the profiler
def profile_cuda(step, steps: int) -> dict[str, tuple[int, float]]:
    """name -> (launches, total µs) over `steps` calls of step(), from the device events (kernels,
    and the memcpy / memset a forward does, under their own names)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernels: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[short_name(e.name)]
            k[0] += 1
            k[1] += e.time_range.elapsed_us()
    return {name: (n, us) for name, (n, us) in kernels.items()}


def short_name(name: str) -> str:
    """A readable kernel name: Triton kernels keep theirs; C++ templates lose their arguments."""
    name = name.split("(")[0]
    if "<" in name:
        name = name.split("<")[0]
    return name.removeprefix("void ").strip()[:70]


def forward_ms(step, steps: int) -> float:
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


# ---------------------------------------------------------------------------- CPU: launches counted
def count_cpu(step, steps: int) -> dict[str, tuple[int, float]]:
    """name -> (launches, 0.0): Triton kernel launches (interpreter) + computing torch operators."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from triton.runtime.interpreter import InterpretedFunction

    counts: collections.Counter = collections.Counter()
    inside_triton = [False]

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            op = func.overloadpacket.__name__
            if not inside_triton[0] and op not in VIEWS and func.namespace == "aten":
                counts[f"aten::{op}"] += 1
            return func(*args, **(kwargs or {}))

    run = InterpretedFunction.run

    def counted_run(self, *args, **kwargs):
        if kwargs.get("warmup"):
            return run(self, *args, **kwargs)
        counts[f"triton::{self.fn.__name__}"] += 1
        inside_triton[0] = True
        try:
            return run(self, *args, **kwargs)
        finally:
            inside_triton[0] = False

    InterpretedFunction.run = counted_run
    try:
        with Ops():
            for _ in range(steps):
                step()
    finally:
        InterpretedFunction.run = run
    return {name: (n, 0.0) for name, n in counts.items()}


# ---------------------------------------------------------------------------- the report
Kernels = dict[str, tuple[float, float]]  # name -> (launches, µs), per forward


def per_layer(full: Kernels, one: Kernels, layers: int) -> tuple[Kernels, Kernels]:
    """Forwards through all L layers and through the first layer alone -> (per layer, outside the
    layers): per layer = (full - one) / (L - 1), outside = one - per layer, name by name."""
    inside, outside = {}, {}
    for name in sorted(set(full) | set(one)):
        (n_full, us_full), (n_one, us_one) = full.get(name, (0.0, 0.0)), one.get(name, (0.0, 0.0))
        n, us = (n_full - n_one) / (layers - 1), (us_full - us_one) / (layers - 1)
        if round(n, 6):
            inside[name] = (n, us)
        if round(n_one - n, 6):
            outside[name] = (n_one - n, us_one - us)
    return inside, outside


def table(title: str, kernels: Kernels, total_us: float, cuda: bool) -> None:
    print(f"  {title:<62} {'launches':>8}" + (f" {'µs':>8} {'µs/launch':>9} {'share':>6}" if cuda else ""))
    for name, (n, us) in sorted(kernels.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0])):
        line = f"  {name:<62} {n:>8.2f}"
        if cuda:
            line += f" {us:>8.1f} {us / n if n else 0.0:>9.2f} {us / total_us if total_us else 0.0:>6.1%}"
        print(line)


def measure(target, step, steps: int, cuda: bool) -> Kernels:
    """Kernels of one forward (averaged over `steps`), after warm-up (and graph capture)."""
    for _ in range(5):
        step()
    found = profile_cuda(step, steps) if cuda else count_cpu(step, steps)
    return {name: (n / steps, us / steps) for name, (n, us) in found.items()}


def first_layer_only(target, keep: bool):
    """Cut the target to its first decoder layer (keep=False) or give it back all of them; CUDA
    graphs are captured anew either way."""
    from bench.round_cost import fresh_graphs
    from torch import nn

    if not hasattr(target, "_all_layers"):
        target._all_layers = target.model.layers
    target.model.layers = target._all_layers if keep else nn.ModuleList([target._all_layers[0]])
    fresh_graphs(target)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    ap.add_argument("--exact", nargs="+", choices=["on", "off"], default=["on"])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1], help="tokens per forward (1: a plain step)")
    ap.add_argument("--context", type=int, default=None, help="committed tokens (default 1024; CPU: 32)")
    ap.add_argument("--steps", type=int, default=None, help="forwards profiled (default 20; CPU: 1)")
    ap.add_argument("--graphs", action="store_true", help="CUDA: profile CUDA-graph replays, not eager forwards")
    ap.add_argument("--split-keys", type=int, nargs="+", default=[None],
                    help="exact mode: the triton backend's keys per split-K range, one run each (default: its own)")
    ap.add_argument("--linear-chunks", type=int, nargs="+", default=[None],
                    help="exact mode: the projections' K chunks (the decoder's linear_chunk option; 0: one chunk), one run each (default: one chunk)")
    ap.add_argument("--out", help="append one JSON row per (exact, split keys, linear chunk, nodes)")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = MODELS[args.model]
    context = args.context or (1024 if cuda else 32)
    steps = args.steps or (20 if cuda else 1)
    runs = [(mode == "on", keys, chunk) for mode in args.exact for keys in (args.split_keys if mode == "on" else [None])
            for chunk in (args.linear_chunks if mode == "on" else [None])]
    for exact, split_keys, chunk in runs:
        backend = "triton" if cuda or exact else "torch"
        target = random_target(cfg, device, dtype, backend, autotune=False, graphs=cuda and args.graphs, exact=exact,
                               split_keys=split_keys, linear_chunk=chunk or None)
        keys = target.attention.options.split_keys if exact else None  # what ran: the backend's default if not given
        for nodes in args.nodes:
            cache = new_cache(target, "paged", context + nodes + target.extra_pending, seed=0)
            fill(cache, target.info, context, seed=0)
            meta = AttentionMeta.for_tree(best_first_tree(nodes, seed=nodes), context, device)
            tokens = torch.randint(0, cfg.vocab_size, (nodes,), generator=torch.Generator().manual_seed(0)).to(device)

            def step() -> None:
                cache.begin(nodes)  # discards the last forward's pending K/V: the context stays T
                target.forward(tokens, meta, cache)

            first_layer_only(target, keep=False)
            one = measure(target, step, steps, cuda)
            first_layer_only(target, keep=True)
            full = measure(target, step, steps, cuda)
            ms = forward_ms(step, steps) if cuda else None
            inside, outside = per_layer(full, one, cfg.num_layers)
            total_us = sum(us for _, us in full.values())
            where = "graph replays" if target.graphs is not None else "eager"
            print(f"\n{args.model} {str(dtype).removeprefix('torch.')} exact={exact}{f' split_keys={keys} linear_chunk={chunk}' if exact else ''} "
                  f"nodes={nodes} context={context} "
                  f"({where}, {steps} forwards{', ' + torch.cuda.get_device_name() if cuda else ', CPU: launches counted'})")
            table("per layer", inside, total_us / cfg.num_layers, cuda)
            table("per forward, outside the layers", outside, total_us, cuda)
            n_layer, n_fwd = sum(n for n, _ in inside.values()), sum(n for n, _ in full.values())
            print(f"  => {n_layer:.1f} kernels per layer, {n_fwd:.0f} per forward (L = {cfg.num_layers})"
                  + (f"; kernels {total_us / 1e3:.3f} ms of GPU time, forward {ms:.3f} ms" if cuda else ""))
            if args.out:
                stamp = run_row("python -m bench.kernel_breakdown " + " ".join(shlex.quote(a) for a in sys.argv[1:]), {})
                row = dict(model=args.model, dtype=str(dtype).removeprefix("torch."), exact=exact, split_keys=keys, linear_chunk=chunk, nodes=nodes,
                           context=context, graphs=target.graphs is not None, pdl=launch_options(device)["PDL"] if exact else None,
                           steps=steps, kernels_per_layer=n_layer,
                           kernels_per_forward=n_fwd, kernel_ms=total_us / 1e3 if cuda else None, forward_ms=ms,
                           device=torch.cuda.get_device_name() if cuda else "cpu",
                           **{k: stamp[k] for k in ("command", "machine", "date", "torch")},
                           per_layer={k: dict(launches=n, us=us) for k, (n, us) in inside.items()},
                           outside={k: dict(launches=n, us=us) for k, (n, us) in outside.items()})
                append_row(Path(args.out), row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
