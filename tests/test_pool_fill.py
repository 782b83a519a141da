"""The pooled job's inputs in one launch are the torch ops' inputs: for any step — any peers of the
pool, any result sizes, paths and accepted counts, out-of-range path entries included — the kernel
(`drafters/head/pool_fill.py`, what CUDA runs) writes the static hidden rows, starts, roots and
anchors bit for bit as `ContextPool._fill_torch` does, and leaves the slots not in the step as they
were. On a CPU the kernel runs in Triton's interpreter (conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from head_fixtures import HeadTarget, tiny_llama  # noqa: E402
from jetspec.drafters.head import HeadOptions, jetspec_drafter  # noqa: E402
from jetspec.drafters.head.pool import ContextPool  # noqa: E402
from jetspec.drafters.head.pool_fill import fill, fill_ints  # noqa: E402

SLOTS = 4
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # compiled on a GPU machine, else the interpreter


@pytest.fixture(scope="module")
def pool():
    target = HeadTarget(tiny_llama(), device=DEVICE)
    return ContextPool([jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=4, lookup=False), target)
                        for _ in range(SLOTS)])


def statics(pool) -> list[torch.Tensor]:
    return [pool.hidden, pool.start, pool.root, pool.anchor]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_the_kernel_fills_what_the_torch_ops_fill(pool, data):
    peers = data.draw(st.permutations(range(SLOTS)))[: data.draw(st.integers(1, SLOTS))]  # the step's slots, any order
    slots = np.array(peers)
    n = np.array([data.draw(st.integers(1, 12)) for _ in peers])  # [P] tree sizes
    d1 = np.array([data.draw(st.integers(1, 9)) for _ in peers])  # [P] D + 1 path slots
    packed = [torch.tensor([data.draw(st.integers(-2, d + 2))]  # k, any (clamped into 1 .. D + 1)
                           + [data.draw(st.integers(-3, 14)) for _ in range(d)]  # path slots, some out of the tree
                           + [data.draw(st.integers(0, 90)) for _ in range(d)]) for d in d1]  # tokens
    starts = [data.draw(st.integers(0, 50)) for _ in range(SLOTS)]
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 999)))
    rows = torch.randn(int(n.sum()), *pool.hidden.shape[2:], generator=g).to(DEVICE, pool.hidden.dtype)  # [sum N, k, H]
    flat = torch.cat(packed).to(DEVICE)
    poff = np.cumsum([0] + [x.numel() for x in packed[:-1]])
    before = [torch.randint(-5, 5, t.shape, generator=g).to(DEVICE, t.dtype) for t in statics(pool)]  # what slots held

    for t, b in zip(statics(pool), before):
        t.copy_(b)
    pool._fill_torch(flat, rows, poff, d1, n, slots, starts)
    want = [t.clone() for t in statics(pool)]

    for t, b in zip(statics(pool), before):
        t.copy_(b)
    peer_of = np.full(SLOTS, -1)
    peer_of[slots] = np.arange(len(peers))
    stride = data.draw(st.integers(len(peers), SLOTS + 2))  # per-peer arrays padded (inside a graph: S every step)
    ints = torch.from_numpy(fill_ints(peer_of, np.asarray(starts), poff, d1, n, stride=stride)).to(DEVICE)
    spare = data.draw(st.integers(0, 3))  # static inputs longer than the step's: what lies past it is never read
    flat = torch.cat([flat, torch.full((spare,), -7, device=DEVICE)])
    rows = torch.cat([rows, torch.full((spare, *rows.shape[1:]), 9.0, device=DEVICE, dtype=rows.dtype)])
    fill(ints, flat, rows, pool.hidden, pool.start, pool.root, pool.anchor, stride)

    for got, w, name in zip(statics(pool), want, ("hidden", "start", "root", "anchor")):
        assert torch.equal(got, w), name
    idle = [s for s in range(SLOTS) if s not in peers]
    assert torch.equal(pool.hidden[idle], before[0][idle]) and torch.equal(pool.root[idle], before[2][idle])


@pytest.mark.parametrize("nodes", [6, 100])
def test_drafting_together_through_the_kernel_leaves_the_drafts_of_the_torch_ops(monkeypatch, nodes):
    """`ContextPool.draft_ahead` wired to the kernel (as on CUDA: the fill first in the job, over static
    copies of its inputs) drafts what it drafts through the torch ops, for a step of some of the pool's
    slots — trees of 100 nodes too, more hidden rows than the static inputs first hold (they grow)."""
    from head_fixtures import observed

    from jetspec.drafters.head import pool as pool_module

    target = HeadTarget(tiny_llama(), device=DEVICE)
    prompts = [[5, 17, 33, 8, 61, 12, 40, 9], [3, 4, 5], [70, 71, 72, 73, 74, 75], [9, 8, 7, 6, 5]]
    g = torch.Generator().manual_seed(3)
    hidden = [torch.randn(nodes, 1, 64, generator=g).to(DEVICE) for _ in range(3)]  # [N, k, H] the random head's one layer
    packed = [torch.tensor([k, 0, 2, 5, 1, 11, 12, 13, 14]).to(DEVICE) for k in (1, 3, 4)]  # D + 1 = 4 slots
    drafts = []
    for kernel in (False, True):
        monkeypatch.setattr(pool_module, "fused", lambda x, kernel=kernel: kernel)
        made = [jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=4, lookup=False), target) for _ in prompts]
        for d, p in zip(made, prompts):
            observed(d, target, p)
        assert made[0].draft_ahead_together(made, hidden + hidden[:1], packed + packed[:1], budget=16)  # the pool: 4 slots
        peers = [made[2], made[0], made[3]]  # slot 1 not in this step: 3 peers of a pool of 4
        assert peers[0].draft_ahead_together(peers, hidden, packed, budget=16)
        assert len(peers[0].cache.pool.members) == 4
        if DEVICE == "cuda":
            torch.cuda.synchronize()  # the drafts reach their pinned host block behind the job (a round's read-back waits)
        drafts.append([(d._drafted.clone(), d.appended_ahead) for d in peers])
        if kernel:
            assert peers[0].cache.pool.rows_in.shape[0] >= 3 * nodes  # grown where the step needed it
    for (want, ahead), (got, ahead2) in zip(*drafts):
        assert torch.equal(want, got) and ahead == ahead2


@pytest.mark.parametrize("overlap", [False, True])
def test_a_batched_run_through_the_kernel_path_drafts_the_rounds_of_the_torch_path(monkeypatch, overlap):
    """The engine with the pooled job's kernel path (the fill inside the job, over static inputs;
    compiled and inside the job's CUDA graph on a GPU machine), overlapped halves or not: the same rounds as through the torch ops (the same drafts),
    every prompt its plain output."""
    import random

    import jetspec
    from jetspec.drafters.head import pool as pool_module
    from jetspec.testing.models import tiny_decoder_target
    from support.registry import make_test_registry

    rng = random.Random(1)
    prompts = [[rng.randrange(90) for _ in range(rng.randrange(5, 40))] for _ in range(9)]
    pipe = (jetspec.builder(make_test_registry()).target(tiny_decoder_target("llama", 0, device=DEVICE))
            .drafter("jetspec", checkpoint="random", block_size=6, top_k=4, lookup=True).kv_cache("paged")
            .generation(budget=12, max_new_tokens=24, accept_on_device="always", batch_size=4, build_on_device=True,
                        overlap=overlap).build())
    plain = [pipe.generate_plain(p).tokens for p in prompts]
    filled, real = [], pool_module.ContextPool._filled_job
    monkeypatch.setattr(pool_module.ContextPool, "_filled_job", lambda self, *a: filled.append(1) or real(self, *a))
    rounds = {}
    for kernel in (False, True):
        monkeypatch.setattr(pool_module, "fused", lambda x, kernel=kernel: kernel)
        results = pipe.generate_many(prompts)
        assert [r.tokens for r in results] == plain
        rounds[kernel] = [r.stats.rounds for r in results]
        assert bool(filled) == kernel  # the kernel path ran the filled job; the torch path never did
    assert rounds[True] == rounds[False]
