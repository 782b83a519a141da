"""bench/tau_table.py: the τ table of issue 4 from a results file's summary and spec rows."""

from bench.tau_table import tau_table


def summary(ds, pipeline, budget, tau, prompts=2, faith=None):
    return {"kind": "summary", "kind_of": "spec", "dataset": ds, "pipeline": f"{pipeline}@{budget}",
            "budget": budget, "tau": tau, "prompts": prompts, "faithfulness": faith}


def spec(ds, pipeline, budget, gap, rounds):
    return {"kind": "spec", "dataset": ds, "pipeline": f"{pipeline}@{budget}", "budget": budget,
            "faithfulness": {"rounds": rounds, "faithful": 0.5, "mean_gap_nats": gap}}


def test_one_line_per_dataset_and_drafter_with_tau_by_budget_and_round_weighted_gap():
    rows = [
        {"kind": "summary", "kind_of": "plain", "dataset": "gsm8k", "pipeline": "plain", "budget": 0},
        summary("gsm8k", "jetspec", 16, 2.0), summary("gsm8k", "jetspec", 64, 3.0, faith=0.25),
        spec("gsm8k", "jetspec", 64, gap=10.0, rounds=1), spec("gsm8k", "jetspec", 64, gap=40.0, rounds=2),
        spec("gsm8k", "jetspec", 16, gap=99.0, rounds=8),  # another budget: not in the gap column
        summary("gsm8k", "ngram", 16, 1.5, prompts=2), summary("gsm8k", "ngram", 64, 1.75, prompts=1),
    ]
    lines = tau_table(rows, faith_budget=64).splitlines()
    assert lines[0] == "| dataset | drafter | prompts | τ@16 | τ@64 | faithful@64 | mean gap@64 (nats) |"
    assert lines[2] == "| gsm8k | jetspec | 2 | 2.00 | 3.00 | 25% | 30.0 |"  # (10·1 + 40·2) / 3
    assert lines[3] == "| gsm8k | ngram | 1/2 | 1.50 | 1.75 | – | – |"  # a run cut short: prompts differ
    assert len(lines) == 4  # plain has no line


def test_drafters_come_in_one_order_and_an_old_file_is_shown_in_todays_names():
    """Issue 17: jetspec = head + lookup, jetspec-head = the head alone; files before it called the
    head alone `jetspec` and the default `jetspec-lookup`."""
    old = [summary("gsm8k", name, 64, tau) for name, tau in
           [("ngram", 1.5), ("jetspec", 2.0), ("eagle", 2.5), ("jetspec-lookup", 3.0), ("jetspec-rescore", 2.2)]]  # fmt: skip
    lines = tau_table(old).splitlines()[2:]
    assert [line.split(" | ")[1] for line in lines] == ["jetspec", "jetspec-head", "jetspec-rescore", "eagle", "ngram"]
    assert lines[0].split(" | ")[3] == "3.00" and lines[1].split(" | ")[3] == "2.00"  # the default, the head alone
    new = [summary("gsm8k", "jetspec", 64, 3.0), summary("gsm8k", "jetspec-head", 64, 2.0)]
    assert [line.split(" | ")[1] for line in tau_table(new).splitlines()[2:]] == ["jetspec", "jetspec-head"]


def test_two_runs_make_one_table_each_giving_the_drafters_it_is_named_for(tmp_path):
    """The fair table of issue 17: the causal head's rows from one run, retrained baselines' from another;
    a line in both files is an error unless each file is given the drafters to take from it."""
    import json

    import pytest

    from bench.tau_table import merged

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    a = write("a.jsonl", [summary("gsm8k", "jetspec-head", 64, 2.0), summary("gsm8k", "eagle", 64, 9.0)])
    b = write("b.jsonl", [summary("gsm8k", "eagle", 64, 3.0)])
    lines = tau_table(merged([f"{a}:jetspec-head", b])).splitlines()[2:]
    assert [(line.split(" | ")[1], line.split(" | ")[3]) for line in lines] == [("jetspec-head", "2.00"), ("eagle", "3.00")]
    with pytest.raises(SystemExit, match=r"eagle on gsm8k is in both .*a\.jsonl and .*b\.jsonl"):
        merged([a, b])
