"""A new training run may start from a saved head (`jetspec train-head --init HEAD_DIR`): the lent GPU
brings back a head's weights but not always its run's optimizer state, so training accumulates across
sessions by warm starts. The run starts from exactly those weights, records where they came from, and
refuses a head of other settings in one line."""

import json

import pytest
import torch

from head_fixtures import tiny_corpus
from jetspec.core.errors import InputError
from jetspec.drafters.head import load_head
from jetspec.drafters.head.corpus import load_corpus
from jetspec.drafters.head.model import DraftHead
from jetspec.drafters.head.train import TrainConfig, train, warm_start
from jetspec.drafters.head.train_cli import main

SMALL = dict(batch_size=4, anchors=4, block_size=5, lr=3e-3, eval_rows=4, log_every=1, save_every=1000, layers=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("init")
    prompts = [f"Ann has {i} apples and buys {i % 5 + 2} more; how many now?" for i in range(40)]
    folder, model, identity, corpus = tiny_corpus(root, prompts, rows=60)
    data = load_corpus(corpus)
    first = train(model, data, root / "first", TrainConfig(steps=5, **SMALL), identity, progress=False)
    return folder, model, identity, data, corpus, root / "first", first


def test_a_warm_start_begins_from_the_saved_heads_weights_and_records_them(setup, tmp_path):
    _, model, identity, data, _, first_dir, first = setup
    saved = load_head(first_dir)
    fresh = DraftHead(saved.config)
    warm_start(fresh, first_dir)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.state_dict().items())
    second = train(model, data, tmp_path, TrainConfig(steps=3, init=str(first_dir), **SMALL), identity, progress=False)
    # its first validation is the saved head's last one, but for the checkpoint's bfloat16 rounding
    assert second["before"]["eval_kl"] == pytest.approx(first["after"]["eval_kl"], rel=1e-3)
    assert second["init"] == {"from": str(first_dir), "steps": 5, "minutes_total": first["minutes_total"], "steps_all": 5, "init": None}
    assert load_head(tmp_path).config.extra["training"]["init"]["steps"] == 5
    cold = train(model, data, tmp_path / "cold", TrainConfig(steps=3, **SMALL), identity, progress=False)
    assert cold["before"]["eval_kl"] != pytest.approx(first["after"]["eval_kl"], rel=1e-3) and cold["init"] is None


def test_a_chain_of_warm_starts_keeps_every_link_and_the_steps_behind_the_weights(setup, tmp_path):
    _, model, identity, data, _, first_dir, _ = setup
    train(model, data, tmp_path / "second", TrainConfig(steps=3, init=str(first_dir), **SMALL), identity, progress=False)
    third = train(model, data, tmp_path / "third", TrainConfig(steps=2, init=str(tmp_path / "second"), **SMALL), identity, progress=False)
    assert third["init"]["from"] == str(tmp_path / "second") and third["init"]["steps"] == 3
    assert third["init"]["init"]["from"] == str(first_dir) and third["init"]["init"]["init"] is None
    assert third["init"]["steps_all"] == 3 + 5 and third["steps"] + third["init"]["steps_all"] == 10


def test_a_resumed_warm_started_run_goes_on_from_its_own_state(setup, tmp_path):
    _, model, identity, data, _, first_dir, _ = setup
    cfg = TrainConfig(steps=6, init=str(first_dir), **SMALL)
    train(model, data, tmp_path / "straight", cfg, identity, progress=False)
    train(model, data, tmp_path / "resumed", cfg, identity, progress=False, until=3)
    train(model, data, tmp_path / "resumed", cfg, identity, progress=False)
    a, b = load_head(tmp_path / "straight").state_dict(), load_head(tmp_path / "resumed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_head_of_other_settings_is_refused_in_one_line(setup, tmp_path):
    _, model, identity, data, _, first_dir, _ = setup
    with pytest.raises(InputError) as err:
        train(model, data, tmp_path, TrainConfig(steps=1, init=str(first_dir), **{**SMALL, "block_size": 4}), identity, progress=False)
    assert str(err.value) == f"--init {first_dir}: its block_size 5 differ from this run's (4); start from a head with the same settings"


def test_the_command_line_takes_init_and_keeps_it_in_the_run(setup, tmp_path):
    folder, _, _, _, corpus, first_dir, _ = setup
    out = tmp_path / "run"
    assert main(["--target", str(folder), "--corpus", str(corpus), "--out", str(out), "--init", str(first_dir), "--steps", "2",
                 "--layers", "1", "--block-size", "5", "--batch-size", "4", "--anchors", "4", "--eval-rows", "4", "--no-progress"]) == 0
    assert json.loads((out / "run.json").read_text())["init"] == str(first_dir)
    assert json.loads((out / "head.json").read_text())["extra"]["training"]["init"]["from"] == str(first_dir)
