"""CUDA graphs for the decoder's forward: one graph per query-count bucket.

A decode round of a small model is launch-bound (SmolLM2: 30 layers x ~15 kernels). Capturing
the whole forward once per bucket size B and replaying it removes that overhead. Everything a
replay reads lives in static buffers that are refreshed eagerly before it:

    tokens    [B] int64   the tree's tokens, then padding
    positions [B] int64   RoPE positions (prefix_len + depth)
    sizes     [B] int32   DFS subtree sizes (the tree mask)
    prefix    [1] int32   T, the committed length (kernels read it from memory)
    cache._write_rows     where each pending token's K/V goes (set by `cache.begin`), for
                          `cache.write`; the exact path's fused write (`invariant/rope_write.py`)
                          reads `cache.slot_table` at T + j, T from `prefix`

A tree of N < B nodes is padded with B - N single-node "pad" leaves after it in pre-order
(size 1 each): by the interval rule j <= i < j + size[j], a pad sees the prefix and itself and
no real node sees a pad (pads come after every real node and own no subtree), so the real
nodes' outputs are exactly those of an N-node forward. Pad K/V go to pending slots that commit
discards. Outputs are views into graph memory, valid until the next forward.

Graphs are kept per (KV cache, hidden layers, bucket), so pipelines sharing one target (a bench
sweep) do not recapture; the first forward on a new (cache, hidden layers) captures every bucket
that fits the cache at once, so that capture cost falls in warm-up, not in timed rounds.

Requirements: a CUDA device, an attention backend and a KV cache that declare `graph_safe`.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ...core.cuda_graphs import capture
from ...core.errors import CapacityError
from ...core.interfaces import AttentionMeta, KVCache, TargetOutput, is_graph_safe

if TYPE_CHECKING:
    from .model import DecoderTarget

BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class CudaGraphForward:
    def __init__(self, target: "DecoderTarget", eager: Callable[..., TargetOutput], buckets: Sequence[int] = BUCKETS):
        self.target = target
        self.eager = eager  # forward(tokens, meta, cache, hidden_layers) without graphs
        self.buckets = tuple(sorted(buckets))
        dev = target.info.device
        b = self.buckets[-1]
        self.tokens = torch.zeros(b, dtype=torch.int64, device=dev)  # [B]
        self.positions = torch.zeros(b, dtype=torch.int64, device=dev)  # [B]
        self.sizes = torch.ones(b, dtype=torch.int32, device=dev)  # [B]
        self.prefix = torch.zeros(1, dtype=torch.int32, device=dev)  # [1]
        self.pool = None  # memory pool shared by all captures: the first graph's (see _capture)
        # (cache id, hidden layers) -> {bucket: (graph, static outputs)}; caches kept alive here
        self.graphs: dict[tuple[int, tuple[int, ...]], dict[int, tuple[torch.cuda.CUDAGraph, TargetOutput]]] = {}
        self.caches: dict[int, KVCache] = {}

    @property
    def max_padding(self) -> int:
        """Extra pending slots a padded forward may use beyond N."""
        return max(b - a - 1 for a, b in zip((0,) + self.buckets, self.buckets))

    def handles(self, n: int, cache: KVCache) -> bool:
        """A replay can serve n queries: a bucket holds them, the cache has room for the padded
        bucket (not so for a prefill near capacity), and cache and attention are graph-safe."""
        if n > self.buckets[-1] or self.buckets[bisect_left(self.buckets, n)] > cache.capacity - cache.committed:
            return False
        return is_graph_safe(cache) and is_graph_safe(self.target.attention)

    def forward(self, tokens: torch.Tensor, meta: AttentionMeta, cache: KVCache, hidden_layers: Sequence[int]) -> TargetOutput:
        n = tokens.numel()
        b = self.buckets[bisect_left(self.buckets, n)]
        hidden_layers = tuple(hidden_layers)
        key = (id(cache), hidden_layers)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture_all(n, meta, cache, hidden_layers)
            except RuntimeError as e:  # keep generating: fall back to eager for good, say so once
                print(f"jetspec: CUDA graph capture failed, running eagerly: {str(e).splitlines()[0]}", file=sys.stderr)
                self.target.graphs = None
                cache.begin(n)
                return self.eager(tokens, meta, cache, hidden_layers)
        if b > n:
            cache.begin(b)  # re-reserve: the pads need pending slots too
        self.tokens[:n].copy_(tokens, non_blocking=True)
        self.positions[:n].copy_(meta.positions, non_blocking=True)
        self.sizes[:n].copy_(meta.subtree_sizes, non_blocking=True)
        if b > n:
            self.tokens[n:b].zero_()
            self.positions[n:b].fill_(meta.prefix_len)
            self.sizes[n:b].fill_(1)
        self.prefix.fill_(meta.prefix_len)
        graphs = self.graphs[key]
        if b not in graphs:
            graphs[b] = self._capture(b, meta.prefix_len, cache, hidden_layers)
        graph, out = graphs[b]
        graph.replay()
        return TargetOutput(logits=out.logits[:n], hidden=None if out.hidden is None else out.hidden[:n])

    def _capture_all(self, n: int, meta: AttentionMeta, cache: KVCache, hidden_layers: tuple[int, ...]):
        """Capture every bucket that fits the cache now (pending slots left), then restore the
        caller's reservation of n slots."""
        if len(self.caches) >= 64:  # a long-lived target seeing many caches: start over
            self.graphs.clear()
            self.caches.clear()
            self.pool = None  # the pool died with its graphs: reusing its id trips the allocator
        self.caches[id(cache)] = cache
        room = cache.capacity - cache.committed
        self.positions.fill_(meta.prefix_len)
        self.sizes.fill_(1)
        self.prefix.fill_(meta.prefix_len)
        graphs = {}
        for b in self.buckets:
            if b > room:
                break
            try:
                cache.begin(b)
            except CapacityError:  # e.g. a paged pool without pages to spare: capture it later
                break
            graphs[b] = self._capture(b, meta.prefix_len, cache, hidden_layers)
        cache.begin(n)
        return graphs

    def _capture(self, b: int, prefix_len: int, cache: KVCache, hidden_layers: tuple[int, ...]):
        meta = AttentionMeta(prefix_len, self.positions[:b], self.sizes[:b], prefix_len_t=self.prefix)
        graph, out = capture(lambda: self.eager(self.tokens[:b], meta, cache, hidden_layers), self.pool)
        if self.pool is None:  # later captures share this graph's pool; replays never overlap
            self.pool = graph.pool()
        return graph, out
