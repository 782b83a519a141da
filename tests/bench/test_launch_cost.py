"""`python -m bench.launch_cost`: the pooled job's fill launch timed on a GPU. Off a GPU it refuses in
one line; its step inputs are ones the kernel takes (run here in Triton's interpreter: conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from bench.launch_cost import inputs  # noqa: E402
from jetspec.drafters.head.pool_fill import fill  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_its_step_inputs_fill_every_peers_slot_and_leave_the_others():
    ints, flat, rows, hidden, start, root, anchor, peers = inputs(3, 5, 7, 17, "cpu")
    fill(ints, flat, rows, hidden, start, root, anchor, peers)
    assert start.tolist() == [0, 7, 14, 21, 28] and anchor[3:].tolist() == [21, 28]  # slots 3, 4: no peer
    assert (anchor[:3] > start[:3]).all() and hidden[:3].abs().sum() > 0 and hidden[3:].abs().sum() == 0


def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the bench would run")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "bench.launch_cost", "--out", str(tmp_path / "r.jsonl")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "launch_cost: needs a CUDA GPU (it times launches)"
