"""Training that accumulates across calls (`jetspec train-head --resume DIR`) on a corpus, with a tiny
random chat model on a CPU: the data cursor, the held-out questions, validation by depth, one log
row per call, curves, time budgets that save and stop, and the settings a resumed call may change."""

import hashlib
import json

import pytest
import torch

from head_fixtures import save_tiny_chat_model, tiny_corpus
from jetspec.core.errors import InputError
from jetspec.drafters.head import load_head
from jetspec.drafters.head.calibration import HeadCalibration
from jetspec.drafters.head.corpus import load_corpus
from jetspec.drafters.head.rows import rows_for_step, split_rows
from jetspec.drafters.head.train import TrainConfig, train
from jetspec.drafters.head.train_cli import main
from jetspec.drafters.lookup_calibration import LookupCalibration

SMALL = dict(batch_size=8, anchors=4, block_size=5, lr=3e-3, eval_rows=8, log_every=1, save_every=1000, layers=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    prompts = [f"Sam reads {i} pages on day {i % 7} and {2 * i + 3} pages the next day; how many in all?" for i in range(60)]
    return tiny_corpus(tmp_path_factory.mktemp("runs"), prompts, rows=110)


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
    rates = LookupCalibration.load(out / "lookup.json")  # prompt lookup's acceptance rates, beside the head
    assert rates.source["command"].startswith("jetspec train-head") and rates.source["rows"] >= 1
    assert rates.source["target_fingerprint"] == load_head(out).config.target_fingerprint
    head_rates = HeadCalibration.load(out / "head_rates.json")  # and the head's own, on the answers it was validated on
    assert head_rates.source["command"].startswith("jetspec train-head") and head_rates.source["rows"] == 4
    assert head_rates.depths == 4 and sum(head_rates.trials[0][0]) > 0
    assert head_rates.source["head_sha256"] == hashlib.sha256((out / "head.safetensors").read_bytes()).hexdigest()


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


def test_the_loss_is_forward_kl_or_cross_entropy_on_the_teachers_argmax():
    from jetspec.drafters.head.objective import slot_losses

    log_p = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]]), -1)  # teacher, [S=2, V=3]
    log_q = torch.log_softmax(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), -1)  # head
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    assert torch.allclose(slot_losses(log_q, log_p, "kl"), kl)
    assert torch.allclose(slot_losses(log_q, log_p, "ce"), -torch.stack([log_q[0, 0], log_q[1, 1]]))
    assert torch.allclose(slot_losses(log_p, log_p, "kl"), torch.zeros(2), atol=1e-7)  # q = p: no KL, but CE > 0
    assert (slot_losses(log_p, log_p, "ce") > 0).all()


def test_gamma_weights_a_slot_at_depth_d_by_exp_minus_d_minus_1_over_gamma():
    from jetspec.drafters.head.objective import depth_weighted_mean

    per_slot, depth = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1, 4, 4])
    assert depth_weighted_mean(per_slot, depth, 0.0) == per_slot.mean()
    w = torch.tensor([1.0, torch.e ** -1, torch.e ** -1])  # gamma = 3: depth 4 weighs e^-1
    assert torch.allclose(depth_weighted_mean(per_slot, depth, 3.0), (w * per_slot).sum() / w.sum())
    assert depth_weighted_mean(per_slot, depth, 1e9) == pytest.approx(per_slot.mean().item())


def test_the_recipe_options_reach_the_head_and_a_resumed_run_keeps_them(setup, tmp_path, capsys):
    folder, _, identity, corpus = setup
    out = tmp_path / "recipe"
    args = ["--target", str(folder), "--corpus", str(corpus), "--out", str(out), "--steps", "4", "--layers", "1",
            "--batch-size", "4", "--anchors", "2", "--block-size", "4", "--eval-rows", "2", "--no-progress",
            "--loss", "ce", "--gamma", "7", "--intermediate-size", "48", "--target-layers", "0,1"]
    assert main(args[:-2] + ["--minutes", "0.001"] + args[-2:]) == 0
    head = json.loads((out / "head.json").read_text())
    assert head["intermediate_size"] == 48 and head["target_layers"] == [0, 1]
    assert head["extra"]["training"]["config"]["loss"] == "ce" and head["extra"]["training"]["config"]["gamma"] == 7.0
    assert main(["--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "head.json").read_text())["extra"]["training"]["config"]["loss"] == "ce"
    with pytest.raises(InputError, match="cannot change"):
        main(["--resume", str(out), "--gamma", "3"])
    capsys.readouterr()


@pytest.mark.parametrize("options,message", [({"loss": "mse"}, "loss must be one of kl, ce"), ({"gamma": -1.0}, "gamma"),
                                             ({"gamma": float("nan")}, "gamma"), ({"intermediate_size": 3}, "intermediate-size")])
def test_bad_recipe_options_are_one_line_errors(options, message):
    with pytest.raises(InputError, match=message) as err:
        TrainConfig(**options)
    assert "\n" not in str(err.value)


def test_target_layers_past_the_target_are_refused_before_training(setup, tmp_path):
    _, model, identity, corpus = setup
    with pytest.raises(InputError, match="target-layers"):
        train(model, load_corpus(corpus), tmp_path, TrainConfig(steps=1, target_layers=(0, 99), **SMALL), identity, progress=False)


def test_validation_measures_every_recipe_with_the_same_unweighted_kl(setup, tmp_path):
    from jetspec.drafters.head import load_head as load
    from jetspec.drafters.head.train import evaluate

    _, model, identity, corpus = setup
    data = load_corpus(corpus)
    train(model, data, tmp_path, TrainConfig(steps=2, **SMALL), identity, progress=False)
    head = load(tmp_path)
    rows = split_rows(data, 1024, 4)[1]
    kl = evaluate(head, model, data, rows, TrainConfig(steps=1, **SMALL), 0)
    other = evaluate(head, model, data, rows, TrainConfig(steps=1, loss="ce", gamma=3.0, **SMALL), 0)
    assert kl == other  # the training loss does not change the yardstick


@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_the_vocabulary_loss_in_chunks_equals_the_one_shot_loss_and_its_gradient(loss):
    from jetspec.drafters.head.objective import slot_losses, vocab_losses

    torch.manual_seed(0)
    lm_head = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)  # a frozen target's LM head, V = 50
    h, teacher_h = torch.randn(37, 16, requires_grad=True), torch.randn(37, 16)  # [S, H]
    log_q = torch.log_softmax(lm_head(h), -1)
    whole = slot_losses(log_q, torch.log_softmax(lm_head(teacher_h), -1), loss)
    (grad_whole,) = torch.autograd.grad(whole.sum(), h)
    per_slot, draft = vocab_losses(h, teacher_h, lm_head, loss, chunk=8)  # 5 chunks, the last one short
    (grad,) = torch.autograd.grad(per_slot.sum(), h)
    assert torch.allclose(per_slot, whole, atol=1e-6) and torch.allclose(grad, grad_whole, atol=1e-6)
    assert torch.equal(draft, log_q.argmax(-1))
