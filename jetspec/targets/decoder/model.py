"""`DecoderModel` (the weights) and `DecoderTarget` (the `Target` the pipeline drives).

    x_0 = embed(tokens)                                   [N, H]
    x_l = layer_l(x_{l-1})   l = 1..L                     K/V of layer l written to the cache
    logits = lm_head( rmsnorm(x_L) )                      [N, V]

`hidden_layers=(l, ...)` returns x_{l+1}, the output of decoder layer l (0-based) — transformers'
`hidden_states[l + 1]` for l < L-1. For the last layer it is the output BEFORE the final norm
(transformers' last hidden state is after it).
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import torch
from torch import nn

from ...core.batch import BatchMeta, PackedAttention, PackedKV, batch_attention_problem
from ...core.distributed import Ranks
from ...core.errors import IncompatibleError, InputError
from ...core.interfaces import (AttendsPackedTables, AttentionBackend, AttentionMeta, BatchedAttention, KVCache,
                                LaunchForms, TargetInfo, TargetOutput, is_graph_safe)
from ...kernels.invariant_launch_forms import key_bytes
from .batch_graphs import BatchGraphForward
from .config import DecoderConfig
from .graphs import CudaGraphForward, GraphCaptureFailed
from .layers import DecoderLayer, RMSNorm
from .ops import InvariantOps, LayerOps, TorchOps, fp32_logits
from .rope import RotaryTable



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
    the cache passed to `forward` (the caller has already called `cache.begin(N)`).

    `info.exact`: the linear layers (the norms in their prologues, residual adds and SiLU·mul in
    their epilogues) and RoPE with the K/V write run our row-invariant kernels and `attention` is
    a backend's position-invariant mode, so every token's logits are bit for bit those of a
    one-token step at the same prefix — in a packed batch of several sequences too (`forward_batch`).

    `ranks` (`SpansRanks`): the group this target is split over (`parallel.py`; `model` then
    holds this rank's slices), or None in one process, where the forward makes no collective."""

    provides = ("hidden_states", "attention_backend")

    def __init__(
        self,
        model: DecoderModel,
        attention: AttentionBackend,
        info: TargetInfo,
        tokenizer: Any | None = None,
        cuda_graphs: bool = True,
        ranks: Ranks | None = None,
        linear_chunk: int | None = None,
    ):
        self.ranks = ranks
        if ranks is not None:
            from .parallel import parallelize

            parallelize(model, ranks)
        self.model = model.eval().requires_grad_(False)  # frozen: heads train through embed/lm_head
        self.cfg = model.cfg
        self.attention = attention
        self.info = info
        self.tokenizer = tokenizer
        self.ops: LayerOps = InvariantOps(linear_chunk) if info.exact else TorchOps()
        for layer in self.model.layers:
            layer.fuse()  # q/k/v and gate/up as one projection each
            if info.device.type == "cuda":  # hand the parts' freed blocks back now: the next layer's fused weight
                torch.cuda.empty_cache()  # is larger than any of them, so kept cached they would add up layer by layer
        self.rotary = RotaryTable(self.cfg.rope, self.cfg.head_dim, self.cfg.max_positions, info.dtype, info.device)
        self.graphs = None
        self._forms = attention if isinstance(attention, LaunchForms) else None  # checked once: a Protocol check is slow
        self._key_bytes = key_bytes(info.kv_heads_here, info.head_dim, info.dtype.itemsize)  # a cached key, one layer
        if cuda_graphs and info.device.type == "cuda" and is_graph_safe(attention):
            self.graphs = CudaGraphForward(info.device)
        self.batch_graphs = None  # the packed forward's graphs: exact mode, a backend that reads static tables
        if cuda_graphs and info.device.type == "cuda" and info.exact and isinstance(attention, AttendsPackedTables):
            self.batch_graphs = BatchGraphForward(info.device, attention, self.cfg.num_heads // self.cfg.num_kv_heads,
                                                  info.kv_heads_here, self._key_bytes)

    def launch_form(self, b: int, prefix_len: int) -> int:
        """The attention's launch form for a graphed forward of bucket b at T = prefix_len, which the
        graph's key holds (`LaunchForms`; 0 for a backend of one form): b * group packed rows, a
        chain when b = 1 (as the graph's meta is)."""
        if self._forms is None:
            return 0
        return self._forms.launch_form(b * (self.cfg.num_heads // self.cfg.num_kv_heads), prefix_len, b == 1, self._key_bytes)

    @property
    def extra_pending(self) -> int:
        """Pending KV slots a forward may use beyond its N tokens (CUDA-graph padding)."""
        return self.graphs.max_padding if self.graphs is not None else 0

    def pending_for(self, n: int, cache: KVCache) -> int:
        """`PadsForward`: the pending slots a forward of n tokens writes — its graph's bucket when one replays it."""
        return self.graphs.bucket(n) if self.graphs is not None and self.graphs.handles(n, cache) else n

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
            try:
                return self.graphs.forward(tokens, meta, cache, hidden_layers, self._forward, self.launch_form)
            except GraphCaptureFailed as e:  # keep generating: eager for good, said once
                print(f"jetspec: {e}", file=sys.stderr)
                self.graphs = None
                cache.begin(tokens.numel())
        return self._forward(tokens, meta, cache, hidden_layers)

    def batch_problem(self) -> str | None:
        """`BatchedTarget`: why `forward_batch` cannot run, or None."""
        if self.ranks is not None:  # the pipeline shares a round's tree and path between ranks; the batched engine does not
            return "tensor_parallel > 1 verifies one sequence at a time; batched decoding runs on one GPU (tensor_parallel = 1)"
        if self.info.exact and not isinstance(self.attention, BatchedAttention):
            return (f"attention {type(self.attention).__name__} has no batched form (attend_batch); batched decoding "
                    "(batch_size > 1) with exact = true runs with attention 'triton' over a 'paged' cache")
        return batch_attention_problem(self.attention)

    @torch.no_grad()
    def forward_batch(self, tokens: torch.Tensor, meta: BatchMeta, caches: Sequence[KVCache],
                      hidden_layers: Sequence[int] = ()) -> TargetOutput:
        """`BatchedTarget`: tokens [R] int64, the packed trees of S sequences -> logits [R, V]
        float32, hidden [R, k, H] or None. Every layer but attention is row-wise, and attention goes
        to the backend's `attend_batch`; on CUDA in exact mode a captured graph per row bucket
        replays it (`batch_graphs.py`; sequences of one page pool, up to 2048 rows), else eagerly.

        With `info.exact` a row's bits are those of its own sequence's `forward`, and so of plain
        one-token steps: the linear, norm and rope_write kernels are row-invariant (rope_write
        writes row r's K/V to its own sequence's pending pool row, `PackedKV.shared_rows`), and
        `attend_batch` in position-invariant mode reduces each row over its own sequence's prefix
        and ancestors in the order one sequence's launch would. Launches per layer as for one
        sequence, whatever S: the seven row-invariant kernels and one or two of attention."""
        problem = self.batch_problem()
        if problem:
            raise IncompatibleError(problem)
        if self.batch_graphs is not None and self.batch_graphs.handles(meta, caches):
            try:
                return self.batch_graphs.forward(tokens, meta, caches, hidden_layers, self._forward)
            except GraphCaptureFailed as e:  # keep generating: eager for good, said once
                print(f"jetspec: {e}", file=sys.stderr)
                self.batch_graphs = None
        return self._forward(tokens, meta, PackedKV(caches, meta), hidden_layers, PackedAttention(self.attention))

    def _forward(self, tokens: torch.Tensor, meta: AttentionMeta | BatchMeta, cache: KVCache | PackedKV,
                 hidden_layers: Sequence[int], attention: AttentionBackend | None = None) -> TargetOutput:
        attention = attention or self.attention
        wanted = set(hidden_layers)
        if any(not 0 <= l < self.cfg.num_layers for l in wanted):
            raise InputError(f"hidden_layers {list(hidden_layers)} out of range 0..{self.cfg.num_layers - 1}")
        cos, sin = self.rotary.at(meta.positions)  # [N, 1, D] each
        x = self.model.embed_tokens(tokens)  # [N, H]
        kept: dict[int, torch.Tensor] = {}
        for l, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, attention, cache, meta, self.ops)
            if l in wanted:
                kept[l] = x
        logits = self.ops.logits(x, self.model.lm_head.weight, norm=self.model.norm.prologue)  # [N, V]
        hidden = torch.stack([kept[l] for l in hidden_layers], dim=1) if kept else None  # [N, k, H]
        return TargetOutput(logits=logits, hidden=hidden)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [...] int64 -> [..., H]: the target's input embedding (draft heads share it)."""
        return self.model.embed_tokens(tokens)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> logits [..., V] float32: the output projection alone, no final norm
        (a draft head applies its own norm first). Gradients flow to `hidden`, not to the weights."""
        return fp32_logits(hidden, self.model.lm_head.weight)
