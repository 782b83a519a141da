"""Self-distillation data, training, checkpoints of the draft heads, on a tiny random target."""

import json

import pytest
import torch

from head_fixtures import HeadTarget, tiny_llama
from jetspec.core.errors import CheckpointError, ConfigError, InputError
from jetspec.drafters.eagle import eagle_drafter
from jetspec.drafters.head import DFlashOptions, EagleOptions, HeadOptions, dflash_drafter, jetspec_drafter, load_head
from jetspec.drafters.head.data import TokenData, generate_answers, read_questions
from jetspec.drafters.head.frozen_target import hf_identity
from jetspec.drafters.head.train import TrainConfig, train

SMALL = dict(batch_size=4, anchors=8, block_size=6, lr=3e-3, eval_rows=4, log_every=10, save_every=1000)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def data(model):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 96, (int(n),), generator=g).tolist() for n in torch.randint(4, 10, (24,), generator=g)]
    return generate_answers(model, prompts, eos_ids=[2], pad_id=0, max_new_tokens=24, batch_size=8, meta={"src": "t"})


def test_answers_are_prompt_plus_greedy_continuation_and_round_trip(data, model, tmp_path):
    assert len(data) == 24 and data.answer_tokens > 24 * 4
    row, plen = data.row(0), int(data.prompt_lens[0])
    greedy = model.generate(row[None, :plen], max_new_tokens=len(row) - plen, do_sample=False, eos_token_id=2, pad_token_id=0)
    assert torch.equal(greedy[0, : len(row)], row)
    back = TokenData.load(data.save(tmp_path / "answers.safetensors"))
    assert torch.equal(back.tokens, data.tokens) and torch.equal(back.offsets, data.offsets)
    assert back.meta == {"src": "t"} and data.tokens.dtype == torch.int32


def test_evaluation_prompt_sets_are_refused(tmp_path):
    for name in ("math500.jsonl", "gsm8k_test.jsonl", "humaneval.jsonl.gz", "spec_bench.jsonl"):
        with pytest.raises(InputError, match="evaluation set"):
            read_questions(tmp_path / name)


@pytest.mark.parametrize("kind", ["causal", "dflash", "eagle"])
def test_training_lowers_the_held_out_distillation_loss(model, data, tmp_path, kind):
    summary = train(model, data, tmp_path, TrainConfig(kind=kind, steps=40, **SMALL), hf_identity(model, "tiny"), progress=False)
    assert summary["steps"] == 40
    assert summary["after"]["eval_kl"] < 0.8 * summary["before"]["eval_kl"]
    assert json.loads((tmp_path / "head.json").read_text())["kind"] == kind


def test_an_interrupted_run_resumes_to_the_same_weights(model, data, tmp_path):
    cfg = TrainConfig(kind="causal", steps=6, **SMALL)
    ident = hf_identity(model, "tiny")
    train(model, data, tmp_path / "straight", cfg, ident, progress=False)
    train(model, data, tmp_path / "resumed", cfg, ident, progress=False, until=3)
    assert train(model, data, tmp_path / "resumed", cfg, ident, progress=False)["steps"] == 6
    a, b = load_head(tmp_path / "straight").state_dict(), load_head(tmp_path / "resumed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def checkpoints(model, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    for kind in ("causal", "dflash", "eagle"):
        train(model, data, out / kind, TrainConfig(kind=kind, steps=2, **SMALL), hf_identity(model, "tiny"), progress=False)
    return out


def test_checkpoint_round_trip_gives_the_same_drafts(model, checkpoints):
    target = HeadTarget(model)
    head = load_head(checkpoints / "causal", target.info)
    assert head.config.target_fingerprint == target.info.fingerprint and head.config.extra["training"]["steps"] == 2
    drafter = jetspec_drafter(HeadOptions(checkpoint=str(checkpoints / "causal")), target)
    assert all(torch.equal(p.float(), q) for p, q in zip(drafter.head.state_dict().values(), head.state_dict().values()))
    eagle = eagle_drafter(EagleOptions(checkpoint=str(checkpoints / "eagle")), target)
    assert eagle.head.config.kind == "eagle"


def test_a_head_refuses_another_target_in_one_line(checkpoints):
    other = HeadTarget(tiny_llama(seed=1), name="other")
    with pytest.raises(CheckpointError) as err:
        jetspec_drafter(HeadOptions(checkpoint=str(checkpoints / "causal")), other)
    assert "trained for target 'tiny'" in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_kind_and_options_must_agree(model, checkpoints):
    target = HeadTarget(model)
    with pytest.raises(CheckpointError, match="'eagle' head"):
        jetspec_drafter(HeadOptions(checkpoint=str(checkpoints / "eagle")), target)
    with pytest.raises(CheckpointError, match="'dflash' head, this drafter needs 'causal'"):
        jetspec_drafter(HeadOptions(checkpoint=str(checkpoints / "dflash")), target)
    assert not dflash_drafter(DFlashOptions(checkpoint=str(checkpoints / "dflash")), target).config.causal
    assert not jetspec_drafter(HeadOptions(checkpoint=str(checkpoints / "dflash"), causal=False), target).config.causal
    with pytest.raises(ConfigError, match="layers=3 contradicts"):
        jetspec_drafter(HeadOptions(checkpoint=str(checkpoints / "causal"), layers=3), target)
    with pytest.raises(CheckpointError, match="no head checkpoint"):
        jetspec_drafter(HeadOptions(checkpoint=str(checkpoints / "missing")), target)


def test_target_identity_ignores_the_load_dtype_but_not_the_weights(model):
    """A head trained on a bfloat16 GPU load must fit the float32 CPU load of the same weights."""
    fp32 = hf_identity(model, "tiny")["target_fingerprint"]
    for dtype in (torch.bfloat16, torch.float16):
        copy = tiny_llama().to(dtype)
        assert hf_identity(copy, "tiny")["target_fingerprint"] == fp32
    assert hf_identity(tiny_llama(seed=1), "tiny")["target_fingerprint"] != fp32


class RunsCode:
    """Unpickling this runs `touch <marker>`: what a crafted train_state.pt could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_malicious_train_state_is_refused_without_running_it(model, data, tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"head": RunsCode(marker), "optim": {}, "step": 0, "elapsed": 0.0, "config": {"kind": "causal"}}, out / "train_state.pt")
    with pytest.raises(CheckpointError) as info:
        train(model, data, out, TrainConfig(kind="causal", steps=2, **SMALL), hf_identity(model, "tiny"), progress=False)
    assert not marker.exists()  # the pickle's code never ran
    assert "\n" not in str(info.value) and "is not a training state that can be loaded safely" in str(info.value)
    import pickle

    pickle.loads(pickle.dumps(RunsCode(marker)))  # the same object unpickled unsafely does run: the test can fail
    assert marker.exists()


def test_a_train_state_that_is_not_a_state_is_one_line(model, data, tmp_path):
    torch.save([1, 2, 3], tmp_path / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"is not a training state \(expected a dict with head, optim"):
        train(model, data, tmp_path, TrainConfig(kind="causal", steps=2, **SMALL), hf_identity(model, "tiny"), progress=False)


def edited_checkpoint(checkpoints, tmp_path, kind="causal", **changes):
    """A copy of a trained checkpoint whose head.json has `changes`."""
    import shutil

    folder = shutil.copytree(checkpoints / kind, tmp_path / f"{kind}-edited")
    config = json.loads((folder / "head.json").read_text())
    (folder / "head.json").write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.parametrize("changes, expected", [
    ({"block_size": 100000}, "block_size must be an integer in [1, 256], got 100000"),
    ({"num_kv_heads": 0}, "num_kv_heads must be an integer in [1, 1024], got 0"),
    ({"block_size": "16"}, "block_size must be an integer in [1, 256], got '16'"),
    ({"num_layers": True}, "num_layers must be an integer in [1, 32], got True"),
    ({"target_layers": [-1]}, "target_layers must be a list of at most 64 layer indices"),
    ({"hidden_size": 65536, "intermediate_size": 262144, "num_layers": 32}, "parameters; at most 4B"),
])  # fmt: skip
def test_a_head_json_with_impossible_sizes_is_one_line_before_any_allocation(model, checkpoints, tmp_path, changes, expected):
    folder = edited_checkpoint(checkpoints, tmp_path, **changes)
    with pytest.raises(CheckpointError) as err:
        jetspec_drafter(HeadOptions(checkpoint=str(folder)), HeadTarget(model))
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_corrupt_head_weights_are_one_line(model, checkpoints, tmp_path, damage):
    folder = edited_checkpoint(checkpoints, tmp_path)
    weights = folder / "head.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage":
        weights.write_bytes(b"\xff" * 64)
    else:
        weights.unlink()
    with pytest.raises(CheckpointError) as err:
        jetspec_drafter(HeadOptions(checkpoint=str(folder)), HeadTarget(model))
    assert str(err.value).startswith(f"head weights {weights} do not load") and "\n" not in str(err.value)


def test_size_options_are_bounded_before_allocating(model):
    """Bounds that need no target are options-model errors; those that do are checked against it."""
    from pydantic import ValidationError

    for options in ({"block_size": 100000}, {"layers": 1000}, {"top_k": 10**6}, {"rescore_factor": 1e6}):
        with pytest.raises(ValidationError, match="less than or equal"):
            HeadOptions(checkpoint="random", **options)
    with pytest.raises(ValidationError, match="less than or equal"):
        EagleOptions(checkpoint="random", depth=10**6)
    target = HeadTarget(model)
    for options, expected in [({"target_layers": [99]}, "target_layers: layer 99 does not exist; the target has layers 0..3"),
                              ({"top_k": 1000}, "top_k=1000 exceeds the target's vocabulary of 96 tokens")]:  # fmt: skip
        with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("[", r"\[")):
            jetspec_drafter(HeadOptions(checkpoint="random", **options), target)


@pytest.mark.parametrize("make, options, kind", [(jetspec_drafter, HeadOptions(), "causal"), (dflash_drafter, DFlashOptions(), "dflash"),
                                                 (eagle_drafter, EagleOptions(), "eagle")])  # fmt: skip
def test_an_untrained_head_is_never_used_unless_asked_for_by_name(model, make, options, kind):
    from jetspec.drafters.head.checkpoint import UntrainedHeadError

    target = HeadTarget(model)
    with pytest.raises(UntrainedHeadError) as err:
        make(options, target)
    assert str(err.value).startswith(f"no trained {kind} head for target 'tiny': train one with `jetspec train-head")
    assert "\n" not in str(err.value) and err.value.target is target
    random = make(options.model_copy(update={"checkpoint": "random"}), target)
    assert random.head.config.kind == kind


@pytest.mark.parametrize("field, value, expected", [
    ("block_size", 100000, "block-size must be an integer in [2, 256], got 100000"),
    ("batch_size", 0, "batch-size must be an integer in [1, 4096], got 0"),
    ("layers", 1000, "layers must be an integer in [1, 32], got 1000"),
    ("lr", float("nan"), "lr must be a finite number >= 0, got nan"),
])  # fmt: skip
def test_training_sizes_are_bounded_before_anything_is_allocated(field, value, expected):
    with pytest.raises(InputError) as err:
        TrainConfig(**{field: value})
    assert str(err.value) == expected
