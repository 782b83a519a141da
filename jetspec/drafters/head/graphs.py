"""CUDA graphs of a head drafter's two per-round steps: the context append (`observe`) and, for the
parallel heads, the one-forward draft (`HeadDrafter.draft_block`).

Eagerly each step is tens of small kernels, each paying a launch and Python dispatch. In the H200
speed run of 2026-12-01 (bf16, SmolLM2) that cost 0.6-0.7 ms a round for the draft — already
replayed from a graph there — and 1.1 ms for the eager append, against 0.26 ms for the whole
drafting of `ngram` (bench/RESULTS.md). Both steps have shapes that change every round only
through the context length, so a graph works on whole buffers:

* draft: attend over the context cache's whole buffer with the keys at or past the anchor masked
  (block_mask: context key t is visible iff t < anchor). Keys past `length` are zeros or stale
  rows, finite, and get probability exactly 0, so a replay computes what the eager draft over
  the exact context computes, up to float reduction order.
  static inputs: root [1] int64 (the anchor's token), anchor [1] int64 (a = context length)
* append: `write_context` of APPEND_ROWS rows, the committed ones first and then whatever the
  static buffer held: rows past the new `length` are written too, with finite values that a
  later append overwrites, which the invariant of `ContextCache` allows.
  static inputs: hidden [APPEND_ROWS, k, H], start [1] int64 (= length before the append)

One graph per (buffer version[, depth slots]): the buffers are reallocated only when the
context outgrows them (doubling), and the depth count is min(budget, B - 1), fixed for a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...core.cuda_graphs import capture

if TYPE_CHECKING:
    from .context import ContextDrafter

APPEND_ROWS = 32  # a round commits at most max depth + 1 tokens (16 + 1 with lookup chains); prefill is eager


class HeadGraphs:
    append_rows = APPEND_ROWS

    def __init__(self, drafter: "ContextDrafter"):
        self.drafter = drafter
        cache = drafter.cache
        dev = cache._device
        k, h = len(drafter.hidden_layers), drafter.config.hidden_size
        self.root = torch.zeros(1, dtype=torch.int64, device=dev)  # [1]
        self.anchor = torch.zeros(1, dtype=torch.int64, device=dev)  # [1]
        self.start = torch.zeros(1, dtype=torch.int64, device=dev)  # [1]
        self.hidden = torch.zeros(APPEND_ROWS, k, h, dtype=cache._dtype, device=dev)  # [R, k, H]
        self.pool: Any = None
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Any]] = {}

    def _replay(self, key: tuple, fn) -> Any:
        version = self.drafter.cache.version
        key = (version, *key)
        if key not in self.graphs:
            for stale in [k for k in self.graphs if k[0] != version]:  # graphs of buffers that no longer exist
                del self.graphs[stale]
            self.graphs[key] = capture(fn, self.pool)
            if self.pool is None:
                self.pool = self.graphs[key][0].pool()
        graph, out = self.graphs[key]
        graph.replay()
        return out

    def draft(self, root: int, anchor: int, depths: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logp, tokens) [depths, k], views into graph memory valid until the next replay."""
        self.root.fill_(root)
        self.anchor.fill_(anchor)
        cache = self.drafter.cache
        return self._replay(("draft", depths), lambda: self.drafter.draft_block(self.root, self.anchor, cache.buffers(), depths))

    def append(self, rows: torch.Tensor) -> None:
        """rows [n, k, H], n <= APPEND_ROWS: their K/V written at the cache's `length` (the caller
        advances it)."""
        cache = self.drafter.cache
        cache.reserve(cache.length + APPEND_ROWS)  # room for the padded write; may bump the version
        self.hidden[: rows.shape[0]].copy_(rows)
        self.start.fill_(cache.length)
        self._replay(("append",), lambda: self.drafter.write_context(self.hidden, self.start))
