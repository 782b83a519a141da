"""Tiny random-weight targets for tests: enough to test losslessness, fast on a CPU."""

from __future__ import annotations

import functools

import torch

FAMILIES = ("llama", "qwen3")
EOS = 3  # every tiny model's EOS token: random weights emit it now and then


def tiny_hf_model(family: str = "llama", seed: int = 0, vocab: int = 96, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=EOS,
        bos_token_id=1,
        # large init: logit gaps of order 1, so fp32 reduction-order noise never flips an argmax
        initializer_range=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=8, **common))
    else:
        raise ValueError(family)
    return model.float().eval()


@functools.lru_cache(maxsize=16)
def tiny_target(family: str = "llama", seed: int = 0):
    """A `transformers` target over a tiny random model (cached: tests reuse models)."""
    from jetspec.targets.transformers_adapter import TransformersTarget

    return TransformersTarget(tiny_hf_model(family, seed), tokenizer=None, name=f"tiny-{family}-{seed}")
