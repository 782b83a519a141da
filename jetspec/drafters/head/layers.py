"""Llama-style decoder layer of the draft head, whose attention also reads a prefix of context K/V.

    h = x + Attn(RMSNorm(x) ; prefix K/V)          queries from the block only
    y = h + W_down( silu(W_gate RMSNorm(h)) * W_up RMSNorm(h) )

Shapes: Bt batch, M block/tree inputs, C context (prefix) keys, H hidden, Hq/Hkv heads, D head dim.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ...core.layer_math import apply_rope, rms_norm

# While drafting, the context grows by a few keys every round, so nearly every call has a new shape.
# The H200 speed run of 2026-11-28 spent 43 ms per causal-head round and 240 ms per EAGLE round
# drafting in bf16 against 4-11 ms in fp32 (same heads, a loaded GPU), which points at per-shape
# setup in a bf16-only backend: cuDNN's SDPA builds an execution plan per new shape. The
# memory-efficient kernel has none. bench/RESULTS.md has the run before and after.
_CUDA_SDPA = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w, computed in float32 (the heads' rounding: `core.layer_math`)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, scale_in_float32=True)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [Bt, M, h, D], cos/sin [Bt, M, D] float32 -> RoPE in float32, rounded to x's dtype."""
    return apply_rope(x, cos[:, :, None], sin[:, :, None], in_float32=True)


class PrefixAttention(nn.Module):
    """GQA attention of M block queries over [prefix K/V ; the block's own K/V] under a bool mask."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden, bias=False)

    def kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [Bt, M, H] -> k (after RoPE), v: [Bt, M, Hkv, D]."""
        bt, m, _ = x.shape
        k = self.k_proj(x).view(bt, m, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(bt, m, self.num_kv_heads, self.head_dim)
        return rope(k, cos, sin), v

    def forward(
        self,
        x: torch.Tensor,  # [Bt, M, H] (normed)
        cos: torch.Tensor,  # [Bt, M, D]
        sin: torch.Tensor,  # [Bt, M, D]
        prefix: tuple[torch.Tensor, torch.Tensor],  # k, v [Bt, C, Hkv, D]
        mask: torch.Tensor,  # [Bt, M, C + M] bool, True = may attend
    ) -> torch.Tensor:
        bt, m, _ = x.shape
        q = rope(self.q_proj(x).view(bt, m, self.num_heads, self.head_dim), cos, sin)
        k, v = self.kv(x, cos, sin)
        k = torch.cat([prefix[0].to(k.dtype), k], dim=1)  # [Bt, C + M, Hkv, D]
        v = torch.cat([prefix[1].to(v.dtype), v], dim=1)
        group = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(group, dim=2).transpose(1, 2)  # [Bt, Hq, C + M, D]
        v = v.repeat_interleave(group, dim=2).transpose(1, 2)
        with sdpa_kernel(_CUDA_SDPA) if q.is_cuda else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask[:, None])  # [Bt, Hq, M, D]
        return self.o_proj(out.transpose(1, 2).reshape(bt, m, self.num_heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int, intermediate: int, eps: float):
        super().__init__()
        self.input_norm = RMSNorm(hidden, eps)
        self.attn = PrefixAttention(hidden, num_heads, num_kv_heads, head_dim)
        self.post_attn_norm = RMSNorm(hidden, eps)
        self.mlp = SwiGLU(hidden, intermediate)

    def forward(self, x, cos, sin, prefix, mask) -> torch.Tensor:
        h = x + self.attn(self.input_norm(x), cos, sin, prefix, mask)
        return h + self.mlp(self.post_attn_norm(h))
