"""`DecoderConfig`: the hyper-parameters of one Llama / Qwen2 / Qwen3 checkpoint, read from a
Hugging Face `config.json`.

The three families are one architecture with three switches:

    family  | q/k/v bias           | o bias         | q/k RMSNorm per head
    --------+----------------------+----------------+---------------------
    llama   | attention_bias       | attention_bias | no       (SmolLM, Llama 2/3)
    qwen2   | always               | never          | no       (Qwen2, Qwen2.5)
    qwen3   | attention_bias       | attention_bias | yes      (Qwen3 dense)

Both config formats are read: transformers 4.x (`rope_theta` + `rope_scaling`) and 5.x
(`rope_parameters` holding `rope_theta` and `rope_type`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.errors import CheckpointError

# model_type -> the `architectures` name transformers writes for it
SUPPORTED = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class RopeConfig:
    """RoPE frequencies: theta_i = base^(-2i/D), rescaled per `rope_type` (see rope.py)."""

    theta: float = 10000.0
    rope_type: str = "default"  # one of ROPE_TYPES
    factor: float = 1.0  # linear / llama3 / yarn: context stretch
    original_max_positions: int | None = None  # llama3 / yarn: pretraining context length
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn: cos/sin multiplier (None = derived, see rope.py)
    mscale: float | None = None  # yarn (DeepSeek-style attention-factor terms)
    mscale_all_dim: float | None = None
    truncate: bool = True  # yarn: round the correction range to whole dimensions


@dataclass(frozen=True)
class DecoderConfig:
    architecture: str  # "llama" | "qwen2" | "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    rope: RopeConfig = field(default_factory=RopeConfig)
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED:
            raise CheckpointError(f"unsupported architecture {self.architecture!r}; supported: {', '.join(SUPPORTED)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "max_positions"):
            if getattr(self, name) <= 0:
                raise CheckpointError(f"config field {name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise CheckpointError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise CheckpointError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.rope.rope_type not in ROPE_TYPES:
            raise CheckpointError(f"unsupported rope_type {self.rope.rope_type!r}; supported: {', '.join(ROPE_TYPES)}")

    # ------------------------------------------------------------------ reading config.json
    @staticmethod
    def from_folder(folder: Path) -> "DecoderConfig":
        path = folder / "config.json"
        if not path.is_file():
            raise CheckpointError(f"no config.json in {folder}; a model folder needs config.json and *.safetensors")
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
        eos = _eos_ids(raw.get("eos_token_id"))
        gen = folder / "generation_config.json"
        if gen.is_file():  # instruct models often list their end-of-turn token only here
            try:
                extra = _eos_ids(json.loads(gen.read_text()).get("eos_token_id"))
            except (OSError, ValueError):
                extra = ()
            eos = eos + tuple(t for t in extra if t not in eos)
        return DecoderConfig.from_hf_dict(raw, eos_token_ids=eos)

    @staticmethod
    def from_hf_dict(raw: dict[str, Any], eos_token_ids: tuple[int, ...] | None = None) -> "DecoderConfig":
        arch = _architecture(raw)
        if raw.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"unsupported hidden_act {raw['hidden_act']!r}; the decoder implements SwiGLU (silu)")
        if raw.get("use_sliding_window") or "sliding_attention" in (raw.get("layer_types") or ()):
            raise CheckpointError("sliding-window attention is not supported; use a checkpoint with use_sliding_window=false")
        try:
            hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
            attention_bias = bool(raw.get("attention_bias", False))
            return DecoderConfig(
                architecture=arch,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                max_positions=int(raw.get("max_position_embeddings", 2048)),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                qkv_bias=True if arch == "qwen2" else attention_bias,
                o_bias=False if arch == "qwen2" else attention_bias,
                mlp_bias=bool(raw.get("mlp_bias", False)) if arch == "llama" else False,
                qk_norm=arch == "qwen3",
                tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
                rope=_rope(raw),
                eos_token_ids=_eos_ids(raw.get("eos_token_id")) if eos_token_ids is None else eos_token_ids,
            )
        except KeyError as e:
            raise CheckpointError(f"config.json lacks the required field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"config.json has an invalid value: {str(e).splitlines()[0]}") from None


def _architecture(raw: dict[str, Any]) -> str:
    model_type = raw.get("model_type")
    if model_type in SUPPORTED:
        return model_type
    for name in raw.get("architectures") or ():
        for family, cls in SUPPORTED.items():
            if name == cls:
                return family
    named = model_type or ", ".join(raw.get("architectures") or ()) or "none declared"
    supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items())
    raise CheckpointError(f"unsupported architecture {named!r}; supported: {supported}")


def _rope(raw: dict[str, Any]) -> RopeConfig:
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    if params and all(isinstance(v, dict) for v in params.values()):
        raise CheckpointError("per-layer-type RoPE parameters are not supported by the decoder")
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    if float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        raise CheckpointError("partial rotary embeddings (partial_rotary_factor != 1) are not supported")
    if rope_type == "dynamic":
        raise CheckpointError(
            "rope_type 'dynamic' is not supported (its frequencies change with sequence length); "
            f"supported: {', '.join(ROPE_TYPES)}"
        )
    if rope_type not in ROPE_TYPES:
        raise CheckpointError(f"unsupported rope_type {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
    original = params.get("original_max_position_embeddings", raw.get("original_max_position_embeddings"))
    if rope_type in ("llama3", "yarn") and original is None:
        original = raw.get("max_position_embeddings", 2048)  # what transformers assumes
    factor = params.get("factor")
    if factor is None and rope_type == "yarn":
        factor = raw.get("max_position_embeddings", 2048) / original
    if factor is None and rope_type != "default":
        raise CheckpointError(f"rope_type {rope_type!r} needs a 'factor' in the RoPE parameters")
    return RopeConfig(
        theta=theta,
        rope_type=rope_type,
        factor=float(factor or 1.0),
        original_max_positions=None if original is None else int(original),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        attention_factor=None if params.get("attention_factor") is None else float(params["attention_factor"]),
        mscale=None if params.get("mscale") is None else float(params["mscale"]),
        mscale_all_dim=None if params.get("mscale_all_dim") is None else float(params["mscale_all_dim"]),
        truncate=bool(params.get("truncate", True)),
    )


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)
