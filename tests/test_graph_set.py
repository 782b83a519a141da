"""`GraphSet` (core/cuda_graphs.py): one owner's CUDA graphs by key in one memory pool — captured
once per key, replayed after; stale keys dropped with the pool kept, `clear` dropping the pool too.
The graph owners (the decoder's forward, a head drafter's steps) hold no reference to their model.
Capture itself needs a GPU (tests/targets/test_cuda_graphs.py); here it is a stand-in."""

import torch

from jetspec.core import cuda_graphs
from jetspec.core.cuda_graphs import GraphSet


class FakeGraph:
    def __init__(self, pool):
        self.given_pool, self.replays = pool, 0

    def replay(self):
        self.replays += 1

    def pool(self):
        return ("pool", id(self))


def fake_capture(log):
    def capture(fn, pool=None):
        log.append(pool)
        return FakeGraph(pool), fn()
    return capture


def test_a_key_is_captured_once_then_replayed_and_every_capture_shares_the_first_pool(monkeypatch):
    log = []
    monkeypatch.setattr(cuda_graphs, "capture", fake_capture(log))
    before = list(GraphSet.everywhere)
    graphs, calls = GraphSet(), []
    outs = [graphs.replay(k, lambda k=k: calls.append(k) or f"out {k}") for k in ("a", "a", "b", "a")]
    assert outs == ["out a", "out a", "out b", "out a"] and calls == ["a", "b"]  # fn ran only at capture
    assert log[0] is None and log[1] == graphs.pool == graphs._graphs["a"][0].pool()
    assert graphs._graphs["a"][0].replays == 3 and len(graphs) == 2 and "b" in graphs
    assert graphs.captured("c", lambda: "out c") == "out c" and graphs._graphs["c"][0].replays == 0  # captured, not run
    assert graphs.captures == 3 and graphs.capture_seconds >= 0  # what a benchmark reports of a run's captures
    other = GraphSet()
    other.captured("x", lambda: "out x")
    assert GraphSet.everywhere[0] == before[0] + 4  # every set's captures, counted process-wide too
    assert GraphSet.everywhere[1] >= before[1] + graphs.capture_seconds + other.capture_seconds - 1e-9


def test_drop_forgets_stale_graphs_and_keeps_the_pool_clear_forgets_both(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "capture", fake_capture([]))
    graphs = GraphSet()
    for key in [(1, "draft"), (1, "append"), (2, "draft")]:
        graphs.replay(key, lambda: None)
    pool = graphs.pool
    graphs.drop(lambda k: k[0] != 2)
    assert len(graphs) == 1 and (2, "draft") in graphs and graphs.pool == pool
    graphs.clear()
    assert len(graphs) == 0 and graphs.pool is None


def test_dropping_the_last_graph_forgets_the_pool_so_the_next_capture_starts_a_new_one(monkeypatch):
    """Every graph of the old buffers stale (a head's context outgrew its buffer): no live graph
    holds the pool, and torch 2.11's allocator asserts on a capture into it (H200, 2026-12-02)."""
    log = []
    monkeypatch.setattr(cuda_graphs, "capture", fake_capture(log))
    graphs = GraphSet()
    graphs.replay((1, "draft"), lambda: None)
    graphs.replay((1, "append"), lambda: None)
    graphs.drop(lambda k: k[0] != 2)
    assert len(graphs) == 0 and graphs.pool is None
    graphs.replay((2, "draft"), lambda: None)
    assert log[0] is None and log[1] is not None  # the second capture shared the first one's pool
    assert log[2] is None and graphs.pool == graphs._graphs[(2, "draft")][0].pool()  # a new pool


def test_the_graph_owners_hold_tensors_and_graphs_not_their_model():
    from jetspec.drafters.head.graphs import HeadGraphs
    from jetspec.targets.decoder.graphs import CudaGraphForward

    allowed = (torch.Tensor, GraphSet, dict, set, tuple, int)
    for owner in (CudaGraphForward(torch.device("cpu")), HeadGraphs(torch.device("cpu"), torch.float32, 2, 8)):
        held = {name: type(v).__name__ for name, v in vars(owner).items() if not isinstance(v, allowed)}
        assert held == {}, f"{type(owner).__name__} holds {held}"


def test_with_a_log_every_capture_records_its_function_key_and_seconds_and_replays_record_nothing(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "capture", fake_capture([]))
    monkeypatch.setattr(GraphSet, "log", [])

    class Owner:
        def job(self):
            return "out"

    graphs, owner = GraphSet(), Owner()
    graphs.replay((3, "job"), owner.job)
    graphs.replay((3, "job"), owner.job)  # a replay: nothing new
    graphs.captured(7, lambda: None)
    assert [(name, key) for name, key, _ in GraphSet.log] == [
        ("test_with_a_log_every_capture_records_its_function_key_and_seconds_and_replays_record_nothing.<locals>.Owner.job",
         "(3, 'job')"),
        ("test_with_a_log_every_capture_records_its_function_key_and_seconds_and_replays_record_nothing.<locals>.<lambda>", "7")]
    assert all(seconds >= 0 for _, _, seconds in GraphSet.log)


def test_without_a_log_captures_record_nothing(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "capture", fake_capture([]))
    assert GraphSet.log is None  # off by default: a long run keeps no list
    GraphSet().captured(1, lambda: None)
    assert GraphSet.log is None
