"""`jetspec run` as several ranks, started the way torchrun starts them (RANK, WORLD_SIZE, ... in
the environment; gloo on the CPU):

* data parallel (tensor_parallel 1): the ranks split the prompts and append to one output; every
  prompt is answered exactly once, as one process answers it, and a resumed run skips the ids any
  rank answered;
* a rank that dies ends the run: the survivor stops within seconds with one line that says so and
  how to go on (gloo; under NCCL a collective does not block the host, and its watchdog ends a
  survivor after the timeout instead), every row already written stays, and `--resume` (here one process) answers the
  rest, each prompt once — for a tensor-parallel run (the survivor blocked in a collective
  mid-sequence) and a data-parallel one (the survivor finishing its share first).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jetspec.bench.rows import read_rows
from jetspec.cli import main
from support.hf_folder import save_tiny_hf_folder
from support.ranks import distributed_available, free_port, rank_env

pytestmark = pytest.mark.skipif(not distributed_available(), reason="torch.distributed with gloo is not available")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    save_tiny_hf_folder(root / "model", seed=0)
    (root / "run.toml").write_text(f"""
target = {{ name = "decoder", path = "{root / 'model'}", device = "cpu" }}
drafter = {{ name = "ngram", n_max = 3 }}
attention = "torch"
kv_cache = "paged"
[generation]
budget = 4
max_new_tokens = 8
""")
    return root


def prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"say {i} {i} {i} again"}) + "\n" for i in range(n)))
    return path


def start_ranks(root: Path, world: int, *args: str, timeout_s: int = 20) -> list[subprocess.Popen]:
    port = free_port()
    # no GPU: gloo's failure semantics (what these tests state) on any machine, GPU hosts included
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "jetspec.cli", "--rank-timeout", str(timeout_s), "run", "--config", str(root / "run.toml"),
           "--no-progress", *args]
    return [subprocess.Popen(cmd, cwd=root, env=env | rank_env(r, world, port), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for r in range(world)]


def rows(out: Path) -> list[dict]:
    return [r for r in read_rows(out) if isinstance(r, dict)]


def test_data_parallel_run_answers_every_prompt_once(root, tmp_path):
    file = prompts(tmp_path / "prompts.jsonl", 7)
    alone, out = tmp_path / "alone.jsonl", tmp_path / "out.jsonl"
    assert main(["run", "--config", str(root / "run.toml"), "--prompts", str(file), "--out", str(alone), "--no-progress"]) == 0
    expected = {r["id"]: r["text"] for r in rows(alone)}
    earlier = [r for r in rows(alone) if r["id"] in ("p2", "p5")]  # answered before: by any rank, in any run
    out.write_text("".join(json.dumps(r) + "\n" for r in earlier))
    procs = start_ranks(root, 2, "--prompts", str(file), "--out", str(out), "--resume")
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in results]
    got = rows(out)
    assert sorted(r["id"] for r in got) == sorted(expected)  # every prompt, exactly once
    assert {r["id"]: r["text"] for r in got} == expected  # as one process answers it
    assert got[:2] == earlier
    assert "5 prompts done, 2 skipped, 0 errors" in results[0][1] and "2 ranks" in results[0][1]
    assert results[1][1].strip() == ""  # only rank 0 prints


@pytest.mark.parametrize("parallel, how", [("tensor", "hangs"), ("data", "dies")])
def test_a_rank_that_dies_ends_the_run_with_one_line_and_loses_no_row(root, tmp_path, parallel, how):
    """tensor: rank 1 stops (SIGSTOP) mid-sequence and rank 0, blocked in a collective, gives up
    after --rank-timeout; data: rank 1 is killed, and rank 0 notices at the end of its share."""
    file = prompts(tmp_path / "prompts.jsonl", 8)
    out = tmp_path / "out.jsonl"
    extra = ["--tensor-parallel", "2"] if parallel == "tensor" else []
    timeout_s = 5 if how == "hangs" else 20
    procs = start_ranks(root, 2, "--prompts", str(file), "--out", str(out), "--max-new-tokens", "24", *extra,
                        timeout_s=timeout_s)
    deadline = time.monotonic() + 60
    while not (out.is_file() and out.read_text().count("\n")) and time.monotonic() < deadline:
        time.sleep(0.02)
    procs[1].send_signal(signal.SIGSTOP if how == "hangs" else signal.SIGKILL)  # rank 1 mid-run
    written_before = out.read_text().count("\n")
    t0 = time.monotonic()
    try:
        _, err = procs[0].communicate(timeout=60)  # the survivor must not hang
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 2 and time.monotonic() - t0 < timeout_s + 10
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-2000:]
    assert "another rank died or stopped answering" in lines[0] and "--resume" in lines[0]
    kept = rows(out)
    assert 1 <= written_before <= len(kept) < 8  # what was written is there; the run did not finish
    assert len({r["id"] for r in kept}) == len(kept)
    assert main(["run", "--config", str(root / "run.toml"), "--prompts", str(file), "--out", str(out), "--resume",
                 "--max-new-tokens", "24", "--no-progress"]) == 0
    final = rows(out)
    assert sorted(r["id"] for r in final) == sorted(f"p{i}" for i in range(8))  # each prompt once
    assert final[: len(kept)] == kept
