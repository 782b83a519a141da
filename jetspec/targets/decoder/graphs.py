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
(token 0, position T, size 1 each): by the interval rule j <= i < j + size[j], a pad sees the
prefix and itself and no real node sees a pad (pads come after every real node and own no
subtree), so the real nodes' outputs are exactly those of an N-node forward. Pad K/V go to
pending slots that commit discards: the caller reserves B of them (`pending_for`, `PadsForward`),
or `forward` re-reserves. The pads are written every forward (three fills): leaving an earlier
tree's values there instead faulted a non-exact replay on the GPU (bench/RESULTS.md).
Outputs are views into graph memory, valid until the next forward.

An attention backend with several launch forms (`LaunchForms`: the exact triton kernel's one
launch or two, by the tree's size and T) is recorded in one form per capture: the key holds the
form the model's `form(B, T)` names (passed per call, as the eager forward), and a replay whose T
wants the other form captures it once.

Graphs are kept per (KV cache, hidden layers, bucket, form), so pipelines sharing one target (a bench
sweep) do not recapture; the first forward on a new (cache, hidden layers) captures every bucket
that fits the cache at once, so that capture cost falls in warm-up, not in timed rounds.

Requirements: a CUDA device, an attention backend and a KV cache that declare `graph_safe`
(the model makes this object only for a graph-safe backend; `handles` checks the cache).
The model owns this object and passes its eager forward at each call: nothing here holds or
changes the model. A capture that fails raises `GraphCaptureFailed`; the model goes eager.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Sequence

import torch

from ...core.cuda_graphs import GraphSet
from ...core.errors import CapacityError, JetSpecError
from ...core.interfaces import AttentionMeta, KVCache, TargetOutput, is_graph_safe

Eager = Callable[[torch.Tensor, AttentionMeta, KVCache, Sequence[int]], TargetOutput]  # the model's forward without graphs
Form = Callable[[int, int], int]  # (bucket, T) -> the attention's launch form there (the model's `launch_form`)

BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class GraphCaptureFailed(JetSpecError):
    """Capturing the forward failed (the model runs eagerly from then on)."""


class CudaGraphForward:
    def __init__(self, device: torch.device, buckets: Sequence[int] = BUCKETS):
        self.buckets = tuple(sorted(buckets))
        b = self.buckets[-1]
        self.tokens = torch.zeros(b, dtype=torch.int64, device=device)  # [B]
        self.positions = torch.zeros(b, dtype=torch.int64, device=device)  # [B]
        self.sizes = torch.ones(b, dtype=torch.int32, device=device)  # [B]
        self.prefix = torch.zeros(1, dtype=torch.int32, device=device)  # [1]
        self.graphs = GraphSet()  # key (cache id, hidden layers, bucket, form) -> graph, static TargetOutput
        self.caches: dict[int, KVCache] = {}  # id -> cache, kept alive while its graphs are
        self.seen: set[tuple[int, tuple[int, ...]]] = set()  # (cache id, hidden layers) whose buckets were captured at once

    @property
    def max_padding(self) -> int:
        """Extra pending slots a padded forward may use beyond N."""
        return max(b - a - 1 for a, b in zip((0,) + self.buckets, self.buckets))

    def bucket(self, n: int) -> int:
        """The size of the graph that serves n queries (n <= the largest bucket)."""
        return self.buckets[bisect_left(self.buckets, n)]

    def handles(self, n: int, cache: KVCache) -> bool:
        """A replay can serve n queries: a bucket holds them, the cache has room for the padded
        bucket (not so for a prefill near capacity), and the cache is graph-safe."""
        if n > self.buckets[-1] or self.bucket(n) > cache.capacity - cache.committed:
            return False
        return self.caches.get(id(cache)) is cache or is_graph_safe(cache)  # one with graphs was checked (a Protocol check is slow)

    def forward(self, tokens: torch.Tensor, meta: AttentionMeta, cache: KVCache, hidden_layers: Sequence[int], eager: Eager,
                form: Form) -> TargetOutput:
        n = tokens.numel()
        b = self.bucket(n)
        hidden_layers = tuple(hidden_layers)
        if (id(cache), hidden_layers) not in self.seen:
            try:
                self._capture_all(n, meta, cache, hidden_layers, eager, form)
            except RuntimeError as e:
                raise GraphCaptureFailed(f"CUDA graph capture failed, running eagerly: {str(e).splitlines()[0]}") from e
        if cache.pending < b:
            cache.begin(b)  # the caller reserved n: the pads need pending slots too
        self.tokens[:n].copy_(tokens, non_blocking=True)
        self.positions[:n].copy_(meta.positions, non_blocking=True)
        self.sizes[:n].copy_(meta.subtree_sizes, non_blocking=True)
        if b > n:  # the pads: token 0, position T, their own subtree
            self.tokens[n:b].zero_()
            self.positions[n:b].fill_(meta.prefix_len)
            self.sizes[n:b].fill_(1)
        self.prefix.fill_(meta.prefix_len)
        key = (id(cache), hidden_layers, b, form(b, meta.prefix_len))
        out = self.graphs.replay(key, lambda: self._bucket(b, meta.prefix_len, cache, hidden_layers, eager))
        return TargetOutput(logits=out.logits[:n], hidden=None if out.hidden is None else out.hidden[:n])

    def _capture_all(self, n: int, meta: AttentionMeta, cache: KVCache, hidden_layers: tuple[int, ...], eager: Eager,
                     form: Form) -> None:
        """Capture every bucket that fits the cache now (pending slots left), then restore the
        caller's reservation (n slots, or n's bucket)."""
        if len(self.caches) >= 64:  # a long-lived target seeing many caches: start over
            self.graphs.clear()
            self.caches.clear()
            self.seen.clear()
        self.caches[id(cache)] = cache
        reserved = max(cache.pending, n)
        room = cache.capacity - cache.committed
        self.positions.fill_(meta.prefix_len)
        self.sizes.fill_(1)
        self.prefix.fill_(meta.prefix_len)
        for b in self.buckets:
            if b > room:
                break
            try:
                cache.begin(b)
            except CapacityError:  # e.g. a paged pool without pages to spare: capture it later
                break
            self.graphs.captured((id(cache), hidden_layers, b, form(b, meta.prefix_len)),
                                 lambda b=b: self._bucket(b, meta.prefix_len, cache, hidden_layers, eager))
        self.seen.add((id(cache), hidden_layers))
        cache.begin(reserved)

    def _bucket(self, b: int, prefix_len: int, cache: KVCache, hidden_layers: tuple[int, ...], eager: Eager) -> TargetOutput:
        """The forward of bucket b over the static buffers (what a capture records; a replay runs none of this)."""
        meta = AttentionMeta(prefix_len, self.positions[:b], self.sizes[:b], prefix_len_t=self.prefix)
        return eager(self.tokens[:b], meta, cache, hidden_layers)
