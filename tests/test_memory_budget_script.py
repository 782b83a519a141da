"""`python -m bench.memory_budget --tiny` end to end on a CPU: what decoding must hold (weights, the
paged K/V pool) counted from the tensors themselves, one row appended; the allocator's peaks and
the graph pools are CUDA's (None here), and issue 18's memory goal is read off them on the H200."""

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.round_cost import TINY

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def test_tiny_run_counts_weights_and_kv_and_appends_one_row(tmp_path):
    out = tmp_path / "memory.jsonl"
    out.write_text(json.dumps({"earlier": "row"}) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "bench.memory_budget", "--tiny", "--rounds", "2", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    earlier, row = [json.loads(line) for line in out.read_text().splitlines()]
    assert earlier == {"earlier": "row"} and row["kind"] == "memory_budget" and row["trees"] == [1, 16]
    # fp32 weights: every parameter once (q/k/v and gate/up are views of their fused matrices), embedding and head tied
    h, i, q, kv = TINY.hidden_size, TINY.intermediate_size, TINY.num_heads * TINY.head_dim, TINY.num_kv_heads * TINY.head_dim
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h + (2 * TINY.head_dim if TINY.qk_norm else 0)
    params = TINY.num_layers * per_layer + TINY.vocab_size * h * (1 if TINY.tie_embeddings else 2) + h
    assert row["weights_mib"] * MIB >= 4 * params  # at least the parameters (buffers such as RoPE tables add)
    assert row["weights_mib"] * MIB < 4 * params * 1.1
    # the pool: whole pages of 16 slots for context 64 + the largest tree 16 (+ graph padding), K and V, fp32
    slots = row["kv_mib"] * MIB / (2 * TINY.num_layers * TINY.num_kv_heads * TINY.head_dim * 4)
    assert slots >= 64 + 16 and slots % 16 == 0
    assert row["graphs_mib"] is None and row["peak_reserved_mib"] is None and row["over"] is None  # CPU: no allocator
