"""`python -m bench.tree_build`: the build phase's host cost per proposal kind, one row per
(proposal, budget) with the tree's size, the command, machine and date."""

import json

from bench.tree_build import main

PROPOSALS = ("ngram", "head", "merged", "head-calibrated", "merged-calibrated")


def test_one_row_per_proposal_and_budget_with_full_trees(tmp_path):
    out = tmp_path / "rows.jsonl"
    main(["--budgets", "8,16", "--reps", "3", "--label", "t", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["proposal"], r["budget"]) for r in rows] == [(p, b) for b in (8, 16) for p in PROPOSALS]
    for r in rows:
        assert {"date", "machine", "command", "python", "torch", "dtype", "top_k"} <= set(r) and r["label"] == "t" and r["us_per_build"] > 0
        assert r["nodes"] == r["budget"] + 1 or r["proposal"] == "ngram"  # the head offers more than any budget
        assert 1 < r["nodes"] <= r["budget"] + 1
