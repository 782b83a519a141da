"""`bench/train_heads_gpu.py` end to end on a CPU with a tiny chat model: answers generated and
saved, three heads trained for the same number of steps, checkpoints reloadable, summary written;
a rerun reuses the answers instead of generating them again."""

import importlib.util
import json
from pathlib import Path

import pytest

from head_fixtures import save_tiny_chat_model

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "train_heads_gpu.py"


def run_script(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("train_heads_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its time budget starts here
    return module.main(argv)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "train_prompts.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} + {i * 3}?"}) + "\n" for i in range(30)))
    return path


def test_one_call_trains_and_checks_all_three_heads(tmp_path, prompts):
    model = save_tiny_chat_model(tmp_path / "model")
    out, export = tmp_path / "out", tmp_path / "export"
    argv = ["--target", str(model), "--out", str(out), "--export", str(export), "--prompts", str(prompts), "--minutes", "0.15",
            "--gen-fraction", "0.9", "--max-new-tokens", "16", "--gen-batch", "10", "--batch-size", "4",
            "--anchors", "8", "--block-size", "6", "--layers", "1", "--lr", "3e-3", "--no-progress",
            "--slack", "10"]  # a loaded CPU's timing noise must not cut heads 2 and 3 short  # fmt: skip
    run_script(argv)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["answers"] >= 10 and summary["data"]["prompts"] == "train_prompts.jsonl"
    checks = summary["checks"]
    for kind in ("causal", "dflash", "eagle"):
        assert (out / kind / "head.safetensors").is_file() and (out / kind / "head.json").is_file()
        assert checks[f"{kind}: held-out KL fell"] and checks[f"{kind}: checkpoint reloads for this target"]
    assert checks["same steps for every head"] and summary["heads"]["causal"]["steps"] > 0
    exported = sorted(str(p.relative_to(export)) for p in export.rglob("*") if p.is_file())
    assert exported == sorted(["summary.json", "answers.safetensors"] + [f"{k}/head.{e}" for k in ("causal", "dflash", "eagle") for e in ("json", "safetensors")])
    assert summary["heads"]["eagle"]["curve"][0][0] == 1  # [step, kl, tau] rows from the training log
    answers = (out / "answers.safetensors").stat().st_mtime_ns
    run_script(argv)  # a rerun resumes: answers reused, heads already trained
    assert (out / "answers.safetensors").stat().st_mtime_ns == answers


def test_parallel_trains_the_three_heads_side_by_side_for_the_same_steps(tmp_path, prompts):
    model = save_tiny_chat_model(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["--target", str(model), "--out", str(out), "--prompts", str(prompts), "--minutes", "3",
            "--gen-fraction", "0.3", "--max-new-tokens", "16", "--gen-batch", "10", "--batch-size", "4",
            "--anchors", "8", "--block-size", "6", "--layers", "1", "--lr", "3e-3", "--no-progress",
            "--parallel", "--steps", "40"]  # fmt: skip
    assert run_script(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {k: h["steps"] for k, h in summary["heads"].items()} == {"causal": 40, "dflash": 40, "eagle": 40}
    assert all(summary["checks"].values()), summary["checks"]
    for kind in ("causal", "dflash", "eagle"):  # each head's own process wrote its log and its result
        assert (out / kind / "result.json").is_file() and (out / kind / "stdout.log").is_file()
