"""Target identity (`TargetInfo.fingerprint`), which head checkpoints record and check: the same
for every target that loads the same weights, in any dtype; different for other weights."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from jetspec.kernels.reference import TorchAttention
from jetspec.targets.decoder import DecoderTargetOptions, load_decoder_target
from jetspec.targets.transformers_adapter import TransformersTarget
from support.hf_checkpoints import make_hf_model


def decoder_fp(folder, dtype="float32") -> str:
    return load_decoder_target(DecoderTargetOptions(path=str(folder), device="cpu", dtype=dtype), TorchAttention()).info.fingerprint


def transformers_fp(folder, dtype=torch.float32) -> str:
    return TransformersTarget(AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)).info.fingerprint


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_decoder_and_transformers_targets_agree_in_every_dtype(tmp_path, family):
    make_hf_model(family).save_pretrained(tmp_path / "m")
    fp = decoder_fp(tmp_path / "m")
    assert {decoder_fp(tmp_path / "m", d) for d in ("bfloat16", "float16")} == {fp}
    assert {transformers_fp(tmp_path / "m", d) for d in (torch.float32, torch.bfloat16, torch.float16)} == {fp}


def test_other_weights_or_a_deep_fine_tune_change_the_identity(tmp_path):
    model = make_hf_model("llama")
    model.save_pretrained(tmp_path / "base")
    make_hf_model("llama", seed=1).save_pretrained(tmp_path / "other")
    with torch.no_grad():  # a small update of the last MLP only (embedding untouched), like a merged LoRA
        down = model.model.layers[-1].mlp.down_proj.weight
        down.add_(0.05 * down.abs().mean() * torch.randn(down.shape, generator=torch.Generator().manual_seed(2)))
    model.save_pretrained(tmp_path / "tuned")
    fps = [decoder_fp(tmp_path / name) for name in ("base", "other", "tuned")]
    assert len(set(fps)) == 3
