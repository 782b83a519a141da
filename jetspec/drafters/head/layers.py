"""Llama-style decoder layer of the draft head, whose attention also reads a prefix of context K/V.

    h = x + Attn(RMSNorm(x) ; prefix K/V)          queries from the block only
    y = h + W_down( silu(W_gate RMSNorm(h)) * W_up RMSNorm(h) )

Shapes: Bt batch, M block/tree inputs, C context (prefix) keys, H hidden, Hq/Hkv heads, D head dim,
G = Hq / Hkv query heads per KV head.

Two ways to run each module, one for each use. `forward` (and `PrefixAttention.kv`) is the
reference, as training runs it: a matmul per projection, the GQA by repeating K/V. A frozen head
(`DraftHead.freeze`) drafts through `fused_forward` / `fused_kv`, the same math in fewer kernels:
    q ; k ; v = x [W_q ; W_k ; W_v]^T and gate ; up = x [W_gate ; W_up]^T, one matmul each
    RoPE of q and k in one pass (they sit side by side in the q ; k ; v rows)
    GQA without copies of K/V: query head h = j G + i reads KV head j, so its M rows are folded
    under KV head j as rows i M + m, and the bias repeats the mask's rows G times (`folded_bias`)
The stacked weights are the modules' own: W_q, W_k, W_v become views of their rows (`stack_weights`).
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


def stack_weights(*linears: nn.Linear) -> torch.Tensor:
    """The linears' weights stacked, [sum of out_features, in] (frozen): each linear's weight becomes
    a view of its rows, so the state dict keeps its names and `load_state_dict` writes through."""
    stacked = torch.cat([linear.weight.detach() for linear in linears])
    for linear, rows in zip(linears, stacked.split([linear.out_features for linear in linears])):
        linear.weight = nn.Parameter(rows, requires_grad=False)
    return stacked


def folded_bias(mask: torch.Tensor, group: int, dtype: torch.dtype) -> torch.Tensor:
    """mask [Bt, M, N] bool, True = may attend -> additive bias [Bt, 1, G*M, N] in `dtype`, 0 or -inf,
    row i M + m = mask row m (the folded query rows of `PrefixAttention.fused_forward`). Its rows are
    allocated a multiple of 8 wide: CUDA's efficient attention copies a bias whose rows are not."""
    bt, m, n = mask.shape
    bias = torch.full((bt, 1, group, m, -(-n // 8) * 8), float("-inf"), dtype=dtype, device=mask.device)[..., :n]
    return bias.masked_fill_(mask[:, None, None], 0.0).view(bt, 1, group * m, n)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q [Bt, h, L, D] against k, v [Bt, h, S, D] under mask (bool or additive) -> [Bt, h, L, D]."""
    with sdpa_kernel(_CUDA_SDPA) if q.is_cuda else contextlib.nullcontext():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class PrefixAttention(nn.Module):
    """GQA attention of M block queries over [prefix K/V ; the block's own K/V] under a bool mask."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden, bias=False)
        self.register_buffer("qkv", None, persistent=False)  # [(Hq + 2 Hkv) D, H] W_q ; W_k ; W_v once fused

    def fuse(self) -> None:
        """Stack the weights, unless they are stacked already (a `.to()` that converted them parts them)."""
        if self.qkv is None or self.q_proj.weight.data_ptr() != self.qkv.data_ptr():
            self.qkv = stack_weights(self.q_proj, self.k_proj, self.v_proj)

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
        out = _attention(q.transpose(1, 2), k, v, mask[:, None])  # [Bt, Hq, M, D]
        return self.o_proj(out.transpose(1, 2).reshape(bt, m, self.num_heads * self.head_dim))

    def fused_kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`kv` in one matmul over the W_k ; W_v rows of the fused weight (`fuse`)."""
        bt, m, _ = x.shape
        hkv, d = self.num_kv_heads, self.head_dim
        kv = F.linear(x, self.qkv[self.num_heads * d :]).view(bt, m, 2 * hkv, d)  # [Bt, M, 2 Hkv, D]
        return rope(kv[:, :, :hkv], cos, sin), kv[:, :, hkv:]

    def fused_forward(
        self,
        x: torch.Tensor,  # [Bt, M, H] (normed)
        cos: torch.Tensor,  # [Bt, M, D]
        sin: torch.Tensor,  # [Bt, M, D]
        prefix: tuple[torch.Tensor, torch.Tensor],  # k, v [Bt, C, Hkv, D]
        bias: torch.Tensor,  # [Bt, 1, G*M, C + M] additive: `folded_bias` of the mask
    ) -> torch.Tensor:
        """`forward` with the fused weight (`fuse`): one projection matmul, one RoPE pass for q and k,
        the query heads folded onto their KV head's rows instead of K/V repeated to every query head."""
        bt, m, _ = x.shape
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        g = hq // hkv
        qkv = F.linear(x, self.qkv).view(bt, m, hq + 2 * hkv, d)  # [Bt, M, Hq + 2 Hkv, D]
        qk = rope(qkv[:, :, : hq + hkv], cos, sin)  # [Bt, M, Hq + Hkv, D]
        k = torch.cat([prefix[0].to(qk.dtype), qk[:, :, hq:]], dim=1).transpose(1, 2)  # [Bt, Hkv, C + M, D]
        v = torch.cat([prefix[1].to(qk.dtype), qkv[:, :, hq + hkv :]], dim=1).transpose(1, 2)
        q = qk[:, :, :hq].view(bt, m, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(bt, hkv, g * m, d)  # row i M + m
        out = _attention(q, k, v, bias).view(bt, hkv, g, m, d)  # [Bt, Hkv, G, M, D]
        return self.o_proj(out.permute(0, 3, 1, 2, 4).reshape(bt, m, hq * d))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.register_buffer("gate_up", None, persistent=False)  # [2 I, H] W_gate ; W_up once fused

    def fuse(self) -> None:
        if self.gate_up is None or self.gate_proj.weight.data_ptr() != self.gate_up.data_ptr():
            self.gate_up = stack_weights(self.gate_proj, self.up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up).chunk(2, dim=-1)  # [..., I] each
        return self.down_proj(F.silu(gate) * up)


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

    def fused_forward(self, x, cos, sin, prefix, bias) -> torch.Tensor:
        h = x + self.attn.fused_forward(self.input_norm(x), cos, sin, prefix, bias)
        return h + self.mlp.fused_forward(self.post_attn_norm(h))
