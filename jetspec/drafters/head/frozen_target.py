"""The frozen target as training sees it: a Hugging Face causal LM called directly (batched,
`output_hidden_states`), which is simpler and faster for teacher forcing than the decode `Target`.

Layer convention (the same as `Target.forward(hidden_layers=...)`): layer l = output of decoder
layer l = `hidden_states[l + 1]` (`hidden_states[0]` is the embedding output).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ...core.errors import CheckpointError



def load_hf_target(path: str | Path, device: str | torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, tokenizer) from a Hugging Face folder, or from a .gguf file (needs `gguf`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    gguf = path.suffix == ".gguf"
    if not (path.is_file() if gguf else (path / "config.json").is_file()):
        raise CheckpointError(f"no target at '{path}': give a Hugging Face folder (config.json + *.safetensors) or a .gguf file")
    where, extra = (str(path.parent), {"gguf_file": path.name}) if gguf else (str(path), {})
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, local_files_only=True, **extra)
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, **extra)
    except Exception as e:  # transformers raises many kinds; the user needs one line
        raise CheckpointError(f"cannot load the target from '{path}': {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer


def hf_identity(model: Any, name: str) -> dict[str, Any]:
    """What a head checkpoint records about its target: the `TargetInfo` the `transformers`
    target adapter reports for this model (name, dtype-independent fingerprint, geometry)."""
    from ...targets.transformers_adapter import TransformersTarget

    info = TransformersTarget(model, None, name=name).info
    return {
        "target_name": info.name, "target_fingerprint": info.fingerprint, "vocab_size": info.vocab_size,
        "hidden_size": info.hidden_size, "num_kv_heads": info.num_kv_heads, "head_dim": info.head_dim,
        "num_target_layers": info.num_layers,
    }  # fmt: skip


def eos_ids(model: Any, tokenizer: Any | None) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = eos if eos is not None else getattr(tokenizer, "eos_token_id", None)
    return [eos] if isinstance(eos, int) else list(eos or [])


@torch.no_grad()
def teacher_forward(
    model: Any, ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """ids, attention_mask [Bt, T] (right-padded) -> context hidden [Bt, T, k, H] of `layers`,
    final hidden [Bt, T, H] (after the final norm: LM head input, the teacher's logits)."""
    out = model.base_model(input_ids=ids, attention_mask=attention_mask, output_hidden_states=True)
    ctx = torch.stack([out.hidden_states[l + 1] for l in layers], dim=2)
    return ctx, out.last_hidden_state
