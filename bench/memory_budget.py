"""Peak GPU memory of decoding at an 8B shape against what decoding must hold (issue 18):

    peak reserved <= 1.05 x (weights + KV cache + CUDA-graph pools)

    python -m bench.memory_budget [--model qwen3-8b] [--context 4096] [--trees 1 64 256] [--exact on] \
        [--out bench/results/memory_budget.jsonl]
    python -m bench.memory_budget --tiny      # any machine: the accounting; the peak on CUDA only

One process, `round_cost.py`'s target (random weights), paged cache and rounds:
1. weights  = the bytes of the target's parameters and buffers (tensor sizes), made first;
2. kv       = the bytes of the paged pool for `context` + the largest tree + graph padding,
              filled with `context` committed tokens (what a prefill leaves);
3. graphs   = what the CUDA-graph pools keep: the allocator's reserved bytes after one captured
              forward per tree size (and `empty_cache`, which frees cached blocks but no pool) minus
              before — the pools, and the graphs' static inputs and outputs;
4. the allocator's peak is reset, then `--rounds` rounds per tree size (begin + forward, as a
   decode round runs them): peak = torch.cuda.max_memory_reserved over those rounds, beside
   max_memory_allocated and the peak over the whole run, captures included.
over = peak / (weights + kv + graphs) - 1 (goal <= 5 %). One JSON row per run; `--tiny` on a CPU
writes the accounting with the CUDA figures None (no allocator statistics there).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # exact mode's kernels on a CPU: before they are defined

from bench.kernel_bench import best_first_tree  # noqa: E402
from bench.round_cost import MODELS, TINY, fill, fresh_graphs, new_cache, random_target  # noqa: E402
from jetspec.bench.rows import append_row  # noqa: E402
from jetspec.core.interfaces import AttentionMeta  # noqa: E402

MIB = 1 << 20


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each storage once (fused weights share theirs)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if t is not None and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def pool_bytes(cache) -> int:
    """Bytes of the paged cache's K/V pool (k, v [L, pages, P, Hkv, D] each)."""
    return sum(t.untyped_storage().nbytes() for t in (cache.k, cache.v))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="qwen3-8b")
    ap.add_argument("--tiny", action="store_true", help="2-layer random model, context 64, trees 1/16")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--trees", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--exact", choices=["on", "off"], default="on")
    ap.add_argument("--out", default="bench/results/memory_budget.jsonl")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cfg, context, trees = (TINY, 64, [1, 16]) if args.tiny else (MODELS[args.model], args.context, sorted(set(args.trees)))
    dtype = torch.bfloat16 if cuda else torch.float32
    target = random_target(cfg, device, dtype, "triton" if cuda else "torch", autotune=False, graphs=cuda,
                           exact=args.exact == "on", name="tiny-random" if args.tiny else f"{args.model}-random")
    weights = tensor_bytes(target.model)
    fresh_graphs(target)
    cache = new_cache(target, "paged", context + max(trees) + target.extra_pending, seed=context)
    fill(cache, target.info, context, seed=context)
    kv = pool_bytes(cache)
    forwards = {n: (torch.randint(0, cfg.vocab_size, (n,), device=device),  # [n] draft tokens
                    AttentionMeta.for_tree(best_first_tree(n, seed=n), context, device)) for n in trees}

    def round_of(n: int) -> None:
        cache.begin(n)  # discards the previous round's pending K/V: the context stays T
        target.forward(forwards[n][0], forwards[n][1], cache)

    reserved = (lambda: torch.cuda.memory_reserved(device)) if cuda else (lambda: 0)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    before = reserved()
    for n in trees:  # warm-up and capture of each size's graph
        for _ in range(3):
            round_of(n)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    graphs = reserved() - before
    run_peak = torch.cuda.max_memory_reserved(device) if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for n in trees:
        for _ in range(args.rounds):
            round_of(n)
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_reserved(device) if cuda else None
    held = weights + kv + graphs
    row = dict(kind="memory_budget", model=f"{'tiny' if args.tiny else args.model}-random", exact=args.exact == "on",
               context=context, trees=trees, rounds=args.rounds, dtype=str(dtype).removeprefix("torch."),
               weights_mib=weights / MIB, kv_mib=kv / MIB, graphs_mib=graphs / MIB if cuda else None,
               peak_reserved_mib=peak / MIB if cuda else None,
               peak_allocated_mib=torch.cuda.max_memory_allocated(device) / MIB if cuda else None,
               run_peak_reserved_mib=run_peak / MIB if cuda else None, over=peak / held - 1 if cuda else None,
               machine=torch.cuda.get_device_name(device) if cuda else "cpu",
               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               command="python -m bench.memory_budget " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
               torch=torch.__version__)
    append_row(Path(args.out), row)
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    over = "-" if row["over"] is None else f"{100 * row['over']:+.1f} %"
    print(f"weights {fmt(row['weights_mib'])} MiB + kv {fmt(row['kv_mib'])} MiB + graph pools {fmt(row['graphs_mib'])} MiB; "
          f"peak reserved over the rounds {fmt(row['peak_reserved_mib'])} MiB (allocated {fmt(row['peak_allocated_mib'])}; "
          f"the whole run {fmt(row['run_peak_reserved_mib'])}): {over} over what decoding holds (goal <= +5 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
