"""CUDA graphs of a parallel head's one-forward draft (`HeadDrafter.draft_block`).

Eagerly, a draft is ~100 small kernels (2 head layers, the LM head over the depth slots, top-k),
each paying a launch and Python dispatch: ~3 ms a round on the H200 in the run of 2026-11-28,
about as long as verifying the tree. Its shapes change every round only because the context
grows; so the graph attends over the context cache's whole buffer instead and masks the keys
at or past the anchor (block_mask: context key t is visible iff t < anchor). Static inputs:

    root   [1] int64   the anchor's token (the last committed token)
    anchor [1] int64   a = committed context length = the anchor's RoPE position

One graph per (context buffer version, depth slots): the buffer is reallocated only when the
context outgrows it (doubling), and the depth count is min(budget, B - 1), fixed for a run. Keys
past `length` are zeros or stale rows, finite, and get probability exactly 0, so a replay
computes what the eager draft over the exact context computes, up to float reduction order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...core.cuda_graphs import capture

if TYPE_CHECKING:
    from .drafter import HeadDrafter


class BlockGraphs:
    def __init__(self, drafter: "HeadDrafter"):
        self.drafter = drafter
        dev = drafter.cache._device
        self.root = torch.zeros(1, dtype=torch.int64, device=dev)  # [1]
        self.anchor = torch.zeros(1, dtype=torch.int64, device=dev)  # [1]
        self.pool: Any = None
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, torch.Tensor]]] = {}

    def __call__(self, root: int, anchor: int, depths: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logp, tokens) [depths, k], views into graph memory valid until the next replay."""
        cache = self.drafter.cache
        key = (cache.version, depths)
        self.root.fill_(root)
        self.anchor.fill_(anchor)
        if key not in self.graphs:
            stale = [k for k in self.graphs if k[0] != cache.version]
            for k in stale:  # graphs of a buffer that no longer exists
                del self.graphs[k]
            fn = lambda: self.drafter.draft_block(self.root, self.anchor, cache.buffers(), depths)  # noqa: E731
            self.graphs[key] = capture(fn, self.pool)
            if self.pool is None:
                self.pool = self.graphs[key][0].pool()
        graph, out = self.graphs[key]
        graph.replay()
        return out
