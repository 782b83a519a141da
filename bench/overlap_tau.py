"""τ of one reused pipeline with its batch's halves overlapped or not (issue 20): per sequence,
`overlap` changes no call, so each prompt's rounds — and τ — must be the same in both runs.

    python -m bench.overlap_tau --target ~/.cache/jetspec/models/SmolLM2-135M-Instruct [--prompts 8] [--new 48] \
        [--batch-size 4] [--drafter jetspec] [--device cpu] [--label L] [--out bench/results/overlap_tau.jsonl]

One pipeline (the given drafter, paged KV, budget 16, `accept_on_device = "always"`: the drafters
draft ahead, pooled) runs the first `--prompts` GSM8K-test questions twice, overlap off then on, as
`bench/batched_throughput.py` runs its variants; prints τ (tokens per sequence-round) and each
prompt's rounds per run, and whether the outputs and rounds agree.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import jetspec
from jetspec.bench.datasets import prompts_dir, read_jsonl
from jetspec.bench.rows import append_row, run_row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="a Hugging Face model folder")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--drafter", default="jetspec")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    texts = [r["question"] for r in read_jsonl(prompts_dir() / "gsm8k_test.jsonl")][: args.prompts]
    pipe = (jetspec.builder().target("decoder", path=args.target, device=args.device, dtype=args.dtype, cuda_graphs=False)
            .attention("torch").kv_cache("paged").drafter(args.drafter)
            .generation(budget=16, max_new_tokens=args.new, accept_on_device="always").build())
    stamp = run_row(shlex.join(["python", "-m", "bench.overlap_tau", *(sys.argv[1:] if argv is None else argv)]), {})
    runs = {}
    for overlap in (False, True):
        pipe.config.generation = pipe.config.generation.model_copy(update={"overlap": overlap})
        res = pipe.generate_many(texts, batch_size=args.batch_size)
        rounds = [r.stats.rounds for r in res]
        tau = sum(len(r.tokens) for r in res) / sum(rounds)
        runs[overlap] = ([r.tokens for r in res], rounds)
        print(f"overlap {'on ' if overlap else 'off'}  tau {tau:.3f}  rounds {rounds}", flush=True)
        if args.out:
            append_row(args.out, {"kind": "overlap_tau", "label": args.label, "overlap": overlap, "tau": tau, "rounds": rounds, "drafter": args.drafter,
                                  "batch_size": args.batch_size, "prompts": args.prompts, "new": args.new, "dtype": args.dtype,
                                  **{k: stamp[k] for k in ("date", "machine", "command", "torch")}})
    same = runs[False] == runs[True]
    print("outputs and rounds the same" if same else "DIFFER: overlap changed a sequence's rounds")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
