"""`target_fingerprint`: the identity a head checkpoint records and checks (`TargetInfo.fingerprint`).

A hash of the target's geometry and of the SIGNS of a fixed sample of its input embedding
(16 rows x 64 columns): the signs survive any load dtype (float32, bfloat16, float16 rounding
never flips a sign, unlike the values themselves), while other weights flip about half of them.
Every target adapter and the head trainer call this one function, so their fingerprints match.
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
    sample = embed_weight.detach()[rows.to(embed_weight.device), :64].float().cpu()  # [16, 64]
    digest = hashlib.sha256(geometry.encode())
    digest.update((sample > 0).numpy().tobytes())
    return digest.hexdigest()[:16]
