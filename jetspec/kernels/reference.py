"""`torch` attention backend: plain PyTorch tree attention, the reference every kernel is
tested against. Runs anywhere, with any KV cache backend (it reads through `KVCache.read`).

    out_i = softmax_j( q_i . k_j * scale  +  bias_ij ) v_j
    bias_ij = 0     if j < prefix_len                                    (committed prefix)
            = 0     if j = prefix_len + m  and  m <= i < m + size[m]       (ancestor-or-self)
            = -inf  otherwise
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from ..core.batch import BatchMeta
from ..core.interfaces import AttentionMeta, KVCache
from ..core.tree import tree_mask


class TorchAttentionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def meta_mask(meta: AttentionMeta, device: torch.device) -> torch.Tensor:
    """[N, prefix_len + N] bool, True where query i may attend to key j (`core.tree.tree_mask`)."""
    return tree_mask(meta.subtree_sizes.to(device), meta.prefix_len)


def tree_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMeta, scale: float
) -> torch.Tensor:
    """q [N, Hq, D], k/v [T + N, Hkv, D] (logical order) -> [N, Hq, D]. GQA: Hq % Hkv == 0.
    Computed in fp32 by PyTorch's SDPA with the explicit boolean mask above."""
    mask = meta_mask(meta, q.device)  # [N, T + N]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).float()[None],  # [1, Hq, N, D]
        k.transpose(0, 1).float()[None],  # [1, Hkv, T + N, D]
        v.transpose(0, 1).float()[None],
        attn_mask=mask[None, None],
        scale=scale,
        enable_gqa=True,
    )  # [1, Hq, N, D]
    return out[0].transpose(0, 1).to(q.dtype)


class TorchAttention:
    """Reference backend: gathers K/V through the cache and runs `tree_attention`."""

    def attend(self, q: torch.Tensor, cache: KVCache, layer: int, meta: AttentionMeta, scale: float) -> torch.Tensor:
        k, v = cache.read(layer)
        return tree_attention(q, k, v, meta, scale)

    def attend_batch(self, q: torch.Tensor, caches: Sequence[KVCache], layer: int, meta: BatchMeta,
                     scale: float) -> torch.Tensor:
        """`BatchedAttention`: q [R, Hq, D] -> [R, Hq, D]. Sequence s's rows over its own keys
        under its own mask: the very call a one-sequence forward makes, so each row is bit for
        bit what it would be without the others (the reference is the per-row specification;
        a kernel would read seq_ids -> that sequence's slot map and T_s instead of looping)."""
        out = torch.empty_like(q)  # [R, Hq, D]
        for s, cache in enumerate(caches):
            rows = meta.rows(s)
            out[rows] = self.attend(q[rows], cache, layer, meta.seqs[s], scale)
        return out
