"""Throughput of batched decoding (issue #20): `jetspec run`-style speculative decoding at batch
sizes 1 / 8 / 32 / 64 against our own batched plain decoding and `transformers` batched `generate()`,
same target, same prompts, same run.

    python -m bench.batched_throughput --target PATH [--prompts 256] [--new 256] [--batch-sizes 1,8,32,64] \
        [--budget 32[,16,...]] [--b1-prompts 16] [--warmup-new 256] [--exact on|off] [--overlap off|on|both] [--split] [--hf-batch-sizes 1,32] --out bench/results/batched_throughput.jsonl \
        [--plot bench/plots/batched_throughput.png]

Variants, for every batch size B (greedy; chat-templated prompts, GSM8K test by default):
    plain@B    our engine, `generate_many(batch_size=B, speculative=False)`: root-only trees, packed (at B = 1:
               `generate` per prompt, as `jetspec run` runs batch 1 — since 2026-12-07; earlier rows at B = 1
               measured a batch engine of one)
    spec@B     our engine, `generate_many(batch_size=B)`: n-gram drafts (or --drafter), best-first,
               budget --budget (default: users' default, 32; the rows before 2026-12-07 08:00 ran at 16, the old default
               of this script)
    spec-bN@B  with several budgets (--budget 16,32): one speculative variant per budget N (any of the
               forms below takes the -bN too)
    spec-rC@B  the same with at most C verify rows a step (`max_verify_rows`, one variant per cap in
               --max-verify-rows), shared by the sequences' budgets: min(budget, C // S - 1) drafts each
    hf@B       `transformers` `generate()` on batches of B left-padded prompts (its default attention)
    spec-host@B  the speculative variants with `generation.build_on_device = false` (--build-on-device off /
               both / all): the trees built on the host and uploaded, not grown on the device
    spec-auto@B  `generation.build_on_device = "auto"` (the default users get; --build-on-device auto): grown on the
               device when a step verifies at least `GROW_FROM` sequences, else built on the host
    spec-triton@B  grown on the device by best-first's one-launch Triton build (`device_build = "triton"`,
               --build-on-device triton / all) instead of its CUDA graph of the torch form
    V+ov@B     any of ours with `generation.overlap` (--overlap on / both): the slots' two halves in
               alternating steps, one verified on the device while the host makes the other's

Both of ours run the decoder over one paged page pool with the packed Triton kernel (--attention
triton, the default on CUDA) or the reference attention (torch), replayed from CUDA graphs where the
target has them (`--cuda-graphs on`, the default: batch 1's forward, and in exact mode the packed
forward, `targets/decoder/batch_graphs.py`) or eagerly (`off`). `--exact on` (the default with triton on CUDA, as for users): the
row-invariant kernels and the packed position-invariant attention, so every sequence's output
must equal its batch-1 plain output bit for bit in bf16 too; `off`: the free-order kernels. tokens/s = tokens generated (to EOS or --new) / wall time of the
whole variant, device synchronised, after a warm-up (the variant's first B prompts to --warmup-new tokens: by
default the full length, so the timed run meets no context length the warm-up did not). `identical` = the fraction of prompts whose
output equals plain@1's (the first --b1-prompts prompts: batch 1 is slow), `identical_all` = the fraction of
all prompts whose output equals the first batched plain run's (batch size must not change a bit); `x_plain` = spec@B /
plain@B, `x_hf` = plain@B / hf@B (hf only at --hf-batch-sizes). Our rows also carry `phases` (the
engine's seconds per phase, summed over sequences: shares of the wall time; `wait` is the host blocked on the
step's read-back from the device, `accept` the host's own acceptance work — rows before 2026-12-07 have no `wait`,
their `accept` holds it), `graph_captures` and `capture_seconds` (CUDA graphs captured in the timed run by any owner — rows
before 2026-12-07 10:10 UTC counted the target's and the device build's only, not the head drafters' — with
the kernel compiles the warm-up did not reach), `capture_log` (each of them: the captured function's name, its graph
key, seconds; printed too) and `tokens_per_s_steady` (without them); with --split, `host_split`
(named engine functions' calls and seconds, `bench/host_split.py`). One JSON row per variant is appended to --out as
soon as the variant finishes (a run cut off by a timeout keeps what it did), with the command,
machine and date.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

import jetspec
from jetspec.bench.datasets import prompts_dir, read_jsonl
from jetspec.bench.rows import append_row, run_row
from jetspec.core.config import GenerationConfig
from jetspec.core.cuda_graphs import GraphSet
from jetspec.core.errors import JetSpecError
from jetspec.scorers.best_first import BestFirstScorer

from bench.gpu_timing import timed, traced
from bench.host_split import SPLIT, split_timers


def read_prompts(path: Path, n: int) -> list[str]:
    """The first n prompts of a JSONL file (`question`, `prompt`, `problem` or `text` field)."""
    from jetspec.runs import prompt_text

    texts = [t for t in (prompt_text(r) for r in read_jsonl(path)) if t]
    if not texts:
        raise SystemExit(f"batched_throughput: no prompts in {path}")
    return texts[:n]


def hf_generate(model: Any, ids: list[list[int]], batch_size: int, new: int, pad: int, eos: set[int], device: str) -> list[list[int]]:
    """`transformers` greedy `generate()` on batches of left-padded prompts; each output cut after
    its first EOS (what our engine returns)."""
    outs = []
    for b in range(0, len(ids), batch_size):
        batch = ids[b : b + batch_size]
        width = max(map(len, batch))
        x = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)  # [b, width]
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)  # [b, width]
        with torch.no_grad():
            y = model.generate(x, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=pad)
        for row in y[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            outs.append(row[:cut])
    return outs


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: its pass of median tokens/s (the lower of the middle two)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    return [sorted(rs, key=lambda r: r["tokens_per_s"])[(len(rs) - 1) // 2] for rs in by.values()]


def summary(rows: list[dict[str, Any]], b: int) -> str:
    """Batch b's line: each spec engine over plain decoding of its overlap mode, and the best spec engine over
    the best plain one (what a user choosing either gets) — per pass, then the median over the passes."""
    passes = sorted({r.get("repeat", 1) for r in rows if r["batch_size"] == b and r["engine"] != "hf"})
    per: dict[str, list[float]] = {}
    for rep in passes:
        by = {r["engine"]: r["tokens_per_s"] for r in rows if r["batch_size"] == b and r.get("repeat", 1) == rep and r["engine"] != "hf"}
        for e in (e for e in by if e.startswith("spec")):
            p = "plain+ov" if e.endswith("+ov") else "plain"
            if p in by:
                per.setdefault(f"{e} / {p}", []).append(by[e] / by[p])
        specs, plains = [t for e, t in by.items() if e.startswith("spec")], [t for e, t in by.items() if e.startswith("plain")]
        if specs and plains and len(by) > 2:
            per.setdefault("best spec / best plain", []).append(max(specs) / max(plains))
    hf = {r["engine"]: r["tokens_per_s"] for r in rows if r["batch_size"] == b and r.get("repeat", 1) == 1}
    if "hf" in hf and "plain" in hf:
        per["plain / hf"] = [hf["plain"] / hf["hf"]]
    if len(passes) == 1:
        return f"batch {b:>3}: " + ", ".join(f"{k} = {v[0]:.2f}x" for k, v in per.items())
    return (f"batch {b:>3}, median of {len(passes)} passes: "
            + ", ".join(f"{k} = {median(v):.2f}x" + (f" ({' '.join(f'{x:.2f}' for x in v)})" if len(v) > 1 else "") for k, v in per.items()))


def grown(build: str) -> bool | str:
    """A variant's build (graph, triton, host, auto) -> its `generation.build_on_device`."""
    return "auto" if build == "auto" else build != "host"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="a Hugging Face model folder")
    ap.add_argument("--prompts-file", help="JSONL of prompts (default: gsm8k_test.jsonl of the shared prompt sets)")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--b1-prompts", type=int, default=16, help="prompts run at batch size 1 (the identity reference)")
    ap.add_argument("--new", type=int, default=256, help="max new tokens")
    ap.add_argument("--warmup-new", type=int, default=None,
                    help="max new tokens of each variant's warm-up on its first B prompts (default: --new, the timed run's "
                         "length: its graph captures and kernel compiles then fall in the warm-up, not in the timed run)")
    ap.add_argument("--batch-sizes", default="1,8,32,64")
    ap.add_argument("--drafter", default="ngram")
    ap.add_argument("--drafter-options", default="{}", help='the drafter\'s options as JSON, e.g. \'{"calibration": "lookup.json"}\'')
    ap.add_argument("--budget", default=str(GenerationConfig().budget),
                    help="draft nodes per sequence-round (default: users' default, `generation.budget`); several, "
                         "comma-separated: one speculative variant per budget (V-bN@B)")
    ap.add_argument("--max-verify-rows", default="none",
                    help="verify-row caps per step, comma-separated, 'none' = uncapped: one speculative variant per cap "
                         "(spec@B uncapped, spec-rC@B capped at C rows, which the sequences' budgets share)")
    ap.add_argument("--overlap", choices=("off", "on", "both"), default="off",
                    help="our variants one step at a time (off), with the slots' halves overlapped (on: V+ov@B), or both")
    ap.add_argument("--build-on-device", choices=("on", "off", "both", "auto", "triton", "all"), default="on",
                    help="speculative variants with their trees grown on the device where the drafter and scorer can "
                         "(on, `generation.build_on_device`; triton: best-first's one-launch build, V-triton@B), built on "
                         "the host (off: V-host@B), on and off (both), or all three; auto: as users' default, grown where a step has "
                         "GROW_FROM sequences or more (V-auto@B)")
    ap.add_argument("--attention", choices=("triton", "torch"), default=None,
                    help="ours: triton (the packed kernel, exact = false) or torch (default: triton on CUDA, else torch)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--exact", choices=("on", "off"), default=None,
                    help="ours: the exact (batch-invariant) kernels; default on with triton on CUDA, else off")
    ap.add_argument("--cuda-graphs", choices=("on", "off"), default="on",
                    help="replay the forwards from CUDA graphs (batch 1, and the packed forward in exact mode), as users do")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers generate()")
    ap.add_argument("--hf-batch-sizes", help="transformers generate() at these batch sizes only (default: --batch-sizes)")
    ap.add_argument("--out", default="bench/results/batched_throughput.jsonl")
    ap.add_argument("--plot", help="also write this run's tokens/s against batch size to this PNG")
    ap.add_argument("--profile", type=Path, default=None,
                    help="also cProfile our variants' timed runs: one <engine>_<B>.pstats and a .txt (top 40 by cumulative, then by own time) per variant in this folder "
                         "(the profiler slows Python: those runs' tok/s are not comparable and get 'profiled': true)")
    ap.add_argument("--trace", type=Path, default=None,
                    help="also run our variants' timed runs under torch.profiler (CPU and CUDA activity): per variant a "
                         "<engine>_<B>.trace.txt of its kernels by GPU time and a line in trace.jsonl — wall seconds, GPU busy seconds "
                         "(kernels and copies summed), kernel count: GPU-bound (busy ~ wall) or host-bound (busy << wall); "
                         "the profiler slows the host: those runs' tok/s are not comparable and get 'profiled': true")
    ap.add_argument("--split", action="store_true",
                    help="also time named engine functions in our variants' timed runs (`bench/host_split.py`): each row gets "
                         "host_split {name: [calls, seconds]}, inclusive of what each calls, host_split_slowest {name: its slowest "
                         "call's seconds} (a compile inside the run shows there) and 'split': true")
    ap.add_argument("--split-also", default="", help="--split: more functions to time, comma-separated 'module:Class.attr' names")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run each batch size's variants of ours this many times in turn (plain, spec, ..., plain, spec, ...): "
                         "each row gets its pass as 'repeat' and its ratios against its own pass's plain; the summary gives the "
                         "median over passes (a lent machine's host speed drifts within a call)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"batched_throughput: --repeats must be a positive count of passes, got {args.repeats}")
    if args.split and (args.profile or args.trace):
        raise SystemExit("batched_throughput: --split times the runs without a profiler; use it without --profile and --trace")
    if args.split_also and not args.split:
        raise SystemExit("batched_throughput: --split-also names more functions for --split; add --split")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    try:
        budgets = [int(x) for x in args.budget.split(",")]
    except ValueError:
        raise SystemExit(f"batched_throughput: --budget takes draft counts, comma-separated; got {args.budget!r}")
    if not budgets or min(budgets) < 1:
        raise SystemExit(f"batched_throughput: --budget must be positive draft counts, got {args.budget!r}")
    try:
        caps = [None if c.strip() == "none" else int(c) for c in args.max_verify_rows.split(",")]
    except ValueError:
        raise SystemExit(f"batched_throughput: --max-verify-rows takes 'none' or row counts, comma-separated; got {args.max_verify_rows!r}")
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"batched_throughput: --batch-sizes must be positive integers, got {args.batch_sizes!r}")
    warmup_new = args.new if args.warmup_new is None else args.warmup_new
    if warmup_new < 1:
        raise SystemExit(f"batched_throughput: --warmup-new must be a positive token count, got {warmup_new}")
    texts = read_prompts(Path(args.prompts_file) if args.prompts_file else prompts_dir() / "gsm8k_test.jsonl", args.prompts)
    stamp = run_row("python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]), {})
    stamp = {k: stamp[k] for k in ("date", "machine", "command", "torch")} | {"device": args.device, "dtype": args.dtype}

    attention = args.attention or ("triton" if args.device.startswith("cuda") else "torch")
    exact = args.exact == "on" if args.exact else (attention == "triton" and args.device.startswith("cuda"))
    stamp |= {"attention": attention, "exact": exact, "cuda_graphs": args.cuda_graphs == "on", "warmup_new": warmup_new}
    try:
        pipe = (jetspec.builder().target("decoder", path=args.target, device=args.device, dtype=args.dtype, exact=exact,
                                         cuda_graphs=args.cuda_graphs == "on")
                .attention(attention).kv_cache("paged").drafter(args.drafter, **json.loads(args.drafter_options))
                .generation(budget=budgets[0], max_new_tokens=args.new).build())
    except JetSpecError as e:  # e.g. --device cuda (the default) on a machine without one: one line, not a traceback
        raise SystemExit(f"batched_throughput: {e}")
    ids = [pipe.encode(t) for t in texts]
    rows: list[dict[str, Any]] = []

    # rows count captures where the run has CUDA graphs: the decoder's (one sequence's forward, the packed
    # forward; none where eager or another target) or, on CUDA, the device build's
    graphs_on = (any(getattr(pipe.target, a, None) is not None for a in ("graphs", "batch_graphs"))
                 or (isinstance(pipe.scorer, BestFirstScorer) and args.device.startswith("cuda")))

    def captured() -> tuple[int, float]:  # every graph set's: the target's, the device build's, the head drafters' own
        return GraphSet.everywhere[0], GraphSet.everywhere[1]

    def ours(variant: str, batch: int, speculative: bool, prompts: list[list[int]],
             cap: int | None = None, overlap: bool = False, build: str = "graph",
             budget: int | None = None) -> tuple[list[list[int]], float, dict[str, Any]]:
        """-> outputs, seconds, extra row fields: tau (tokens per sequence-round), phases (seconds of
        each engine phase summed over sequences: a step's shared work is split evenly among its
        sequences, so each phase sums to its share of the wall time), graph captures in the timed run
        (with the kernel compiles the warm-up did not reach: one-off costs of a process) and the
        tokens/s without them (`tokens_per_s_steady`)."""
        pipe.config.generation = pipe.config.generation.model_copy(
            update={"overlap": overlap, "build_on_device": grown(build), "budget": budgets[0] if budget is None else budget})
        if build != "host" and hasattr(pipe.scorer, "options") and "device_build" in type(pipe.scorer.options).model_fields:
            pipe.scorer.options = pipe.scorer.options.model_copy(update={"device_build": "triton" if build == "triton" else "graph"})
        pipe.generate_many(prompts[:batch], batch_size=batch, max_new_tokens=warmup_new, speculative=speculative, max_verify_rows=cap)  # warm-up
        before, GraphSet.log = captured(), []  # which graphs the timed run captures (`capture_log`)
        run = lambda: pipe.generate_many(prompts, batch_size=batch, speculative=speculative, max_verify_rows=cap)  # noqa: E731
        name = variant.replace("@", "_").replace("+", "_")  # spec_ov_8: file names a device call brings back (no '@', '+')
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            results, seconds = timed(args.device, lambda: prof.runcall(run))
            args.profile.mkdir(parents=True, exist_ok=True)
            prof.dump_stats(args.profile / f"{name}.pstats")
            with open(args.profile / f"{name}.txt", "w") as f:  # by cumulative time, then by own time
                pstats.Stats(prof, stream=f).sort_stats("cumulative").print_stats(40)
                pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(40)
        elif args.trace:
            results, seconds = traced(args.device, run, args.trace, name, stamp)
        elif args.split:
            with split_timers(SPLIT + tuple(n for n in args.split_also.split(",") if n)) as totals:
                results, seconds = timed(args.device, run)
        else:
            results, seconds = timed(args.device, run)
        outs = [r.tokens for r in results]
        rounds = sum(r.stats.rounds for r in results)
        phases = {k: round(sum(r.stats.seconds[k] for r in results), 4) for k in results[0].stats.seconds} if results else {}
        extra: dict[str, Any] = {"tau": sum(map(len, outs)) / max(rounds, 1), "phases": phases,
                                 "drafts_per_round": sum(r.stats.tree_nodes for r in results) / max(rounds, 1)}  # verified drafts
        if graphs_on:
            after = captured()
            extra["graph_captures"], extra["capture_seconds"] = after[0] - before[0], round(after[1] - before[1], 3)
            extra["tokens_per_s_steady"] = sum(map(len, outs)) / (seconds - extra["capture_seconds"])
            extra["capture_log"] = [[name, key, round(t, 4)] for name, key, t in GraphSet.log or []]
            if extra["capture_log"]:
                print(f"{variant} captured in the timed run: " + "; ".join(f"{n} {k} {t * 1e3:.0f} ms" for n, k, t in extra["capture_log"]),
                      flush=True)
        GraphSet.log = None
        if args.profile or args.trace:
            extra["profiled"] = True
        if args.split:
            extra["split"], extra["host_split"] = True, {k: [c, t] for k, (c, t, _) in totals.items()}  # unrounded: a few µs must not read 0
            extra["host_split_slowest"] = {k: slowest for k, (c, _, slowest) in totals.items() if c}  # one call's seconds
            per = {k: 1e6 * t / max(rounds, 1) for k, (c, t, _) in totals.items() if c}
            print(f"{variant} host split, µs per sequence-round (inclusive): "
                  + " ".join(f"{k.split('.')[-1]} {v:.0f}" for k, v in per.items()), flush=True)
            lumps = [f"{k.split('.')[-1]} {1e3 * m:.1f} of {1e3 * t:.1f} ms" for k, (c, t, m) in totals.items() if c > 1 and m > 0.2 * t]
            if lumps:  # one call holding a fifth of a function's time or more: a one-off (a compile, an allocation), not its steady cost
                print(f"{variant} host split, one call a large share of the total: " + ", ".join(lumps), flush=True)
        return outs, seconds, extra

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def record(variant: str, batch: int, outs: list[list[int]], seconds: float, reference: list[list[int]],
               over: tuple[str, str] | None = None, **extra: Any) -> None:
        """One row, appended at once (a run cut off by a timeout keeps its finished variants);
        over = (field, variant): this row's tokens/s over that earlier row's, e.g. ("x_plain", "plain@8")."""
        tokens = sum(map(len, outs))
        same = [o == r for o, r in zip(outs, reference)]
        row = dict(kind="batched", variant=f"{variant}@{batch}", engine=variant, batch_size=batch, prompts=len(outs),
                   max_new_tokens=args.new, tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds,
                   identical=sum(same) / len(same) if same else None, **extra, **stamp)
        if len(outs) == len(ids) and wide:  # every prompt against the first full-width plain run's output
            to, ref = wide[0]
            row["identical_all"], row["identical_all_to"] = sum(o == r for o, r in zip(outs, ref)) / len(outs), to
        base = next((r for r in reversed(rows) if over and r["variant"] == over[1]), None)  # this pass's
        if base is not None:
            row[over[0]] = row["tokens_per_s"] / base["tokens_per_s"]
        rows.append(row)
        append_row(out, row)
        same_txt = "-" if row["identical"] is None else f"{row['identical']:.2f}"
        print(f"{row['variant']:>10}  {row['tokens_per_s']:9.1f} tok/s  identical {same_txt}"
              + (f"  tau {extra['tau']:.2f}" if "tau" in extra else "")
              + ("  phases " + " ".join(f"{k} {v:.2f}s" for k, v in extra["phases"].items()) if extra.get("phases") else "")
              + (f"  captures {extra['graph_captures']} ({extra['capture_seconds']:.2f}s)" if "graph_captures" in extra else ""),
              flush=True)

    hf_sizes = [] if args.no_hf else [int(b) for b in (args.hf_batch_sizes or args.batch_sizes).split(",")]
    if hf_sizes:
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(args.target, dtype=dtype).to(args.device).eval()
        eos = set(pipe.target.info.eos_token_ids)
        tok = pipe.target.tokenizer
        pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else min(eos)
        hf_generate(model, ids[:2], 2, 4, pad, eos, args.device)  # warm-up

    modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.overlap]
    builds = {"off": ("host",), "on": ("graph",), "both": ("graph", "host"), "auto": ("auto",), "triton": ("triton",),
              "all": ("graph", "triton", "host")}[args.build_on_device]
    reference = ours("plain@1", 1, False, ids[: args.b1_prompts])[0] if args.b1_prompts else []
    wide: list[tuple[str, list[list[int]]]] = []  # (variant, outputs) of the first plain run over every prompt: identical_all's reference
    for b in sizes:  # per batch size: transformers, our plain, our speculative
        prompts = ids[: args.b1_prompts] if b == 1 else ids
        if b in hf_sizes:
            outs, s = timed(args.device, lambda p=prompts, b=b: hf_generate(model, p, b, args.new, pad, eos, args.device))
            record("hf", b, outs, s, reference)
        for rep in range(1, args.repeats + 1):  # passes: every variant of ours once each
            for ov in modes if b > 1 else (False,):  # overlap needs two halves
                tag = "+ov" if ov else ""
                outs, s, extra = ours(f"plain{tag}@{b}", b, False, prompts, overlap=ov)
                if b > 1 and not wide:
                    wide.append((f"plain{tag}@{b}", outs))
                for speculative_only in ("tau", "drafts_per_round"):
                    extra.pop(speculative_only)
                record(f"plain{tag}", b, outs, s, reference, over=("x_hf", f"hf@{b}"), **extra, overlap=ov, repeat=rep)
                for cap, budget in ((c, n) for c in caps for n in budgets):
                    if cap is not None and not 2 * b <= cap < b * (budget + 1):
                        why = "leaves no draft (each sequence verifies its root)" if cap < 2 * b else "caps nothing (= spec)"
                        print(f"spec-r{cap}@{b} skipped: {cap} rows at batch {b}, budget {budget} {why}")
                        continue
                    for build in builds:
                        engine = (("spec" if cap is None else f"spec-r{cap}") + (f"-b{budget}" if len(budgets) > 1 else "")
                                  + {"graph": "", "triton": "-triton", "host": "-host", "auto": "-auto"}[build] + tag)
                        outs, s, extra = ours(f"{engine}@{b}", b, True, prompts, cap, overlap=ov, build=build, budget=budget)
                        record(engine, b, outs, s, reference, over=("x_plain", f"plain{tag}@{b}"), **extra, drafter=args.drafter,
                               drafter_options=json.loads(args.drafter_options), budget=budget, max_verify_rows=cap, overlap=ov,
                               build_on_device=grown(build), device_build=build, repeat=rep)
    for b in sizes:
        print(summary(rows, b))
    print(f"{len(rows)} rows appended to {out}")
    if args.plot:
        from jetspec.bench.plots import write_throughput_plot

        print(f"plot: {write_throughput_plot(medians(rows), Path(args.plot), 'batched throughput')}")


if __name__ == "__main__":
    main()
