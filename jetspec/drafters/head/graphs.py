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
The drafter owns this object and passes the cache's version and its own step at each call:
nothing here holds the drafter or its cache.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ...core.cuda_graphs import GraphSet

APPEND_ROWS = 32  # a round commits at most max depth + 1 tokens (16 + 1 with lookup chains); prefill is eager

Draft = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (root [1], anchor [1]) -> (logp, tokens)
Write = Callable[[torch.Tensor, torch.Tensor], None]  # (hidden [R, k, H], start [1]) -> K/V written


class HeadGraphs:
    append_rows = APPEND_ROWS

    def __init__(self, device: torch.device, dtype: torch.dtype, num_hidden_layers: int, hidden_size: int):
        self.root = torch.zeros(1, dtype=torch.int64, device=device)  # [1]
        self.anchor = torch.zeros(1, dtype=torch.int64, device=device)  # [1]
        self.start = torch.zeros(1, dtype=torch.int64, device=device)  # [1]
        self.hidden = torch.zeros(APPEND_ROWS, num_hidden_layers, hidden_size, dtype=dtype, device=device)  # [R, k, H]
        self.graphs = GraphSet()  # key (buffer version, step[, depths]) -> graph, static outputs

    def _replay(self, version: int, key: tuple, fn: Callable[[], Any]) -> Any:
        key = (version, *key)
        if key not in self.graphs:
            self.graphs.drop(lambda k: k[0] != version)  # graphs of buffers that no longer exist
        return self.graphs.replay(key, fn)

    def draft(self, version: int, root: int | torch.Tensor, anchor: int | torch.Tensor, depths: int,
              draft: Draft) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logp, tokens) [depths, k] of `draft` over the static root and anchor, views into graph
        memory valid until the next replay. `version`: the context buffers' (a new one recaptures).
        root, anchor: host integers, or [1] int64 on the device (a draft queued ahead: no sync)."""
        for static, value in ((self.root, root), (self.anchor, anchor)):
            static.copy_(value) if isinstance(value, torch.Tensor) else static.fill_(value)
        return self._replay(version, ("draft", depths), lambda: draft(self.root, self.anchor))

    def append(self, version: int, rows: torch.Tensor, start: int, write: Write) -> None:
        """rows [n, k, H], n <= APPEND_ROWS: `write` of the padded rows at `start` (the caller made room
        for APPEND_ROWS rows there and advances the length)."""
        self.hidden[: rows.shape[0]].copy_(rows)
        self.start.fill_(start)
        self._replay(version, ("append",), lambda: write(self.hidden, self.start))
