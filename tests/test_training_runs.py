"""Training that accumulates across calls (`jetspec train-head --resume DIR`) on a corpus, with a tiny
random chat model on a CPU: the data cursor, the held-out questions, validation by depth, one log
row per call, curves, time budgets that save and stop, and the settings a resumed call may change."""

import json

import pytest
import torch

from head_fixtures import save_tiny_chat_model, write_tiny_eval_sets
from jetspec.core.errors import InputError
from jetspec.drafters.head import load_head
from jetspec.drafters.head.contamination import EvalOverlap
from jetspec.drafters.head.corpus import load_corpus
from jetspec.drafters.head.frozen_target import hf_identity, load_hf_target
from jetspec.drafters.head.make_corpus import CorpusConfig, make_corpus
from jetspec.drafters.head.train import TrainConfig, main, rows_for_step, split_rows, train

SMALL = dict(batch_size=8, anchors=4, block_size=5, lr=3e-3, eval_rows=8, log_every=1, save_every=1000, layers=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    folder = save_tiny_chat_model(root / "tiny-chat")
    model, tokenizer = load_hf_target(folder, "cpu", torch.float32)
    identity = hf_identity(model, folder.name)
    prompts = [f"Sam reads {i} pages on day {i % 7} and {2 * i + 3} pages the next day; how many in all?" for i in range(60)]
    cfg = CorpusConfig(rows=110, chunk_size=64, batch_size=64, max_question_tokens=8, max_answer_tokens=10, gsm8k_share=0.9)
    make_corpus(model, tokenizer, root / "corpus", cfg, identity, prompts, EvalOverlap(write_tiny_eval_sets(root / "eval")), progress=False)
    return folder, model, identity, root / "corpus"


def test_the_data_cursor_visits_every_training_row_once_per_epoch():
    rows = list(range(100, 137))  # 37 rows, batches of 5: epochs end inside batches
    stream = [r for step in range(37 * 3 // 5) for r in rows_for_step(rows, 5, seed=1, step=step)]
    for epoch in range(2):
        assert sorted(stream[37 * epoch : 37 * (epoch + 1)]) == rows
    assert stream[:37] != stream[37:74]  # each epoch its own order
    assert rows_for_step(rows, 5, 1, 9) == rows_for_step(rows, 5, 1, 9) != rows_for_step(rows, 5, 2, 9)


def test_validation_rows_are_greedy_answers_of_held_out_questions_never_trained_on(setup):
    data = load_corpus(setup[3])
    qh = data.columns["question_hash"].tolist()
    train_rows, eval_rows = split_rows(data, 1024, eval_rows=8)
    held = [qh[s] for s in eval_rows]
    assert len(eval_rows) == 8 == len(set(held)) and all(data.columns["temperature"][s] == 0 for s in eval_rows)
    assert not set(held) & {qh[s] for s in train_rows}  # neither answer of a held-out question is trained on
    assert held == sorted(set(qh))[:8]  # the smallest hashes: the same questions whatever the rows' order


def test_an_interrupted_run_on_a_corpus_resumes_to_the_same_weights_across_epochs(setup, tmp_path):
    _, model, identity, corpus = setup
    data = load_corpus(corpus)
    cfg = TrainConfig(kind="causal", steps=12, **{**SMALL, "batch_size": 10, "eval_rows": 2})
    assert 12 * 10 > len(split_rows(data, 1024, 2)[0])  # more rows drawn than one epoch holds
    train(model, data, tmp_path / "straight", cfg, identity, progress=False)
    train(model, data, tmp_path / "resumed", cfg, identity, progress=False, until=7)
    summary = train(model, data, tmp_path / "resumed", cfg, identity, progress=False)
    a, b = load_head(tmp_path / "straight").state_dict(), load_head(tmp_path / "resumed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["runs"] == 2 and summary["steps"] == 12


def test_a_call_out_of_minutes_saves_and_the_next_call_goes_on(setup, tmp_path):
    _, model, identity, corpus = setup
    data = load_corpus(corpus)
    first = train(model, data, tmp_path, TrainConfig(kind="dflash", steps=100_000, minutes=0.02, **SMALL), identity, progress=False)
    assert 0 < first["steps"] < 100_000
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert state["step"] == first["steps"] and state["runs"][0]["stopped"] == "minutes"
    second = train(model, data, tmp_path, TrainConfig(kind="dflash", steps=first["steps"] + 3, **SMALL), identity, progress=False)
    assert second["steps"] == first["steps"] + 3
    calls = [json.loads(line)["run"] for line in (tmp_path / "log.jsonl").read_text().splitlines() if '"run"' in line]
    assert [(c["from_step"], c["to_step"], c["stopped"]) for c in calls] == [(0, first["steps"], "minutes"), (first["steps"], second["steps"], "steps")]


def test_the_command_line_run_accumulates_with_a_log_curves_and_validation_by_depth(setup, tmp_path, capsys):
    folder, _, _, corpus = setup
    out = tmp_path / "run"
    first = ["--target", str(folder), "--corpus", str(corpus), "--out", str(out), "--steps", "4", "--eval-every", "2",
             "--block-size", "5", "--batch-size", "4", "--anchors", "4", "--eval-rows", "4", "--no-progress"]  # fmt: skip
    assert main(first) == 0
    assert main(["--resume", str(out), "--steps", "6", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval" in r]
    assert [r["step"] for r in evals] == [0, 2, 4, 6]  # start, every 2 steps, the end of each call (4 is both)
    assert all(len(r["eval"]["eval_acc_by_depth"]) == 4 == len(r["eval"]["eval_reach_by_depth"]) for r in evals)
    reach = evals[-1]["eval"]["eval_reach_by_depth"]
    assert all(a >= b for a, b in zip(reach, reach[1:]))  # a chain reaches depth d+1 only through depth d
    totals = [r for r in rows if "run" in r]
    assert [(r["run"]["to_step"], r["steps_total"]) for r in totals] == [(4, 4), (6, 6)]
    assert totals[-1]["minutes_total"] == pytest.approx(sum(r["run"]["minutes"] for r in totals), abs=0.011)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "run.json").read_text())["corpus"] == str(corpus)
    assert load_head(out).config.extra["training"]["steps"] == 6


def test_a_resumed_call_may_not_change_the_runs_settings(setup, tmp_path):
    folder, _, _, corpus = setup
    with pytest.raises(InputError, match="no run.json there; start a run with --out DIR"):
        main(["--resume", str(tmp_path)])
    (tmp_path / "run.json").write_text(json.dumps({"target": str(folder), "corpus": str(corpus), "layers": 1}))
    with pytest.raises(InputError) as err:
        main(["--resume", str(tmp_path), "--layers", "3"])
    assert str(err.value) == (f"--resume continues {tmp_path} with its own settings: --layers cannot change (it is 1); "
                              "a call may change --minutes, --steps, --eval-every, --device, --no-progress")  # fmt: skip
    with pytest.raises(InputError, match="exactly one of --corpus DIR or --prompts FILE"):
        main(["--target", str(folder), "--out", str(tmp_path / "x")])


def test_a_corpus_of_another_target_is_refused(setup, tmp_path):
    other = save_tiny_chat_model(tmp_path / "other", seed=1)
    with pytest.raises(InputError, match="holds answers of target 'tiny-chat', not of 'other'"):
        main(["--target", str(other), "--corpus", str(setup[3]), "--out", str(tmp_path / "run"), "--no-progress"])
