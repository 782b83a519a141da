"""The bench scripts are a package (`bench`): they import `jetspec` and each other the standard
way, from the repository root (`python -m bench.round_cost`), with no edits of `sys.path`."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "bench").rglob("*.py"))
MAIN_GUARDED = [p for p in SCRIPTS if '__name__ == "__main__"' in p.read_text()]  # the others run on import (GPU checks)


def test_no_bench_script_edits_sys_path():
    edits = [str(p.relative_to(ROOT)) for p in SCRIPTS if re.search(r"sys\.path\.(insert|append)|sys\.path\s*\+?=", p.read_text())]
    assert not edits, f"sys.path edited in {edits}: import as the `bench` package instead"


def test_every_script_with_a_main_imports_as_a_module_without_path_help():
    assert {p.stem for p in MAIN_GUARDED} >= {"round_cost", "kernel_bench", "kernel_breakdown", "decode_speed", "tau_table"}
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in MAIN_GUARDED]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")} | {"CUDA_VISIBLE_DEVICES": ""}
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    proc = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_kernel_breakdown_rows_name_their_command_machine_date_and_dtype(tmp_path):
    """A kernel-breakdown row carries what RESULTS.md cites it by: command, machine, date, dtype."""
    out = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "bench.kernel_breakdown", "--model", "tiny-llama", "--exact", "off", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["command"] == "python -m bench.kernel_breakdown --model tiny-llama --exact off --out " + str(out)
    assert row["machine"] and row["date"].endswith("UTC") and row["dtype"] and row["kernels_per_layer"] > 0


def test_kernel_breakdown_runs_exact_mode_once_per_split_keys_value(tmp_path):
    """--split-keys: one exact-mode pass per value, each row naming the split the backend ran with;
    the free-order pass (no split_keys there) runs once."""
    out = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "bench.kernel_breakdown", "--model", "tiny-llama", "--exact", "on", "off",
           "--split-keys", "64", "128", "--context", "80", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["exact"], r["split_keys"]) for r in rows] == [(True, 64), (True, 128), (False, None)]
    assert "split_keys=64" in proc.stdout and "split_keys=128" in proc.stdout


def test_host_step_rows_count_launches_per_step_at_each_batch_size(tmp_path):
    """bench/host_step.py: one row per batch size, with the engine's host ms, launches and torch
    operators per step, and the command, machine and date RESULTS.md cites."""
    out = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")} | {"CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "bench.host_step", "--batch-sizes", "1,3", "--layers", "2", "--new", "3", "--repeats", "1",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["batch_size"] for r in rows] == [1, 3] and all(r["kind"] == "host_step" for r in rows)
    for r in rows:
        assert r["command"].startswith("python -m bench.host_step") and r["machine"] and r["date"].endswith("UTC")
        assert r["dtype"] == "bfloat16"
        assert r["steps"] >= 1 and r["host_ms_per_step"] > 0
        assert r["launches_per_step"] >= 2 * 3  # per layer: the projections, rope_write and attention


def host_profile(tmp_path, *flags: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """bench/host_profile.py on the CPU (plain and ngram@8, 12 new tokens, `flags` more) -> (its process, its rows)."""
    out = tmp_path / "rows.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")} | {"CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "bench.host_profile", "--pipelines", "plain", "ngram@8", "--new", "12", *flags, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, [json.loads(line) for line in out.read_text().splitlines()]


def test_host_profile_rows_split_each_round_into_host_phases_runtime_calls_and_python(tmp_path):
    """bench/host_profile.py: one row per pipeline with the phases per round (host = every phase but the
    wait), the profiled operators and Python functions, and the command, machine and date RESULTS.md cites."""
    _, rows = host_profile(tmp_path, "--top", "5")
    assert [r["pipeline"] for r in rows] == ["plain", "ngram@8"]
    for r in rows:
        us = r["us_per_round"]
        assert us["host"] == sum(us[p] for p in ("draft", "build", "verify", "accept", "commit")) and us["wait"] == 0  # no GPU to wait for
        assert r["rounds"] >= 1 and 1 <= len(r["operators"]) <= 5 and 1 <= len(r["python_functions"]) <= 5
        assert r["command"].startswith("python -m bench.host_profile --pipelines plain ngram@8") and r["date"].endswith("UTC")
        assert r["python"].count(".") == 2  # the interpreter's version, beside the functions
        assert (r["dtype"], r["exact"]) == ("float32", False)  # the CPU dry run: torch attention, free order
    assert rows[0]["rounds"] == 12 and rows[1]["rounds"] < 12  # plain: one token a round; n-gram drafts on the repeats


def test_host_profile_speed_only_times_n_generates_per_pipeline_without_profiling(tmp_path):
    """--speed-only N: the A/B form (h200.sh pdl-ab) — N timed generates after the warm-up, no profiles, one
    row per pipeline with every run's tok/s and their median, and the PDL mode the kernels ran in."""
    proc, rows = host_profile(tmp_path, "--speed-only", "3")
    assert [(r["kind"], r["pipeline"]) for r in rows] == [("speed", "plain"), ("speed", "ngram@8")]
    for r in rows:
        assert len(r["tokens_per_s"]) == 3 and r["median_tokens_per_s"] == sorted(r["tokens_per_s"])[1] > 0
        assert r["pdl"] is None and "operators" not in r  # the CPU: no PDL; nothing profiled
    assert "== plain: tok/s" in proc.stdout
