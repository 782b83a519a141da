"""Tiny random transformers models of every family (and RoPE variant) our decoder supports."""

from __future__ import annotations

import torch
import transformers

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)
ROPE = {"rope_type": "default", "rope_theta": 10000.0}
# original_max_position_embeddings is small so that the scaled frequencies differ at every regime
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
LINEAR = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}

FAMILIES = {
    # name: (config class, fields)
    "llama": ("LlamaConfig", dict(COMMON, tie_word_embeddings=True, rope_parameters=ROPE)),
    "llama-llama3": ("LlamaConfig", dict(COMMON, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                                         rope_parameters=LLAMA3)),
    "llama-linear": ("LlamaConfig", dict(COMMON, tie_word_embeddings=True, rope_parameters=LINEAR)),
    "llama-yarn": ("LlamaConfig", dict(COMMON, tie_word_embeddings=True, rope_parameters=YARN)),
    "qwen2": ("Qwen2Config", dict(COMMON, tie_word_embeddings=False, rope_parameters=ROPE)),
    # head_dim 24 != hidden/heads = 16, as in real Qwen3 configs
    "qwen3": ("Qwen3Config", dict(COMMON, head_dim=24, tie_word_embeddings=True, rope_parameters=ROPE)),
}


def make_hf_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A transformers model of `family` with every parameter random (norm weights near 1, biases
    non-zero) so that no code path hides behind an identity initialisation."""
    cls_name, fields = FAMILIES[family]
    return random_hf_model(cls_name, fields, seed)


def random_hf_model(cls_name: str, fields: dict, seed: int = 0) -> torch.nn.Module:
    """`make_hf_model` for any config class name and fields."""
    config = getattr(transformers, cls_name)(**fields)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * noise)
            elif "embed_tokens" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


SMALL = dict(COMMON, num_hidden_layers=2, rope_parameters=ROPE)
EXACT_FAMILIES = {  # for the Triton kernels (head dim 16); GQA groups 2, 4 and 3 (SmolLM2 has 3)
    "llama": ("LlamaConfig", dict(SMALL, tie_word_embeddings=True)),
    "qwen2": ("Qwen2Config", dict(SMALL, num_key_value_heads=1, tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", dict(SMALL, hidden_size=96, num_attention_heads=6, head_dim=16, tie_word_embeddings=True)),
}


def exact_and_fast_targets(tmp_path_factory, seed: int):
    """get(family, dtype, split_keys, **attention options) -> (the DecoderTarget of EXACT_FAMILIES[family] with
    exact = true over triton attention, the same weights with torch's kernels: it fills committed contexts fast, the
    interpreter being slow). Folders and targets are made once per key."""
    import jetspec

    folders, built = {}, {}

    def target(family: str, dtype: str, exact: bool, **attention):
        if family not in folders:
            folders[family] = tmp_path_factory.mktemp(family)
            cls_name, fields = EXACT_FAMILIES[family]
            random_hf_model(cls_name, fields, seed=seed).save_pretrained(folders[family])
        return (jetspec.builder().target("decoder", path=str(folders[family]), dtype=dtype, device="cpu", exact=exact)
                .attention("triton" if exact else "torch", **attention).drafter("ngram").build().target)

    def get(family: str, dtype: str, split_keys: int, **attention):
        key = (family, dtype, split_keys, *sorted(attention.items()))
        if key not in built:
            built[key] = (target(family, dtype, True, split_keys=split_keys, **attention), target(family, dtype, False))
        return built[key]

    return get
