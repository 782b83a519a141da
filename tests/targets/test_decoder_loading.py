"""Loading a Hugging Face folder: what loads, and the one-line `CheckpointError` for everything that
cannot (missing folder or config, unsupported architecture or RoPE, corrupt/truncated/sharded
safetensors, missing or unexplained tensors, a tokenizer larger than the embedding)."""

from __future__ import annotations

import json
import shutil

import pydantic
import pytest
import torch
from safetensors.torch import load_file, save_file

from jetspec.caches.dense import DenseKVCache
from jetspec.core.errors import CheckpointError, ConfigError
from jetspec.core.interfaces import AttentionMeta, Target
from jetspec.kernels.reference import TorchAttention
from jetspec.targets.decoder import DecoderConfig, DecoderTargetOptions, load_decoder_target

from support.hf_checkpoints import make_hf_model


def load(folder, **options):
    return load_decoder_target(DecoderTargetOptions(path=str(folder), device="cpu", **options), TorchAttention())


def copy_of(tiny_checkpoint, family, tmp_path):
    folder, _ = tiny_checkpoint(family)
    return shutil.copytree(folder, tmp_path / family)


def checkpoint_error(fn) -> str:
    """The message of the CheckpointError `fn` raises; it must be one line."""
    with pytest.raises(CheckpointError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message and message
    return message


def edit_config(folder, **changes):
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


# ---------------------------------------------------------------------------- what loads
def test_a_loaded_decoder_is_a_target_with_its_geometry(tiny_checkpoint):
    folder, _ = tiny_checkpoint("qwen3")
    target = load(folder)
    assert isinstance(target, Target)
    info = target.info
    assert (info.name, info.architecture, info.vocab_size, info.hidden_size) == (folder.name, "qwen3", 128, 64)
    assert (info.num_layers, info.num_kv_heads, info.head_dim, info.max_positions) == (3, 2, 24, 256)
    assert info.dtype == torch.float32 and info.device == torch.device("cpu")
    assert len(info.fingerprint) == 16
    assert target.tokenizer is None  # a folder without tokenizer files


def test_fingerprint_depends_on_weights_not_on_load_dtype(tiny_checkpoint, tmp_path):
    folder, _ = tiny_checkpoint("llama")
    other = tmp_path / "other-seed"
    make_hf_model("llama", seed=1).save_pretrained(other)
    fp = load(folder).info.fingerprint
    assert load(folder).info.fingerprint == fp
    assert load(folder, dtype="bfloat16").info.fingerprint == fp
    assert load(other).info.fingerprint != fp


def test_sharded_checkpoint_loads_like_a_single_file(tiny_checkpoint, tmp_path):
    folder, hf = tiny_checkpoint("qwen2")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    tokens = torch.arange(7)
    logits = []
    for target in (load(folder), load(tmp_path / "sharded")):
        cache = DenseKVCache(target.info, 8)
        cache.begin(7)
        logits.append(target.forward(tokens, AttentionMeta.for_chain(7, 0), cache).logits)
    assert torch.equal(*logits)


def test_tokenizer_is_loaded_from_local_files_when_it_fits_the_embedding(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, "llama", tmp_path)
    save_word_tokenizer(folder, size=100)
    target = load(folder)
    assert len(target.tokenizer) <= target.info.vocab_size
    assert target.tokenizer("w3 w7")["input_ids"] == [3, 7]


def save_word_tokenizer(folder, size: int) -> None:
    """A word-level tokenizer of `size` tokens ("w0" ...), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(size - 1)} | {"[UNK]": size - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)


# ---------------------------------------------------------------------------- what does not
def test_missing_folder(tmp_path):
    assert "does not exist" in checkpoint_error(lambda: load(tmp_path / "nope"))


def test_missing_config(tmp_path):
    assert "config.json" in checkpoint_error(lambda: load(tmp_path))


def test_unsupported_architecture_names_the_supported_ones(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, "llama", tmp_path)
    edit_config(folder, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    message = checkpoint_error(lambda: load(folder))
    assert "gpt2" in message and all(name in message for name in ("llama", "qwen2", "qwen3"))


def test_truncated_safetensors(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, "llama", tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert "model.safetensors" in checkpoint_error(lambda: load(folder))


def test_garbage_safetensors(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, "llama", tmp_path)
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    checkpoint_error(lambda: load(folder))


def test_no_weights(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, "llama", tmp_path)
    (folder / "model.safetensors").unlink()
    assert "safetensors" in checkpoint_error(lambda: load(folder))


def test_missing_tensor_is_named(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, "qwen3", tmp_path)
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.self_attn.k_norm.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert "layers.1.self_attn.k_norm.weight" in checkpoint_error(lambda: load(folder))


def test_tensors_the_config_does_not_explain_are_an_error(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, "llama", tmp_path)  # llama without attention_bias
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert "q_proj.bias" in checkpoint_error(lambda: load(folder))


def test_misshapen_tensor(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, "llama", tmp_path)
    edit_config(folder, intermediate_size=100)
    assert "shape" in checkpoint_error(lambda: load(folder))


def test_tokenizer_larger_than_the_embedding(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, "llama", tmp_path)
    save_word_tokenizer(folder, size=200)  # the model has 128 embedding rows
    assert "200" in checkpoint_error(lambda: load(folder))


def test_options_forbid_unknown_fields_and_values():
    with pytest.raises(pydantic.ValidationError):
        DecoderTargetOptions(path="x", precision="fp8")
    with pytest.raises(pydantic.ValidationError):
        DecoderTargetOptions(dtype="int8")
    assert DecoderTargetOptions().path is None  # None = the embedded default model


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_a_config_error(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama")
    with pytest.raises(ConfigError):
        load_decoder_target(DecoderTargetOptions(path=str(folder), device="cuda"), TorchAttention())


# ---------------------------------------------------------------------------- config.json
BASE = dict(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)


def test_transformers_4_config_format_is_read():
    cfg = DecoderConfig.from_hf_dict(dict(BASE, rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0}))
    assert (cfg.rope.theta, cfg.rope.rope_type, cfg.rope.factor) == (5e5, "linear", 2.0)
    assert cfg.head_dim == 4 and cfg.num_kv_heads == 2


def test_family_switches():
    qwen2 = DecoderConfig.from_hf_dict(dict(BASE, model_type="qwen2"))
    assert (qwen2.qkv_bias, qwen2.o_bias, qwen2.qk_norm) == (True, False, False)
    qwen3 = DecoderConfig.from_hf_dict(dict(BASE, model_type="qwen3", head_dim=8, attention_bias=False))
    assert (qwen3.qkv_bias, qwen3.o_bias, qwen3.qk_norm, qwen3.head_dim) == (False, False, True, 8)
    by_class = DecoderConfig.from_hf_dict(dict(BASE, model_type=None, architectures=["Qwen3ForCausalLM"]))
    assert by_class.architecture == "qwen3"


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, ["dynamic", "llama3"]),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, ["longrope", "yarn"]),
        ({"rope_scaling": {"type": "linear"}}, ["factor"]),
        ({"use_sliding_window": True}, ["sliding"]),
        ({"hidden_act": "gelu"}, ["gelu"]),
        ({"num_key_value_heads": 3}, ["multiple"]),
        ({"vocab_size": None}, ["invalid"]),
    ],
)
def test_unsupported_or_invalid_configs_say_why_in_one_line(fields, words):
    message = checkpoint_error(lambda: DecoderConfig.from_hf_dict(dict(BASE, **fields)))
    assert all(w in message for w in words), message


def test_missing_config_field_is_named():
    raw = dict(BASE)
    del raw["hidden_size"]
    assert "hidden_size" in checkpoint_error(lambda: DecoderConfig.from_hf_dict(raw))
