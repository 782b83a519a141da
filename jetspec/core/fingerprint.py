"""`target_fingerprint`: the identity a head checkpoint records and checks (`TargetInfo.fingerprint`).

A hash of the target's geometry plus a sample of its input embedding: two loads of the same
weights agree (whatever the storage dtype, since the sample is rounded to bfloat16), other
weights or another architecture differ. Every target adapter and the head trainer (which loads
the target with `transformers`) call this one function, so their fingerprints match.
"""

from __future__ import annotations

import hashlib
import json

import torch


def target_fingerprint(
    architecture: str,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    embed_weight: torch.Tensor,  # [V, H] the target's input embedding
) -> str:
    """16 hex digits."""
    geometry = json.dumps([architecture, vocab_size, hidden_size, num_layers, num_kv_heads, head_dim])
    rows = torch.linspace(0, embed_weight.shape[0] - 1, 16).long()
    sample = embed_weight.detach()[rows.to(embed_weight.device), :64].to("cpu", torch.bfloat16)  # [16, 64]
    digest = hashlib.sha256(geometry.encode())
    digest.update(sample.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]
