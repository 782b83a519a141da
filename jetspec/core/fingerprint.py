"""`target_fingerprint`: the identity a head checkpoint records and checks (`TargetInfo.fingerprint`).

A hash of the target's geometry and of the SIGNS of 1024 evenly spaced elements of each given
weight tensor (targets pass the input embedding and the last layer's MLP down projection):
* independent of the load dtype: float32 / bfloat16 / float16 rounding never flips a sign
  (hashing rounded values would: fp32 -> fp16 -> bf16 double rounding differs from fp32 -> bf16);
* other weights differ: random inits flip half the signs, and a fine-tune (or merged LoRA) flips
  the signs of its small-magnitude weights, some of which the deep-layer sample holds.
Every target (the decoder, the transformers adapter) and the head trainer call this one
function, so a head trained on a bf16 GPU load fits a float32 CPU load of the same weights.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import torch

SAMPLE = 1024


def target_fingerprint(
    architecture: str,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    tensors: Sequence[torch.Tensor],  # e.g. [embedding [V, H], last layer's down_proj [H, I]]
) -> str:
    """16 hex digits."""
    digest = hashlib.sha256(json.dumps([architecture, vocab_size, hidden_size, num_layers, num_kv_heads, head_dim]).encode())
    for t in tensors:
        flat = t.detach().reshape(-1)
        idx = torch.arange(SAMPLE, device=flat.device) * (flat.numel() - 1) // (SAMPLE - 1)  # exact integer spacing
        digest.update((flat[idx] > 0).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprint_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors a Llama/Qwen-style model is fingerprinted by: the input embedding and, where the
    module tree has one (`layers[-1].mlp.down_proj`, at the top or under `.model`), the last
    layer's MLP down projection."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model.embed_tokens
    out = [embed.weight]
    layers = getattr(model, "layers", None) or getattr(getattr(model, "model", None), "layers", None)
    down = getattr(getattr(layers[-1], "mlp", None), "down_proj", None) if layers else None
    if down is not None:
        out.append(down.weight)
    return out
