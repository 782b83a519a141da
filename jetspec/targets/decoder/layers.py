"""The decoder layer: pre-norm attention and SwiGLU MLP with residuals.

    h   = x + o_proj( attend( rope(q), rope(k), v ) )       q, k, v = projections of rmsnorm(x)
    out = h + down_proj( silu(gate_proj(n)) * up_proj(n) )  n = rmsnorm(h)

Each norm is handed to the projection after it (`norm=`, `LayerOps`): `exact = true` runs it as
that kernel's prologue, torch's ops as a step of its own. What a layer passes on is the residual
stream x, h (what `hidden_layers` returns), never the normed rows.

Parameter names follow the Hugging Face checkpoints (`self_attn.q_proj`, `mlp.gate_proj`, ...) so a
state dict loads without renaming. Inputs are flat token rows [N, H] (one sequence, no batch dim).
Under tensor parallelism (parallel.py) a layer holds its rank's heads and channels, and `reduce`
sums the o and down projections' partial outputs over the ranks before the residual add.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.interfaces import AttentionBackend, AttentionMeta, KVCache
from .config import DecoderConfig
from .ops import LayerOps, Norm, TorchOps


class RMSNorm(nn.Module):
    """y = w * (x / sqrt(mean(x^2) + eps)); the statistic in float32, the product in x's dtype."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, ops: LayerOps = TorchOps()) -> torch.Tensor:
        return ops.rmsnorm(x, self.weight, self.eps)

    @property
    def prologue(self) -> Norm:
        """(weight [H], eps): this norm handed to the projection that follows it (`norm=`)."""
        return self.weight, self.eps


class Attention(nn.Module):
    """GQA self-attention over the KV cache: Hq query heads share Hkv key/value heads."""

    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        q_out, kv_out = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, q_out, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_out, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_out, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q_out, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:  # Qwen3: RMSNorm over each head's D features, before RoPE
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.register_buffer("qkv_weight", None, persistent=False)  # by `fuse`: [Hq·D + 2·Hkv·D, H]
        self.register_buffer("qkv_bias", None, persistent=False)  # by `fuse`: [Hq·D + 2·Hkv·D] or None
        self.reduce: nn.Module | None = None  # tensor parallelism: the all-reduce after o_proj (parallel.py)

    def fuse(self) -> None:
        """One projection for q, k and v: a [Hq·D + 2·Hkv·D, H] weight whose row blocks are
        q_proj, k_proj, v_proj (their parameters become views of it: no second copy). Idempotent."""
        if self.qkv_weight is not None:
            return
        self.qkv_weight = _fused(self.q_proj, self.k_proj, self.v_proj, "weight")
        if self.q_proj.bias is not None:
            self.qkv_bias = _fused(self.q_proj, self.k_proj, self.v_proj, "bias")

    def forward(
        self,
        x: torch.Tensor,
        norm: Norm,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention: AttentionBackend,
        cache: KVCache,
        meta: AttentionMeta,
        ops: LayerOps,
    ) -> torch.Tensor:
        """x [N, H] (the residual stream), norm the input norm, cos/sin [N, 1, D]
        -> x + attention(rmsnorm(x)) [N, H]. Writes this layer's pending K/V into `cache`."""
        n = x.shape[0]
        qkv = ops.linear(x, self.qkv_weight, self.qkv_bias, norm=norm)  # [N, Hq·D + 2·Hkv·D]
        qk_norm = None
        if self.q_norm is not None:
            qk_norm = (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps)
        heads = (self.num_heads, self.num_kv_heads, self.head_dim)
        out = ops.rope_attend(qkv, heads, cos, sin, qk_norm, cache, self.layer, meta, attention, self.scale)  # [N, Hq, D]
        if out is None:  # the two steps
            q = ops.rope_write(qkv, heads, cos, sin, qk_norm, cache, self.layer, meta)  # [N, Hq, D]; K/V written
            out = attention.attend(q, cache, self.layer, meta, self.scale)  # [N, Hq, D]
        out = out.reshape(n, self.num_heads * self.head_dim)  # [N, Hq·D]
        if self.reduce is None:
            return ops.linear(out, self.o_proj.weight, self.o_proj.bias, residual=x)
        return x + self.reduce(ops.linear(out, self.o_proj.weight, self.o_proj.bias))  # x + Σ_r partial_r


class MLP(nn.Module):
    """SwiGLU: down( silu(gate(x)) * up(x) ), gate and up as one [2I, H] projection."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.register_buffer("gate_up_weight", None, persistent=False)  # by `fuse`: [2I, H]
        self.register_buffer("gate_up_bias", None, persistent=False)  # by `fuse`: [2I] or None
        self.reduce: nn.Module | None = None  # tensor parallelism: the all-reduce after down_proj (parallel.py)

    def fuse(self) -> None:
        """gate_proj and up_proj as one weight [2I, H] (their parameters become views of it). Idempotent."""
        if self.gate_up_weight is not None:
            return
        self.gate_up_weight = _fused(self.gate_proj, self.up_proj, "weight")
        if self.gate_proj.bias is not None:
            self.gate_up_bias = _fused(self.gate_proj, self.up_proj, "bias")

    def forward(self, h: torch.Tensor, norm: Norm, ops: LayerOps) -> torch.Tensor:
        """h [N, H] (the residual stream), norm the post-attention norm -> h + mlp(rmsnorm(h)) [N, H]."""
        act = ops.swiglu(h, self.gate_up_weight, self.gate_up_bias, norm=norm)  # [N, I]
        if self.reduce is None:
            return ops.linear(act, self.down_proj.weight, self.down_proj.bias, residual=h)
        return h + self.reduce(ops.linear(act, self.down_proj.weight, self.down_proj.bias))  # h + Σ_r partial_r


def _fused(*parts) -> torch.Tensor:
    """parts = (linear, ..., "weight" | "bias"): their tensors stacked along dim 0 into one new
    tensor, each linear's parameter re-pointed at its rows of it."""
    *layers, name = parts
    fused = torch.cat([getattr(layer, name).data for layer in layers])
    start = 0
    for layer in layers:
        rows = getattr(layer, name).shape[0]
        setattr(layer, name, nn.Parameter(fused[start : start + rows], requires_grad=False))
        start += rows
    return fused


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def fuse(self) -> None:
        self.self_attn.fuse()
        self.mlp.fuse()

    def forward(self, x, cos, sin, attention, cache, meta, ops: LayerOps) -> torch.Tensor:
        """x [N, H] -> [N, H]. The norms happen inside q/k/v and gate/up (`norm=`), the residual adds
        inside o_proj and down_proj (`residual=`)."""
        h = self.self_attn(x, self.input_layernorm.prologue, cos, sin, attention, cache, meta, ops)  # x + attn
        return self.mlp(h, self.post_attention_layernorm.prologue, ops)  # h + mlp
