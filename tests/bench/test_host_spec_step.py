"""`python -m bench.host_spec_step`: the engine's host cost per sequence-step of speculative
decoding, one row per batch size with its phase shares and the garbage collector's share of the
wall, the command, machine and date."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_one_row_per_batch_size_with_phase_shares(tmp_path):
    out = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "-m", "bench.host_spec_step", "--batch-sizes", "2,3", "--prompts-per-slot", "1", "--new", "40",
           "--repeats", "1", "--label", "t", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["batch_size"] for r in rows] == [2, 3] and all(r["label"] == "t" for r in rows)
    for r in rows:
        assert {"date", "machine", "command", "torch", "dtype"} <= set(r) and r["us_per_sequence_step"] > 0
        assert abs(sum(r["phase_shares"].values()) - 1) < 0.01 and r["phase_shares"]["build"] > 0  # it drafted
        assert r["tau"] > 1  # the rule's cycles let prompt lookup's drafts be accepted
        assert 0 <= r["gc_share"] < 1
        assert r["device_build_shapes"] == 0  # prompt lookup alone: every tree built on the host


def test_an_uncalibrated_head_grows_its_trees_on_the_device_form_and_counts_their_graph_shapes(tmp_path):
    """--drafter jetspec --uncalibrated at 16 sequences (`GROW_FROM`): the steps' trees are grown by the
    device build's code (eagerly on the CPU) and the row counts the graph shapes CUDA would capture."""
    out = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "-m", "bench.host_spec_step", "--batch-sizes", "16", "--prompts-per-slot", "1", "--new", "24",
           "--repeats", "1", "--drafter", "jetspec", "--uncalibrated", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["uncalibrated"] and 1 <= row["device_build_shapes"] <= 4 and "device-build shapes" in proc.stdout
