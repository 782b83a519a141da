"""What a parallel head's tree accepts on held-out answers, for ways of scoring its candidates — an
offline replay of greedy verification (CPU or GPU; no pipeline, no timing).

    python -m bench.head_tree_probe --head HEAD_DIR --corpus CORPUS_DIR [--rows 256] [--out FILE.jsonl]

Rows: the corpus's held-out greedy answers (`rows.split_rows`, never trained on); the even ones fit a
calibration (`calibration.py`), the odd ones are replayed. At anchor a the head drafts (top-k per
depth, `calibration_fit.head_walks`); the best-first scorer builds the tree of `budget` nodes from
  raw-k8 / raw-k16:  DepthMarginals (log q), 8 / 16 candidates per depth (the old / new default)
  calibrated-k16:    CalibratedMarginals of the even rows' calibration, 16 candidates
and greedy verification accepts the longest prefix of the answer's next tokens in the tree (the
answer is the target's own greedy text, cut where it is not). Rounds as in decoding: the next round's
anchor is a + accepted + 1, so τ = mean(accepted + 1) over rounds, as `jetspec bench` reports it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

from jetspec.core.proposal import DepthMarginals
from jetspec.drafters.head.calibration import HeadCalibration
from jetspec.drafters.head.calibration_fit import head_walks
from jetspec.drafters.head.checkpoint import load_head
from jetspec.drafters.head.corpus import load_corpus
from jetspec.drafters.head.frozen_target import load_hf_target
from jetspec.drafters.head.rows import split_rows
from jetspec.scorers.best_first import BestFirstScorer

BUDGETS = (16, 64, 256)
TOP_K = 16


def accepted(tree, truth: list[int]) -> int:
    """Greedy verification: the depth of the deepest tree node whose path is a prefix of `truth`."""
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    on_path = [True] + [False] * (len(tokens) - 1)  # node i's path is truth[:depth(i)]
    depth = [0] * len(tokens)
    best = 0
    for i in range(1, len(tokens)):
        p = parents[i]
        depth[i] = depth[p] + 1
        on_path[i] = on_path[p] and depth[i] <= len(truth) and tokens[i] == truth[depth[i] - 1]
        best = max(best, depth[i]) if on_path[i] else best
    return best


def replay(walks: list[tuple], proposal, budget: int) -> tuple[int, int]:
    """(rounds, accepted + 1 summed) over one answer's anchors in decoding order."""
    scorer, a, rounds, total = BestFirstScorer(), 0, 0, 0
    while a < len(walks):
        logp, tokens, truth = walks[a]
        k = accepted(scorer.build(proposal(logp, tokens), 0, budget), truth)
        rounds, total, a = rounds + 1, total + k + 1, a + k + 1
    return rounds, total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--head", default="jetspec/assets/heads/SmolLM2-135M-Instruct/causal")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--target", default="default")
    ap.add_argument("--rows", type=int, default=256, help="held-out answers (half fit, half replayed)")
    ap.add_argument("--out", default="bench/results/head_tree_probe.jsonl")
    args = ap.parse_args(argv)
    target = args.target
    if target == "default":
        from jetspec.targets.default_model import default_model_path

        target = str(default_model_path())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_hf_target(target, device, torch.float32)
    head = load_head(args.head).to(device).eval()
    data = load_corpus(args.corpus)
    held = split_rows(data, 1024, int(head.config.extra.get("training", {}).get("eval_rows") or 256))[1][: args.rows]
    per_row = {s: list(head_walks(head, model, data, [s], TOP_K)) for s in held}
    fit_rows, test_rows = held[0::2], held[1::2]
    cal = HeadCalibration.fit((w for s in fit_rows for w in per_row[s]), head.config.block_size - 1)
    variants = {
        "raw-k8": lambda lp, tk: DepthMarginals(torch.tensor(tk)[:, :8], torch.tensor(lp)[:, :8]),
        "raw-k16": lambda lp, tk: DepthMarginals(torch.tensor(tk), torch.tensor(lp)),
        "calibrated-k16": lambda lp, tk: cal.marginals(torch.tensor(tk), torch.tensor(lp)),
    }
    command = "python -m bench.head_tree_probe " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(args.out, "a") as f:
        for name, proposal in variants.items():
            for budget in BUDGETS:
                rounds = total = 0
                for s in test_rows:
                    r, t = replay(per_row[s], proposal, budget)
                    rounds, total = rounds + r, total + t
                row = {"variant": name, "budget": budget, "tau": round(total / rounds, 4), "rounds": rounds,
                       "fit_rows": len(fit_rows), "replayed_rows": len(test_rows), "head": args.head,
                       "steps": head.config.extra.get("training", {}).get("steps"), "command": command, "date": stamp,
                       "machine": f"{platform.node()} {platform.processor() or platform.machine()}", "device": str(device),
                       "torch": torch.__version__}  # fmt: skip
                f.write(json.dumps(row) + "\n")
                print(f"{name:15s} τ@{budget:<4d} {row['tau']:.3f}  ({rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
