"""bench/head_ablation.py: the head recipe ablation of issue 17 — every variant of a config trained
on one corpus, each call resuming every variant's run, then one table on one yardstick and a τ
replay config over the trained heads (a tiny random chat model on the CPU)."""

import json

import pytest

from head_fixtures import tiny_corpus
from jetspec.bench.config import BenchConfig

from bench import head_ablation as ablation

CONFIG = """
[base]
kind = "causal"
steps = 6
layers = 1
block_size = 4
anchors = 2
batch_size = 4
eval_rows = 2
save_every = 100

[[variants]]
name = "base"

[[variants]]
name = "ce-gamma"
loss = "ce"
gamma = 3.0

[[variants]]
name = "eagle"
kind = "eagle"
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    prompts = [f"Ann has {i} apples and buys {i + 4} more; how many now?" for i in range(40)]
    folder = tiny_corpus(root, prompts, rows=60, chunk=32)[0]
    (root / "ablation.toml").write_text(CONFIG)
    return root, folder


def test_each_call_trains_every_variant_and_the_next_resumes_them(setup, capsys):
    root, folder = setup
    runs = root / "runs"
    for _ in range(2):
        assert ablation.main(["train", "--config", str(root / "ablation.toml"), "--root", str(runs), "--target", str(folder),
                              "--corpus", str(root / "corpus"), "--minutes", "0.001"]) == 0
    for name in ("base", "ce-gamma", "eagle"):
        calls = [json.loads(line)["run"] for line in (runs / name / "log.jsonl").read_text().splitlines() if '"run"' in line]
        assert [c["run"] for c in calls] == [1, 2] and calls[1]["from_step"] == calls[0]["to_step"] > 0
    settings = json.loads((runs / "ce-gamma" / "head.json").read_text())["extra"]["training"]["config"]
    assert settings["loss"] == "ce" and settings["gamma"] == 3.0 and settings["layers"] == 1
    assert json.loads((runs / "eagle" / "head.json").read_text())["kind"] == "eagle"
    capsys.readouterr()

    out = root / "rows.jsonl"
    rows = ablation.table(str(root / "ablation.toml"), [runs], str(out))
    assert [r["variant"] for r in rows] == ["base", "ce-gamma", "eagle"]
    assert all(r["steps"] >= 2 and r["eval_kl"] is not None and r["eval_tau_chain"] >= 1.0 for r in rows)
    assert {r["dtype"] for r in rows} == {"float32"}  # the target's dtype on the CPU, from each run's log
    assert rows[1]["changes"] == "loss=ce, gamma=3.0" and rows[0]["changes"] == "(base)"
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 3 and all("machine" in r and "date" in r and "command" in r for r in written)
    assert "| ce-gamma | loss=ce, gamma=3.0 |" in capsys.readouterr().out

    toml = root / "tau.toml"
    ablation.tau_config(str(root / "ablation.toml"), runs, str(toml))
    bench = BenchConfig.load(toml)  # a valid bench config
    assert [p.name for p in bench.pipelines] == ["ablation-base", "ablation-ce-gamma", "ablation-eagle"]
    assert bench.replay and bench.pipelines[2].drafter.name == "eagle"
    assert bench.pipelines[0].drafter.options == {"checkpoint": str(runs / "base"), "lookup": False}


def test_a_config_without_named_distinct_variants_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text('[base]\nlayers = 1\n[[variants]]\nname = "a"\n[[variants]]\nname = "a"\n')
    assert ablation.main(["table", "--config", str(tmp_path / "bad.toml"), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "distinct" in err and "\n" not in err


def test_parallel_variants_train_side_by_side_and_a_failing_one_is_named(setup, capsys):
    root, folder = setup
    (root / "parallel.toml").write_text(CONFIG + '\n[[variants]]\nname = "broken"\nblock_size = 1\n')  # below the minimum 2
    runs = root / "parallel"
    argv = ["train", "--config", str(root / "parallel.toml"), "--root", str(runs), "--target", str(folder),
            "--corpus", str(root / "corpus"), "--minutes", "0.001", "--parallel", "2", "--steps", "3", "--only", "base,broken"]
    assert ablation.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "training failed for broken" in err and "broken.log" in err and "base" not in err.split("for ", 1)[1]
    assert "block" in (runs / "broken.log").read_text()  # the variant's own error, kept in its log
    settings = json.loads((runs / "base" / "head.json").read_text())["extra"]["training"]
    assert settings["config"]["steps"] == 3 and settings["steps"] >= 1  # --steps: the horizon of the new run


def test_only_must_name_variants_of_the_config(setup, capsys):
    root, folder = setup
    argv = ["train", "--config", str(root / "ablation.toml"), "--root", str(root / "x"), "--target", str(folder),
            "--corpus", str(root / "corpus"), "--only", "base,nope"]
    assert ablation.main(argv) == 2
    assert "nope" in capsys.readouterr().err


def log_of(run, evals: dict[int, float], steps: int) -> None:
    """A run folder whose log has validations {step: chain τ} and one call of `steps` steps."""
    run.mkdir(parents=True)
    lines = [{"step": k, "eval": {"eval_kl": 1.0, "eval_tau_chain": tau, "eval_acc_by_depth": [0.5]}} for k, tau in evals.items()]
    lines.append({"run": {"run": 1, "dtype": "bfloat16"}, "steps_total": steps, "minutes_total": 1.0})
    (run / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_variants_trained_in_two_passes_compare_at_one_step(tmp_path, capsys):
    """Pass 1 trained base and eagle 1200 steps, pass 2 trained ce-gamma 785 (8 side by side in the
    same minutes): --at-step 500 takes every variant's validation at step 500 of the same schedule,
    each from the first root holding it; a variant without one there shows none."""
    (tmp_path / "ablation.toml").write_text(CONFIG)
    one, two = tmp_path / "pass1", tmp_path / "pass2"
    log_of(one / "base", {0: 1.0, 500: 1.5, 1200: 1.7}, 1200)
    log_of(one / "eagle", {0: 1.0, 1000: 2.5}, 1000)
    log_of(two / "ce-gamma", {0: 1.0, 500: 1.6, 785: 1.8}, 785)
    log_of(two / "base", {500: 9.9}, 500)  # shadowed: pass1 holds base
    argv = ["table", "--config", str(tmp_path / "ablation.toml"), "--root", str(one), str(two), "--at-step", "500"]
    assert ablation.main(argv) == 0
    out = capsys.readouterr().out
    assert "| base | (base) | 1200 | 1.0 | 1.000 | 1.50 |" in out and "| ce-gamma | loss=ce, gamma=3.0 | 785 | 1.0 | 1.000 | 1.60 |" in out
    assert "| eagle | kind=eagle | 1000 | 1.0 | – | – |" in out
    rows = ablation.table(str(tmp_path / "ablation.toml"), [one, two], None)  # no --at-step: the last validation
    assert [r["eval_tau_chain"] for r in rows] == [1.7, 1.8, 2.5] and [r["eval_step"] for r in rows] == [1200, 785, 1000]
    (one / "eagle" / "run.json").write_text(json.dumps({"steps": 3000}))  # started with --steps 3000
    rows = ablation.table(str(tmp_path / "ablation.toml"), [one, two], None)
    assert [r["settings"]["steps"] for r in rows] == [6, 6, 3000]  # a row's horizon is its run's
    assert [r["variant"] for r in ablation.table(str(tmp_path / "ablation.toml"), [one, two], None, only=["eagle"])] == ["eagle"]
    assert ablation.main(["train", "--config", str(tmp_path / "ablation.toml"), "--root", str(one), str(two)]) == 2
    assert "one --root" in capsys.readouterr().err
