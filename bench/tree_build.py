"""Host cost of building one round's tree (the `build` phase), on the CPU: the best-first scorer over
each kind of proposal a drafter hands it, read as a round reads it (`core/checks.reading`: a
built-in kind as it is, any other through `Checked`).

    python -m bench.tree_build [--budgets 16,32,64] [--reps 2000] [--label after] [--out bench/results/tree_build.jsonl]

Proposals (fixed by a seed, the same in every run):
* `ngram`  - prompt lookup over a 480-token text whose last 80 tokens repeat an earlier stretch
             (`NgramDrafter.propose`: a trie of observed continuations, proposed afresh for each build)
* `head`   - a parallel head's per-depth top-k (`--top-k`, the drafter's default 16) over a 49,152-token
             vocabulary at 7 depths (block 8, the shipped SmolLM2 head's shape): `DepthMarginals`
* `merged` - both in one tree, as the `jetspec` drafter proposes without a calibration (`MergedProposal`)
* `head-calibrated`, `merged-calibrated` - the same scored by the shipped head's measured acceptance
             rates (`CalibratedMarginals`), as the default `jetspec` drafter proposes
µs per build = least over 5 timings of `--reps` builds each (proposal construction included, as a
round pays it); one JSON row per (proposal, budget). A CPU figure: the same Python runs on a GPU
machine's host, where it is the `build` phase of the bench rows.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from jetspec.bench.rows import append_row, run_row
from jetspec.core.checks import reading
from jetspec.core.interfaces import DecodeState
from jetspec.core.proposal import DepthMarginals, MergedProposal
from jetspec.drafters.head.calibration import HeadCalibration
from jetspec.drafters.head.options import HeadOptions
from jetspec.drafters.ngram import NgramDrafter
from jetspec.scorers.best_first import BestFirstScorer

VOCAB, DEPTHS = 49152, 7
RATES = Path(__file__).resolve().parents[1] / "jetspec/assets/heads/SmolLM2-135M-Instruct/causal/head_rates.json"


def proposals(budget: int, top_k: int) -> tuple[int, dict]:
    """-> (root token, name -> a function making that proposal afresh)."""
    g = torch.Generator().manual_seed(0)
    top = torch.log_softmax(torch.randn(DEPTHS, VOCAB, generator=g), dim=-1).topk(top_k, dim=-1)  # [D, K] each
    text = torch.randint(0, 300, (400,), generator=g).tolist()
    text += text[100:180]  # [480]: the end repeats an earlier stretch, so prompt lookup finds continuations
    lookup = NgramDrafter()
    state = DecodeState(tokens=list(text), prompt_len=100)
    lookup.reset(state)
    lookup.propose(state, budget)  # indexes the text once; later calls only look the suffix up

    def copied():  # made afresh, as a round makes it (a trie keeps the rows it has sorted)
        return lookup.propose(state, budget)

    rates = HeadCalibration.load(RATES)
    return text[-1], {
        "ngram": copied,
        "head": lambda: DepthMarginals(top.indices, top.values),
        "merged": lambda: MergedProposal(DepthMarginals(top.indices, top.values), copied()),
        "head-calibrated": lambda: rates.marginals(top.indices, top.values),
        "merged-calibrated": lambda: MergedProposal(rates.marginals(top.indices, top.values), copied()),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="16,32,64")
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--top-k", type=int, default=HeadOptions.model_fields["top_k"].default, help="the head's candidates per depth")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    stamp = run_row("python -m bench.tree_build " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)), {})
    scorer = BestFirstScorer()
    for budget in [int(b) for b in args.budgets.split(",")]:
        root, made = proposals(budget, args.top_k)
        for name, make in made.items():
            def build():
                return scorer.build(reading(make(), "drafter", VOCAB), root, budget)

            size = build().size
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(args.reps):
                    build()
                best = min(best, (time.perf_counter() - t0) / args.reps)
            row = {"kind": "tree_build", "label": args.label, "proposal": name, "budget": budget, "nodes": size,
                   "top_k": args.top_k, "dtype": "float32",  # the head's log-probs (`DepthMarginals` reads them as float32)
                   "us_per_build": 1e6 * best, **{k: stamp[k] for k in ("date", "machine", "command", "python", "torch")}}
            print(f"{name:>7} @{budget:<3} {size:3d} nodes  {row['us_per_build']:7.1f} us per build", flush=True)
            if args.out:
                append_row(args.out, row)


if __name__ == "__main__":
    main()
