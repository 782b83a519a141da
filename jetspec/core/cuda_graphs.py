"""`capture`: record a function's GPU work once as a CUDA graph, to replay it for the price of
one launch; `GraphSet`: one owner's graphs by key, in one memory pool. The target's forward (per
query-count bucket) and the draft heads' one-forward draft and context append (per context
buffer) both go through here, so warm-up and memory-pool handling exist once.

    graph, out = capture(fn, pool)     # fn() ran twice: warm-up on a side stream, then captured
    ... refresh the static inputs fn reads ...
    graph.replay()                     # out (static tensors) now holds fn's results for them

Rules for `fn`: every input is a tensor whose storage outlives the graph (static buffers refreshed
before each replay); no host synchronisation (`.item()`, `.tolist()`, data-dependent shapes).
"""

from __future__ import annotations

import time
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


class GraphSet:
    """The CUDA graphs of one owner (a target's forward, a head drafter's per-round steps): each
    captured on first use under a key and replayed after, all in one memory pool (the first graph's).

        graphs = GraphSet()
        out = graphs.replay(key, fn)      # fn captured once per key (its static outputs returned)

    The owner passes its own work as `fn` at each call; the set keeps graphs, outputs and the
    pool, nothing of the owner."""

    everywhere = [0, 0.0]  # captures and their seconds over every set of the process (a bench's one-off costs)
    log: list[tuple[str, str, float]] | None = None  # a list: every capture of the process appends (its fn's name, key, seconds)

    def __init__(self) -> None:
        self.pool: Any = None
        self._graphs: dict[Any, tuple[torch.cuda.CUDAGraph, Any]] = {}
        self.captures = 0  # graphs captured so far (a dropped one captured again counts again)
        self.capture_seconds = 0.0  # host wall time spent capturing them (warm-up runs included)

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key: Any) -> bool:
        return key in self._graphs

    def captured(self, key: Any, fn: Callable[[], Any]) -> Any:
        """fn's static outputs under `key`, capturing it now if it is new (without a replay)."""
        if key not in self._graphs:
            t0 = time.perf_counter()
            self._graphs[key] = capture(fn, self.pool)
            seconds = time.perf_counter() - t0
            self.captures += 1
            self.capture_seconds += seconds
            GraphSet.everywhere[0] += 1
            GraphSet.everywhere[1] += seconds
            if GraphSet.log is not None:  # which graphs a run captures, and why (a bench's `--captures`)
                GraphSet.log.append((getattr(fn, "__qualname__", type(fn).__name__), repr(key), seconds))
            if self.pool is None:  # later captures share this graph's pool; replays never overlap
                self.pool = self._graphs[key][0].pool()
        return self._graphs[key][1]

    def replay(self, key: Any, fn: Callable[[], Any]) -> Any:
        """Replay the graph of `key` (captured from fn if new) -> its static outputs, refreshed."""
        out = self.captured(key, fn)
        self._graphs[key][0].replay()
        return out

    def drop(self, stale: Callable[[Any], bool]) -> None:
        """Forget the graphs whose key is stale (their buffers no longer exist). The pool stays while
        a graph still holds it; with the last one gone it is dead (the allocator asserts on a capture
        into a pool no live graph holds, even while its static outputs are still referenced), so the
        next capture starts a new one."""
        for key in [k for k in self._graphs if stale(k)]:
            del self._graphs[key]
        if not self._graphs:
            self.pool = None

    def clear(self) -> None:
        """Forget every graph and the pool with them (reusing a dead pool's id trips the allocator)."""
        self._graphs.clear()
        self.pool = None
