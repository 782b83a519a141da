"""`capture`: record a function's GPU work once as a CUDA graph, to replay it for the price of
one launch. The target's forward (per query-count bucket) and the draft heads' one-forward draft
(per context buffer) both go through here, so warm-up and memory-pool handling exist once.

    graph, out = capture(fn, pool)     # fn() ran twice: warm-up on a side stream, then captured
    ... refresh the static inputs fn reads ...
    graph.replay()                     # out (static tensors) now holds fn's results for them

Rules for `fn`: every input is a tensor whose storage outlives the graph (static buffers refreshed
before each replay); no host synchronisation (`.item()`, `.tolist()`, data-dependent shapes).
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def capture(fn: Callable[[], Any], pool: Any = None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """-> (graph, fn's outputs as captured). The warm-up run on a side stream compiles and
    autotunes kernels and settles lazy allocations outside the capture. `pool`: a memory pool
    shared with earlier graphs of the same owner (pass `graph.pool()` of its first graph; a
    fresh `graph_pool_handle()` per capture tripped an allocator assertion in torch 2.11). Graphs
    sharing a pool must never replay concurrently."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out
