"""`jetspec bench` end to end, as on a fresh clone: a tiny random model saved as a Hugging Face
folder, built-in and user prompt sets, an n-gram budget sweep, the `transformers` peers; then
rows, summaries, RESULTS.md, plots, and resuming a run that was killed."""

import json

import pytest

from jetspec.bench.rows import read_rows
from jetspec.cli import main
from support.hf_folder import save_tiny_hf_folder

MT_BENCH = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    save_tiny_hf_folder(root / "model", seed=0)
    save_tiny_hf_folder(root / "draft", seed=1)  # same vocabulary: assisted generation runs
    prompts = root / "prompts"
    prompts.mkdir()
    rows = [{"question_id": i, "category": c, "turns": [f"{c} question {i}: say {i} {i} {i} again", "later"]}
            for i, c in enumerate(MT_BENCH * 2 + ["translation"] * 3)]
    (prompts / "spec_bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "mine.jsonl").write_text("".join(json.dumps({"text": f"a b a b {i} a b"}) + "\n" for i in range(4)))
    (root / "bench.toml").write_text(f"""
name = "tiny"
target = {{ name = "transformers", path = "{root / 'model'}" }}
datasets = ["spec_bench/mt_bench", {{ name = "mine", path = "{root / 'mine.jsonl'}", field = "text", count = 2 }}]
count = 2
max_new_tokens = 8
warmup_tokens = 2
prompts_dir = "{prompts}"
output = "{root / 'out'}"
[[pipelines]]
name = "ngram"
drafter = {{ name = "ngram", n_max = 3 }}
budgets = [4, 8]
[peers]
include = ["generate", "prompt_lookup", "assisted"]
assistant_path = "{root / 'draft'}"
""")
    return root


def prompt_rows(path):
    return [r for r in read_rows(path) if r["kind"] in ("plain", "spec", "peer")]


def test_a_bench_run_writes_rows_summaries_markdown_and_plots(bench_dir):
    assert main(["bench", "--config", str(bench_dir / "bench.toml"), "--no-progress"]) == 0
    out = bench_dir / "out"
    rows = prompt_rows(out / "results" / "tiny.jsonl")
    names = ["plain", "ngram@4", "ngram@8", "hf:generate", "hf:prompt_lookup", "hf:assisted"]
    # 2 MT-Bench prompts + 2 of mine, each through plain decoding, both budgets and three peers
    assert sorted((r["dataset"], r["pipeline"]) for r in rows) == sorted(
        (d, n) for d, k in (("spec_bench/mt_bench", 2), ("mine", 2)) for n in names for _ in range(k)
    )
    assert all(not r.get("error") for r in rows)
    # greedy speculation and HF greedy decoding reproduce our plain decoding token for token (fp32)
    assert all(r["identical"] and r["mismatch"] is None for r in rows)
    for r in rows:
        if r["kind"] == "spec":
            assert r["tau"] >= 1 and r["speedup"] > 0 and r["tokens_per_s"] > 0 and set(r["seconds"]) >= {"draft", "verify"}

    summaries = [r for r in read_rows(out / "results" / "tiny.jsonl") if r["kind"] == "summary"]
    assert len(summaries) == 2 * len(names)
    for s in summaries:
        for field in ("dataset", "target", "drafter", "scorer", "budget", "temperature", "tau", "tokens_per_s",
                      "speedup", "identical", "machine", "date", "command"):
            assert field in s, field
        assert s["identical"] == 1.0 and s["command"] == f"jetspec bench --config {bench_dir / 'bench.toml'} --no-progress"
    sweep = {s["budget"]: s for s in summaries if s["dataset"] == "mine" and s["drafter"] == "ngram"}
    assert set(sweep) == {4, 8} and all(s["tau"] >= 1 for s in sweep.values())

    md = (out / "RESULTS.md").read_text()
    assert md.count("<!-- bench:tiny -->") == 1 and "* command: `jetspec bench --config" in md
    table = [line for line in md.splitlines() if line.startswith("| spec_bench/mt_bench |") or line.startswith("| mine |")]
    assert len(table) == len(summaries)
    for png in ("tiny_tau_vs_budget.png", "tiny_speedup.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_redoes_only_what_a_killed_run_lost(bench_dir, capsys):
    results = bench_dir / "out" / "results" / "tiny.jsonl"
    if not results.exists():
        test_a_bench_run_writes_rows_summaries_markdown_and_plots(bench_dir)
    # without --resume an existing run is not silently overwritten
    assert main(["bench", "--config", str(bench_dir / "bench.toml"), "--no-progress"]) == 2
    assert "pass --resume" in capsys.readouterr().err

    lines = results.read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["kind"] != "summary"]
    lost = json.loads(kept[-1])  # a killed run: the last row half written, no summaries yet
    results.write_text("\n".join(kept[:-1]) + "\n" + kept[-1][: len(kept[-1]) // 2])
    before = len(prompt_rows(results))

    assert main(["bench", "--config", str(bench_dir / "bench.toml"), "--no-progress", "--resume"]) == 0
    after = prompt_rows(results)
    redone = after[before:]
    # the lost row's prompt is decoded again: its plain baseline (same run) and the lost row
    assert [(r["pipeline"], r["prompt_id"]) for r in redone] == [("plain", lost["prompt_id"]), (lost["pipeline"], lost["prompt_id"])]
    summaries = [r for r in read_rows(results) if r["kind"] == "summary"]
    assert len(summaries) == 12 and all(s["prompts"] == 2 for s in summaries)
    # the torn line was cut off, not glued to the next row: the resumed run's `run` row is there
    runs = {r["run"] for r in read_rows(results) if r["kind"] == "run"}
    assert {r["run"] for r in after} <= runs and all(json.loads(line) for line in results.read_text().splitlines())

    assert main(["bench", "--config", str(bench_dir / "bench.toml"), "--no-progress", "--resume"]) == 0
    assert len(prompt_rows(results)) == len(after)  # nothing left to do


def test_shards_run_side_by_side_and_resume_sums_them_up(bench_dir):
    """`--shard I/N` takes every N-th prompt from the I-th; the shards' files concatenated and
    summed up with --summarize-only (nothing decoded) give one summary naming every shard's command."""
    config = bench_dir / "bench.toml"
    shards = [bench_dir / f"shard{i}" for i in range(2)]
    for i, out in enumerate(shards):
        assert main(["bench", "--config", str(config), "--no-progress", "--shard", f"{i}/2", "--output", str(out)]) == 0
    got = [{(r["dataset"], r["prompt_id"]) for r in prompt_rows(out / "results" / "tiny.jsonl")} for out in shards]
    assert len(got[0]) == len(got[1]) == 2 and not got[0] & got[1]  # 4 prompts, split 2 + 2

    merged = bench_dir / "merged"
    (merged / "results").mkdir(parents=True)
    (merged / "results" / "tiny.jsonl").write_text(
        "".join((out / "results" / "tiny.jsonl").read_text() for out in shards)
    )
    assert main(["bench", "--config", str(config), "--no-progress", "--summarize-only", "--output", str(merged)]) == 0
    rows = read_rows(merged / "results" / "tiny.jsonl")
    assert len(prompt_rows(merged / "results" / "tiny.jsonl")) == sum(len(prompt_rows(o / "results" / "tiny.jsonl")) for o in shards)
    summaries = [r for r in rows if r["kind"] == "summary"]
    assert len(summaries) == 12 and all(s["prompts"] == 2 for s in summaries)
    # each summary names the shard commands that measured its prompts, not the one that summed them
    by_shard = {i: {(r["dataset"], r["prompt_id"]) for r in prompt_rows(out / "results" / "tiny.jsonl")} for i, out in enumerate(shards)}
    for s in summaries:
        ran = [i for i, done in by_shard.items() if any(d == s["dataset"] for d, _ in done)]
        assert s["command"] == " && ".join(f"jetspec bench --config {config} --no-progress --output {shards[i]} --shard {i}/2" for i in ran)


def test_summarize_only_decodes_nothing_and_sums_up_what_is_there(bench_dir, capsys):
    part = bench_dir / "part"
    assert main(["bench", "--config", str(bench_dir / "bench.toml"), "--no-progress", "--shard", "1/2", "--output", str(part)]) == 0
    results = part / "results" / "tiny.jsonl"
    before = prompt_rows(results)
    assert main(["bench", "--config", str(bench_dir / "bench.toml"), "--no-progress", "--summarize-only", "--output", str(part)]) == 0
    assert prompt_rows(results) == before  # the other shard's prompts were not decoded
    summaries = [r for r in read_rows(results) if r["kind"] == "summary"]
    assert {s["dataset"] for s in summaries} == {r["dataset"] for r in before}
    empty = bench_dir / "empty"
    assert main(["bench", "--config", str(bench_dir / "bench.toml"), "--no-progress", "--summarize-only", "--output", str(empty)]) == 2
    assert "nothing to summarize" in capsys.readouterr().err


def test_a_bad_shard_is_one_line(bench_dir, capsys):
    assert main(["bench", "--config", str(bench_dir / "bench.toml"), "--no-progress", "--shard", "2/2"]) == 2
    assert "--shard must be I/N" in capsys.readouterr().err


def test_replay_gives_the_tau_of_the_live_run_without_speeds(bench_dir):
    """`replay = true`: the same τ and acceptance per (dataset, pipeline) as decoding for real; no speeds."""
    base = (bench_dir / "bench.toml").read_text().split("[peers]")[0]
    summaries = {}
    for mode in ("live", "replay"):
        cfg = bench_dir / f"{mode}.toml"
        cfg.write_text(base.replace('name = "tiny"', f'name = "{mode}"') + ("replay = true\n" if mode == "replay" else ""))
        # (appended after the [[pipelines]] tables would make it a pipeline field: put it first instead)
        text = cfg.read_text()
        if mode == "replay":
            cfg.write_text("replay = true\n" + text.replace("replay = true\n", ""))
        assert main(["bench", "--config", str(cfg), "--no-progress", "--output", str(bench_dir / mode)]) == 0
        rows = read_rows(bench_dir / mode / "results" / f"{mode}.jsonl")
        summaries[mode] = {(s["dataset"], s["pipeline"]): s for s in rows if s["kind"] == "summary" and s["kind_of"] == "spec"}
    assert summaries["live"].keys() == summaries["replay"].keys() and len(summaries["live"]) == 4
    for key, live in summaries["live"].items():
        rep = summaries["replay"][key]
        assert (rep["tau"], rep["acceptance_by_depth"]) == (live["tau"], live["acceptance_by_depth"]), key
        assert rep["replay"] is True and rep["speedup"] is None and rep["tokens_per_s"] is None and rep["identical"] is None
    plots = sorted(p.name for p in (bench_dir / "replay" / "plots").iterdir())
    assert plots == ["replay_tau_vs_budget.png"]  # nothing was timed: no speedup plot


def test_faithfulness_is_measured_at_the_budgets_asked_for(bench_dir):
    base = (bench_dir / "bench.toml").read_text().split("[peers]")[0]
    cfg = bench_dir / "faithful.toml"
    cfg.write_text('faithfulness = "all"\nfaithfulness_budgets = [8]\nreplay = true\n' + base.replace('name = "tiny"', 'name = "faithful"'))
    assert main(["bench", "--config", str(cfg), "--no-progress", "--output", str(bench_dir / "faithful")]) == 0
    rows = [r for r in read_rows(bench_dir / "faithful" / "results" / "faithful.jsonl") if r["kind"] == "spec"]
    assert {r["pipeline"] for r in rows} == {"ngram@4", "ngram@8"}
    assert all((r["faithfulness"] is not None) == (r["budget"] == 8) for r in rows if r["rounds"] > 1)
    assert any(r["faithfulness"] is not None for r in rows)


def test_a_bench_killed_for_real_resumes_to_a_complete_file(bench_dir):
    """SIGKILL mid-run (whatever was being written is torn), then --resume: every line whole,
    every prompt measured once more at most, the summaries complete."""
    import signal
    import subprocess
    import sys
    import time

    out = bench_dir / "killed"
    results = out / "results" / "tiny.jsonl"
    args = ["bench", "--config", str(bench_dir / "bench.toml"), "--no-progress", "--output", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "jetspec.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and (not results.is_file() or len(prompt_rows(results)) < 3):
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()  # still running: the kill lands mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not [r for r in read_rows(results) if r["kind"] == "summary"]
    assert main([*args, "--resume"]) == 0
    assert all(json.loads(line) for line in results.read_text().splitlines())
    summaries = [r for r in read_rows(results) if r["kind"] == "summary"]
    assert len(summaries) == 12 and all(s["prompts"] == 2 for s in summaries)
    runs = {r["run"] for r in read_rows(results) if r["kind"] == "run"}
    assert len(runs) == 2 and {r["run"] for r in prompt_rows(results)} <= runs


def test_seeded_sampling_is_checked_against_seeded_plain_sampling_and_rows_name_dtype_and_exactness(tmp_path):
    save_tiny_hf_folder(tmp_path / "model", seed=0)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"text": f"a b a b {i} a b"}) + "\n" for i in range(2)))
    (tmp_path / "bench.toml").write_text(f"""
name = "sampled"
target = {{ name = "transformers", path = "{tmp_path / 'model'}" }}
datasets = [{{ name = "mine", path = "{tmp_path / 'p.jsonl'}", field = "text" }}]
count = 2
max_new_tokens = 8
warmup_tokens = 0
output = "{tmp_path / 'out'}"
[[pipelines]]
name = "seeded"
drafter = {{ name = "ngram", n_max = 3 }}
verifier = {{ name = "sampling", temperature = 1.0, seed = 3 }}
budgets = [4]
[[pipelines]]
name = "unseeded"
drafter = {{ name = "ngram", n_max = 3 }}
verifier = {{ name = "sampling", temperature = 1.0 }}
budgets = [4]
""")
    assert main(["bench", "--config", str(tmp_path / "bench.toml"), "--no-progress"]) == 0
    rows = read_rows(tmp_path / "out" / "results" / "sampled.jsonl")
    spec = [r for r in rows if r["kind"] == "spec"]
    seeded = [r for r in spec if r["pipeline"].startswith("seeded")]
    assert seeded and all(isinstance(r["identical"], bool) for r in seeded)
    assert all(r["identical"] == (r["mismatch"] is None) for r in seeded)
    assert all(r["identical"] is None for r in spec if r["pipeline"].startswith("unseeded"))
    summaries = [r for r in rows if r["kind"] == "summary"]
    assert summaries and all(s["dtype"] == "float32" and s["exact"] is False for s in summaries)
