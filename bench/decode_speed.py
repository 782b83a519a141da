"""Decode speed of SmolLM2 on one GPU: our engine vs `transformers`, same prompts, same run.

    python -m bench.decode_speed --target PATH [--prompts 8] [--new 256] --out bench/results/decode_speed.jsonl

Variants (each on the same chat-templated prompts, greedy, bf16):
    hf-generate       transformers `generate()` (eager Python loop, its default SDPA attention)
    ours-eager        our decoder, reference attention, dense KV, no CUDA graphs
    ours-graphs       our decoder, Triton attention, paged KV, CUDA graphs
    ngram@B           speculative (n-gram, best-first, budget B) on the ours-graphs engine
    <head>@B          speculative with a trained head checkpoint given by --head NAME=DIR

Every speculative output is compared token for token with ours-graphs plain decoding (the
baseline); tokens/s counts generated tokens over the wall time of the whole generate call after a
warm-up, with the GPU synchronised. Prints a table; appends one JSON row per variant.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

import jetspec
from jetspec.bench.datasets import prompts_dir, read_jsonl

SETS = (("math500.jsonl", "problem"), ("gsm8k_test.jsonl", "question"), ("humaneval.jsonl.gz", "prompt"))


def prompts(n: int) -> list[str]:
    """The first prompts of MATH-500, GSM8K test and HumanEval, in turn."""
    folder = prompts_dir()
    columns = [[r[field] for r in read_jsonl(folder / file)] for file, field in SETS]
    return [columns[i % 3][i // 3] for i in range(n)]


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    r = fn()
    torch.cuda.synchronize()
    return r, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--budgets", default="16,64")
    ap.add_argument("--head", action="append", default=[], help="NAME=CHECKPOINT_DIR of a trained head drafter")
    ap.add_argument("--out", default="bench/results/decode_speed.jsonl")
    args = ap.parse_args()
    texts = prompts(args.prompts)
    base = dict(path=args.target, dtype="bfloat16", device="cuda")
    rows = []
    stamp = dict(machine=torch.cuda.get_device_name(), date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 command="python " + " ".join(shlex.quote(a) for a in sys.argv), torch=torch.__version__)

    def engine(graphs: bool, attention: str, kv: str, drafter="ngram", budget=0, **drafter_opts):
        return (jetspec.builder().target("decoder", cuda_graphs=graphs, **base).attention(attention).kv_cache(kv)
                .drafter(drafter, **drafter_opts).generation(budget=budget, max_new_tokens=args.new).build())

    # --- transformers generate()
    from transformers import AutoModelForCausalLM

    plain = engine(True, "triton", "paged")
    ids = [plain.encode(t) for t in texts]
    hf = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.bfloat16).cuda().eval()

    def hf_run(p):
        x = torch.tensor([p], device="cuda")
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new, do_sample=False, min_new_tokens=args.new)
        return out[0, len(p):].tolist()

    def measure(name, run, reference=None, extra=None):
        run(ids[0][:16])  # warm-up (compiles, captures graphs)
        total_tokens, total_s, identical, outs, taus = 0, 0.0, 0, [], []
        for i, p in enumerate(ids):
            r, s = timed(lambda: run(p))
            toks = r if isinstance(r, list) else r.tokens
            if not isinstance(r, list):
                taus.append(r.stats.tau)
            outs.append(toks)
            total_tokens += len(toks)
            total_s += s
            identical += reference is None or toks == reference[i]
        row = dict(variant=name, tokens=total_tokens, seconds=total_s, tokens_per_s=total_tokens / total_s,
                   identical=identical / len(ids), tau=sum(taus) / len(taus) if taus else None, prompts=len(ids),
                   max_new_tokens=args.new, **(extra or {}), **stamp)
        rows.append(row)
        print(f"{name:>14}  {row['tokens_per_s']:8.1f} tok/s  tau {row['tau'] or 1:5.2f}  identical {row['identical']:.2f}", flush=True)
        return outs

    hf_out = measure("hf-generate", hf_run)
    del hf
    eager = engine(False, "torch", "dense")
    eager_out = measure("ours-eager", lambda p: eager.generate_plain(p, max_new_tokens=args.new, stop_token_ids=[]), hf_out)
    del eager
    graph_out = measure("ours-graphs", lambda p: plain.generate_plain(p), eager_out)
    for b in [int(x) for x in args.budgets.split(",")]:
        spec = engine(True, "triton", "paged", "ngram", b)
        measure(f"ngram@{b}", lambda p: spec.generate(p), graph_out, dict(drafter="ngram", budget=b))
        for h in args.head:
            name, ckpt = h.split("=", 1)
            spec = engine(True, "triton", "paged", name, b, checkpoint=ckpt)
            measure(f"{name}@{b}", lambda p: spec.generate(p), graph_out, dict(drafter=name, budget=b))
    by = {r["variant"]: r["tokens_per_s"] for r in rows}
    for r in rows:
        r["x_hf_generate"] = r["tokens_per_s"] / by["hf-generate"]
        r["x_ours_graphs"] = r["tokens_per_s"] / by["ours-graphs"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"ours-graphs / hf-generate = {by['ours-graphs'] / by['hf-generate']:.2f}x (goal >= 5x)")
    best = max((r for r in rows if r.get("budget")), key=lambda r: r["tokens_per_s"], default=None)
    if best:
        print(f"best speculative {best['variant']} / ours-graphs = {best['tokens_per_s'] / by['ours-graphs']:.2f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
