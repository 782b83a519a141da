"""`python -m bench.batched_throughput` end to end on a CPU with a tiny model: the code path the H200
step `batched` runs (ours plain and speculative at several batch sizes, transformers generate()
batched), one row per variant with the command, machine and date; ours equal batch-1 plain."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jetspec.testing.models import tiny_hf_model
from support.hf_folder import VOCAB, char_tokenizer, save_tiny_hf_folder

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_appends_one_row_per_variant_and_batch_size(tmp_path):
    model = save_tiny_hf_folder(tmp_path / "model", seed=2)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in ["a b a b", "hi hi hi", "1 2 3 1 2 3", "xyz", "ok"]))
    out = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}  # no path help
    cmd = [sys.executable, "-m", "bench.batched_throughput", "--target", str(model), "--prompts-file", str(prompts),
           "--prompts", "5", "--b1-prompts", "3", "--new", "6", "--batch-sizes", "1,4", "--budget", "4", "--max-verify-rows", "none,3,12",
           "--device", "cpu", "--dtype", "float32", "--out", str(out), "--plot", str(tmp_path / "t.png")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["hf@1", "plain@1", "spec@1", "spec-r3@1", "hf@4", "plain@4", "spec@4", "spec-r12@4"]  # as they finish
    for r in rows:
        assert {"command", "machine", "date", "tokens_per_s", "identical", "batch_size"} <= set(r) and r["attention"] == "torch"  # CPU default
        assert r["command"].startswith("python ") and "--batch-sizes 1,4" in r["command"] and r["tokens_per_s"] > 0
        assert r["prompts"] == (3 if r["batch_size"] == 1 else 5)
        assert r["warmup_new"] == 6  # each variant warmed up to the timed run's length (--new) by default
    for r in (r for r in rows if r["engine"] != "hf"):  # the engine's phases: shares of the wall time
        assert set(r["phases"]) >= {"prefill", "verify", "accept", "commit"} and 0 < sum(r["phases"].values()) <= 1.05 * r["seconds"]
        assert "graph_captures" not in r  # CPU: no packed-forward graphs
    ours = [r for r in rows if r["engine"] != "hf"]
    assert all(r["identical"] == 1.0 for r in ours)  # fp32: every prompt equals its batch-1 plain output
    assert [r["identical_all"] for r in ours if r["batch_size"] == 4] == [1.0, 1.0, 1.0]  # all 5 prompts: = plain@4's
    assert [r["max_verify_rows"] for r in ours if r["engine"] != "plain"] == [None, 3, None, 12]
    assert "spec-r12@1 skipped: 12 rows at batch 1, budget 4 caps nothing" in proc.stdout  # a cap that changes nothing,
    assert "spec-r3@4 skipped: 3 rows at batch 4, budget 4 leaves no draft" in proc.stdout  # or leaves no draft: not run
    assert all(r["identical_all_to"] == "plain@4" for r in ours if r["batch_size"] == 4)
    by = {r["variant"]: r for r in rows}
    for b in (1, 4):
        for e in ("spec", "spec-r3" if b == 1 else "spec-r12"):
            assert by[f"{e}@{b}"]["x_plain"] == by[f"{e}@{b}"]["tokens_per_s"] / by[f"plain@{b}"]["tokens_per_s"]
        assert by[f"plain@{b}"]["x_hf"] == by[f"plain@{b}"]["tokens_per_s"] / by[f"hf@{b}"]["tokens_per_s"]
    assert "spec / plain" in proc.stdout and "spec-r12 / plain" in proc.stdout and "8 rows appended" in proc.stdout
    assert not any(r["exact"] for r in rows)
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the throughput plot


def test_hf_runs_only_at_the_sizes_asked_for(tmp_path):
    """--hf-batch-sizes 4: transformers generate() at batch 4 only; plain@1 then has no x_hf. --profile:
    our variants cProfiled."""
    model = save_tiny_hf_folder(tmp_path / "model", seed=2)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in ["a b a b", "hi hi hi", "xyz"]))
    out = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "bench.batched_throughput", "--target", str(model), "--prompts-file", str(prompts),
           "--prompts", "3", "--b1-prompts", "2", "--new", "4", "--batch-sizes", "1,4", "--hf-batch-sizes", "4",
           "--budget", "4", "--warmup-new", "2", "--device", "cpu", "--dtype", "float32", "--out", str(out), "--profile", str(tmp_path / "prof")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["plain@1", "spec@1", "hf@4", "plain@4", "spec@4"]
    assert "x_hf" not in rows[0] and "x_hf" in rows[3]
    assert all(r["warmup_new"] == 2 for r in rows)  # --warmup-new: a shorter warm-up than the timed run
    # --profile: each of our variants' timed run profiled, marked so in its row
    assert all(r.get("profiled") for r in rows if r["engine"] != "hf") and "profiled" not in rows[2]
    text = (tmp_path / "prof" / "spec_4.txt").read_text()
    assert "generate_many" in text and (tmp_path / "prof" / "plain_1.pstats").stat().st_size
    assert "Ordered by: cumulative time" in text and "Ordered by: internal time" in text


def test_exact_batches_in_bf16_equal_batch_1_plain(tmp_path):
    """--exact on (the GPU default with triton; here Triton's interpreter): bf16 batches of 4 give
    every prompt its batch-1 plain output, plain and speculative."""
    model = tmp_path / "model"
    tiny_hf_model("llama", seed=3, vocab=VOCAB, hidden=64).save_pretrained(model)  # head dim 16: the triton kernels' smallest
    char_tokenizer().save_pretrained(model)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in ["a b a b", "hi hi hi", "1 2 3 1 2 3", "xyz"]))
    out = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "bench.batched_throughput", "--target", str(model), "--prompts-file", str(prompts),
           "--prompts", "4", "--b1-prompts", "4", "--new", "5", "--batch-sizes", "4", "--budget", "4", "--device", "cpu",
           "--dtype", "bfloat16", "--attention", "triton", "--exact", "on", "--no-hf", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["plain@4", "spec@4"]
    assert all(r["exact"] and r["attention"] == "triton" and r["dtype"] == "bfloat16" for r in rows)
    assert all(r["identical"] == 1.0 for r in rows)


def batch_4_run(tmp_path, *flags: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Ours alone at batch 4 on four prompts (budget 4, 6 new tokens, fp32 CPU) with `flags` ->
    (the process, its rows); it must succeed."""
    model = save_tiny_hf_folder(tmp_path / "model", seed=2)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in ["a b a b", "hi hi hi", "1 2 3 1 2 3", "xyz"]))
    out = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "bench.batched_throughput", "--target", str(model), "--prompts-file", str(prompts),
           "--prompts", "4", "--b1-prompts", "2", "--new", "6", "--batch-sizes", "4", "--budget", "4", "--no-hf",
           "--device", "cpu", "--dtype", "float32", "--out", str(out), *flags]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, [json.loads(line) for line in out.read_text().splitlines()]


def test_overlap_both_runs_each_of_our_variants_one_step_at_a_time_and_overlapped(tmp_path):
    """--overlap both: every variant of ours at batch > 1 also with the slots' halves overlapped (V+ov@B),
    compared with the plain run of its own mode; outputs identical either way."""
    _, rows = batch_4_run(tmp_path, "--overlap", "both")
    assert [(r["variant"], r["overlap"]) for r in rows] == [("plain@4", False), ("spec@4", False), ("plain+ov@4", True),
                                                            ("spec+ov@4", True)]
    by = {r["variant"]: r for r in rows}
    assert by["spec+ov@4"]["x_plain"] == by["spec+ov@4"]["tokens_per_s"] / by["plain+ov@4"]["tokens_per_s"]
    assert all(r["identical"] == 1.0 for r in rows) and all(r["identical_all"] == 1.0 for r in rows if r["batch_size"] == 4)


def test_repeats_run_every_variant_once_a_pass_and_summarise_the_median_of_the_passes_ratios(tmp_path):
    """--repeats 2: plain, spec, plain+ov, spec+ov, then all four again; each row names its pass and divides
    by its own pass's plain; the summary gives each ratio per pass and their median, and the best spec over
    the best plain (what a user choosing either gets)."""
    proc, rows = batch_4_run(tmp_path, "--overlap", "both", "--repeats", "2")
    assert [(r["variant"], r["repeat"]) for r in rows] == [(v, rep) for rep in (1, 2) for v in ("plain@4", "spec@4", "plain+ov@4", "spec+ov@4")]
    for spec, plain in ((rows[5], rows[4]), (rows[7], rows[6]), (rows[1], rows[0])):
        assert spec["x_plain"] == spec["tokens_per_s"] / plain["tokens_per_s"]
    ratios = [rows[1]["x_plain"], rows[5]["x_plain"]]  # spec / plain, pass by pass
    best = [max(rows[i + 1]["tokens_per_s"], rows[i + 3]["tokens_per_s"]) / max(rows[i]["tokens_per_s"], rows[i + 2]["tokens_per_s"])
            for i in (0, 4)]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("batch   4, median of 2 passes: "))
    assert f"spec / plain = {sum(ratios) / 2:.2f}x ({ratios[0]:.2f} {ratios[1]:.2f})" in line  # the median of two: their mean
    assert f"best spec / best plain = {sum(best) / 2:.2f}x ({best[0]:.2f} {best[1]:.2f})" in line
    assert all(r["identical"] == 1.0 for r in rows)


def test_overlap_on_alone_runs_only_overlapped_variants_and_compares_them_with_overlapped_plain(tmp_path):
    """--overlap on: only V+ov@B rows; the summary line sets each against plain+ov of its batch (there
    is no plain@B row to divide by). --profile: one profile per variant, its file name without '@' or
    '+' (a device call brings no other back)."""
    proc, rows = batch_4_run(tmp_path, "--overlap", "on", "--profile", str(tmp_path / "p"))
    assert [r["variant"] for r in rows] == ["plain+ov@4", "spec+ov@4"] and all(r["profiled"] for r in rows)
    assert "batch   4: spec+ov / plain+ov = " in proc.stdout
    assert {"plain_ov_4.txt", "spec_ov_4.txt", "spec_ov_4.pstats"} <= {p.name for p in (tmp_path / "p").iterdir()}


def test_build_on_device_all_runs_the_graph_the_triton_and_the_host_build(tmp_path):
    """--build-on-device all: the speculative variant grown by best-first's CUDA-graph form (spec@B), by
    its one-launch Triton build (spec-triton@B: here in Triton's interpreter) and built on the host
    (spec-host@B); the head drafter proposes on the device, so the first two grow their trees; every
    output identical to plain, each row naming its build."""
    model = save_tiny_hf_folder(tmp_path / "model", seed=2)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in ["a b a b", "hi hi hi", "1 2 3 1 2 3"]))
    out = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "bench.batched_throughput", "--target", str(model), "--prompts-file", str(prompts),
           "--prompts", "3", "--b1-prompts", "2", "--new", "5", "--batch-sizes", "3", "--budget", "4", "--no-hf",
           "--drafter", "jetspec", "--drafter-options", '{"checkpoint": "random", "block_size": 4, "top_k": 4}',
           "--build-on-device", "all", "--device", "cpu", "--dtype", "float32", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["variant"], r.get("device_build"), r.get("build_on_device")) for r in rows] == [
        ("plain@3", None, None), ("spec@3", "graph", True), ("spec-triton@3", "triton", True), ("spec-host@3", "host", False)]
    assert all(r["identical"] == 1.0 and r["identical_all"] == 1.0 for r in rows)


def test_build_on_device_auto_runs_the_users_default_as_its_own_variant(tmp_path):
    """--build-on-device auto: `generation.build_on_device = "auto"` (users' default) as spec-auto@B, its
    row naming that build; the output identical to plain."""
    model = save_tiny_hf_folder(tmp_path / "model", seed=2)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in ["a b a b", "hi hi hi"]))
    out = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "bench.batched_throughput", "--target", str(model), "--prompts-file", str(prompts),
           "--prompts", "2", "--b1-prompts", "2", "--new", "5", "--batch-sizes", "2", "--budget", "4", "--no-hf",
           "--build-on-device", "auto", "--device", "cpu", "--dtype", "float32", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["variant"], r.get("device_build"), r.get("build_on_device")) for r in rows] == [
        ("plain@2", None, None), ("spec-auto@2", "auto", "auto")]
    assert all(r["identical"] == 1.0 for r in rows) and "spec-auto / plain" in proc.stdout


@pytest.mark.parametrize("flags, line", [
    (["--warmup-new", "0"], "batched_throughput: --warmup-new must be a positive token count, got 0"),
    (["--repeats", "0"], "batched_throughput: --repeats must be a positive count of passes, got 0"),
    (["--budget", "16,x"], "batched_throughput: --budget takes draft counts, comma-separated; got '16,x'"),
    (["--split", "--profile", "p"], "batched_throughput: --split times the runs without a profiler; use it without --profile and --trace"),
    (["--split-also", "jetspec.core.pipeline:Pipeline._result"], "batched_throughput: --split-also names more functions for --split; add --split"),
])
def test_a_bad_flag_is_refused_in_one_line(tmp_path, flags, line):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "bench.batched_throughput", "--target", str(tmp_path), *flags, "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == line


def test_several_budgets_run_one_speculative_variant_each(tmp_path):
    """--budget 1,4: spec-b1@4 and spec-b4@4, each row naming its budget and run with it (at most one
    verified draft a round, against more); both equal plain."""
    proc, rows = batch_4_run(tmp_path, "--budget", "1,4")
    assert [(r["variant"], r.get("budget")) for r in rows] == [("plain@4", None), ("spec-b1@4", 1), ("spec-b4@4", 4)]
    assert rows[1]["drafts_per_round"] <= 1 < rows[2]["drafts_per_round"] <= 4
    assert all(r["identical"] == 1.0 and r["identical_all"] == 1.0 for r in rows)
    assert "spec-b1 / plain" in proc.stdout and "spec-b4 / plain" in proc.stdout



def test_split_times_the_engines_named_functions_in_each_row(tmp_path):
    """--split: each of our rows carries host_split {name: [calls, seconds]} for every engine function
    `bench/host_split.py` names (0 calls: not on this run's path), marked split; on the host path every
    round reserves rows, builds a tree, forwards and commits."""
    from bench.host_split import SPLIT

    proc, rows = batch_4_run(tmp_path, "--split", "--split-also", "jetspec.core.on_device:to_device")
    assert [r["variant"] for r in rows] == ["plain@4", "spec@4"] and all(r["split"] for r in rows)
    for r in rows:
        split = r["host_split"]
        assert set(split) == {name.split(":")[1] for name in SPLIT} | {"to_device"}  # --split-also: one more
        for name in ("PagedKVCache.begin", "StepTrees._tree", "BatchMeta.pack", "BatchEngine._forward", "BatchEngine._commit",
                     "PagedKVCache.commit", "Pipeline._result"):
            calls, seconds = split[name]
            assert calls > 0 and seconds > 0, name
        assert split["BatchEngine._commit"][1] >= split["PagedKVCache.commit"][1]  # inclusive of what it calls
        slowest = r["host_split_slowest"]
        assert set(slowest) == {k for k, (calls, _) in split.items() if calls}
        assert all(0 < slowest[k] <= split[k][1] for k in slowest)  # one call: at most the function's total
        assert split["Pipeline._result"][0] == 4  # one per prompt
    assert "spec@4 host split, µs per sequence-round (inclusive): begin " in proc.stdout
