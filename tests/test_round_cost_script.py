"""`python -m bench.round_cost --tiny` end to end on a CPU: the code path the H200 runs at Qwen3-8B shape
(random-weight DecoderTarget, cache filled through begin/write/commit, plain step and best-first
tree verifications, floors, ceilings), here with reference attention and a dense cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.kernel_bench import best_first_tree

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("context", "nodes", "time_ms", "gpu_ms", "plain_ms", "ratio", "floor_ms", "bytes_floor_ms", "matmul_floor_ms",
          "attention_floor_ms", "ceiling", "machine", "date", "command", "model", "attention", "kv_cache")


def test_tiny_run_appends_one_row_per_context_and_tree(tmp_path):
    out = tmp_path / "round_cost.jsonl"
    out.write_text(json.dumps({"earlier": "row"}) + "\n")  # rows are appended, never overwritten
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}  # no path help
    proc = subprocess.run([sys.executable, "-m", "bench.round_cost", "--tiny", "--out", str(out), "--reps", "5"], check=False,
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"earlier": "row"}
    rows = rows[1:]
    assert [(r["context"], r["nodes"]) for r in rows] == [(64, 1), (64, 16), (128, 1), (128, 16)]
    for r in rows:
        assert "error" not in r, r["error"]
        assert all(f in r for f in FIELDS), [f for f in FIELDS if f not in r]
        assert r["model"] == "tiny-random" and r["attention"] == "torch" and r["kv_cache"] == "dense"
        assert r["time_ms"] > 0 and r["gpu_ms"] > 0 and r["floor_ms"] > 0
        assert r["floor_ms"] == max(r["bytes_floor_ms"], r["matmul_floor_ms"] + r["attention_floor_ms"])
        assert r["ratio"] == r["time_ms"] / r["plain_ms"]
        assert r["ceiling"]["2"] == 2 / r["ratio"]
        assert r["command"].startswith("python -m bench.round_cost --tiny")
    plain = {r["context"]: r["time_ms"] for r in rows if r["nodes"] == 1}
    assert all(r["plain_ms"] == plain[r["context"]] for r in rows)
    assert all(r["ratio"] == 1 for r in rows if r["nodes"] == 1)
    assert rows[2]["floor_ms"] > rows[0]["floor_ms"]  # more context, more K/V bytes
    assert "ceiling" in proc.stdout and "rows appended" in proc.stdout


def test_tree_shapes_are_the_kernel_bench_best_first_trees():
    for n in (1, 16, 64, 256):
        tree = best_first_tree(n, seed=n)
        assert len(tree.tokens) == n and int(tree.subtree_sizes[0]) == n  # one root spanning the tree
