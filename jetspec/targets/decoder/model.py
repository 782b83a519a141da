"""`DecoderModel` (the weights) and `DecoderTarget` (the `Target` the pipeline drives).

    x_0 = embed(tokens)                                   [N, H]
    x_l = layer_l(x_{l-1})   l = 1..L                     K/V of layer l written to the cache
    logits = lm_head( rmsnorm(x_L) )                      [N, V]

`hidden_layers=(l, ...)` returns x_{l+1}, the output of decoder layer l (0-based) — transformers'
`hidden_states[l + 1]` for l < L-1. For the last layer it is the output BEFORE the final norm
(transformers' last hidden state is after it).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...core.errors import InputError
from ...core.interfaces import AttentionBackend, AttentionMeta, KVCache, TargetInfo, TargetOutput
from .config import DecoderConfig
from .layers import DecoderLayer, RMSNorm
from .rope import RotaryTable



_MM_OUT_DTYPE = True  # torch.mm(..., out_dtype=float32) works here; set False after its first failure


def fp32_logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """h [..., H] @ weight[V, H]^T -> logits [..., V] float32.

    In bf16/fp16 on CUDA the GEMM's fp32 accumulator is returned as it is (`out_dtype`) instead of
    being rounded to bf16 first. bf16 logits keep 8 significant bits — steps of 0.125 around 20 —
    so two tokens often tie exactly, and which of them argmax picks then depends on reduction
    order: most of the bf16 speculative-vs-plain differences of the H200 run of 2026-11-28 were
    such exact ties (choice gap 0). Elsewhere: the product in the weights' dtype, upcast."""
    global _MM_OUT_DTYPE
    if not (h.is_cuda and h.dtype in (torch.bfloat16, torch.float16)):
        return torch.nn.functional.linear(h, weight).float()
    if _MM_OUT_DTYPE:
        try:
            flat = h.reshape(-1, h.shape[-1])  # [n, H]
            return torch.mm(flat, weight.t(), out_dtype=torch.float32).view(*h.shape[:-1], weight.shape[0])
        except (RuntimeError, TypeError, NotImplementedError):  # a torch without mm's out_dtype on this GPU
            _MM_OUT_DTYPE = False
    return torch.nn.functional.linear(h.float(), weight.float())


class DecoderModel(nn.Module):
    """Parameters named like the HF checkpoint with the leading `model.` dropped."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight


class DecoderTarget:
    """A Llama / Qwen2 / Qwen3 decoder as a `Target`: attention through `attention`, K/V through
    the cache passed to `forward` (the caller has already called `cache.begin(N)`)."""

    provides = ("hidden_states", "attention_backend")

    def __init__(
        self,
        model: DecoderModel,
        attention: AttentionBackend,
        info: TargetInfo,
        tokenizer: Any | None = None,
        cuda_graphs: bool = True,
    ):
        self.model = model.eval().requires_grad_(False)  # frozen: heads train through embed/lm_head
        self.cfg = model.cfg
        self.attention = attention
        self.info = info
        self.tokenizer = tokenizer
        self.rotary = RotaryTable(self.cfg.rope, self.cfg.head_dim, self.cfg.max_positions, info.dtype, info.device)
        self.graphs = None
        if cuda_graphs and info.device.type == "cuda" and getattr(attention, "graph_safe", False):
            from .graphs import CudaGraphForward

            self.graphs = CudaGraphForward(self, self._forward)

    @property
    def extra_pending(self) -> int:
        """Pending KV slots a forward may use beyond its N tokens (CUDA-graph padding)."""
        return self.graphs.max_padding if self.graphs is not None else 0

    @torch.no_grad()
    def forward(
        self,
        tokens: torch.Tensor,
        meta: AttentionMeta,
        cache: KVCache,
        hidden_layers: Sequence[int] = (),
    ) -> TargetOutput:
        """tokens [N] int64 -> logits [N, V] float32, hidden [N, k, H] (model dtype) or None.
        On CUDA with a graph-safe attention backend and cache, replays a captured graph."""
        if self.graphs is not None and self.graphs.handles(tokens.numel(), cache):
            return self.graphs.forward(tokens, meta, cache, hidden_layers)
        return self._forward(tokens, meta, cache, hidden_layers)

    def _forward(self, tokens: torch.Tensor, meta: AttentionMeta, cache: KVCache, hidden_layers: Sequence[int]) -> TargetOutput:
        wanted = set(hidden_layers)
        if any(not 0 <= l < self.cfg.num_layers for l in wanted):
            raise InputError(f"hidden_layers {list(hidden_layers)} out of range 0..{self.cfg.num_layers - 1}")
        cos, sin = self.rotary.at(meta.positions)  # [N, 1, D] each
        x = self.model.embed_tokens(tokens)  # [N, H]
        kept: dict[int, torch.Tensor] = {}
        for l, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, self.attention, cache, meta)
            if l in wanted:
                kept[l] = x
        logits = fp32_logits(self.model.norm(x), self.model.lm_head.weight)  # [N, V]
        hidden = torch.stack([kept[l] for l in hidden_layers], dim=1) if kept else None  # [N, k, H]
        return TargetOutput(logits=logits, hidden=hidden)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [...] int64 -> [..., H]: the target's input embedding (draft heads share it)."""
        return self.model.embed_tokens(tokens)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> logits [..., V] float32: the output projection alone, no final norm
        (a draft head applies its own norm first). Gradients flow to `hidden`, not to the weights."""
        return fp32_logits(hidden, self.model.lm_head.weight)
