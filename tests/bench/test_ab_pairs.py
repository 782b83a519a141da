"""`python -m bench.ab_pairs`: an alternating A/B's runs read in adjacent pairs — each variant's
after / before per pair, and best spec over best plain within each run, after over before."""

import json

import pytest

from bench.ab_pairs import main, runs, table


def rows(*tok_s: dict[str, float]) -> list[dict]:
    """One side's rows as `batched_throughput` appends them: run after run, its variants in turn."""
    return [{"kind": "batched", "variant": v, "engine": v.split("@")[0], "tokens_per_s": t} for run in tok_s for v, t in run.items()]


def test_run_r_of_a_side_is_each_variants_rth_row():
    side = rows({"plain@8": 100, "spec@8": 150}, {"plain@8": 90, "spec@8": 120})
    side.insert(1, {"kind": "batched", "variant": "hf@8", "engine": "hf", "tokens_per_s": 5})  # transformers: not ours
    assert runs(side) == [{"plain@8": 100, "spec@8": 150}, {"plain@8": 90, "spec@8": 120}]


def test_pairs_give_paired_and_in_run_ratios_that_a_drift_of_the_host_does_not_move():
    # the host runs pair 2 at half speed; the after tree's spec is 1.2x the before tree's in both pairs
    before = runs(rows({"plain@8": 100, "spec@8": 150}, {"plain@8": 50, "spec@8": 75}))
    after = runs(rows({"plain@8": 100, "spec@8": 180}, {"plain@8": 50, "spec@8": 90}))
    lines = table(before, after)
    assert "paired 1.20 1.20  median 1.20x" in next(line for line in lines if "spec@8" in line)
    assert "paired 1.00 1.00  median 1.00x" in next(line for line in lines if "plain@8" in line)
    assert lines[-1].endswith("before 1.50 1.50 (median 1.50x), after 1.80 1.80 (median 1.80x); after / before 1.20x")


def test_a_side_without_runs_is_an_error_not_a_table():
    with pytest.raises(ValueError, match="no pair of runs"):
        table([], runs(rows({"plain@8": 1.0})))


def test_the_command_reads_labelled_rows_and_refuses_a_missing_file_in_one_line(tmp_path, capsys):
    both = [r | {"label": "b"} for r in rows({"plain@8": 100, "spec@8": 150})] + [
        r | {"label": "a"} for r in rows({"plain@8": 100, "spec@8": 165})]
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in both))
    assert main([str(f), str(f), "--label-before", "b", "--label-after", "a"]) == 0
    assert "median 1.10x" in capsys.readouterr().out
    assert main([str(tmp_path / "none.jsonl"), str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ab_pairs: ") and "none.jsonl" in err and len(err.splitlines()) == 1
