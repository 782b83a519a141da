"""Head drafters of a batch drafting ahead together (`ContextPool`): one job for the step's
sequences leaves each drafter what its own `draft_ahead` leaves — the context rows, the queued
draft, the bookkeeping its next `observe` and `propose` read — for the sequences in the step, and
nothing changed for a pooled drafter that is not."""

import pytest
import torch

from head_fixtures import HeadTarget, observed, tiny_llama
from jetspec.core.interfaces import DecodeState, DraftsAheadTogether
from jetspec.drafters.head import HeadOptions, jetspec_drafter
from jetspec.drafters.head.context import ContextCache

PROMPTS = [[5, 17, 33, 8, 61, 12, 40, 9], [3, 4, 5], [70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81]]
OPTIONS = dict(checkpoint="random", block_size=6, top_k=4, lookup=False)


@pytest.fixture(scope="module")
def target():
    return HeadTarget(tiny_llama())


def drafters(target, n, capacity=None, **options):
    made = [jetspec_drafter(HeadOptions(**{**OPTIONS, **options}), target) for _ in range(n)]
    assert all(len(d.hidden_layers) == LAYERS for d in made)
    for d in made:
        if capacity:  # a small cache, to make the pool grow
            c = d.config
            d.cache = ContextCache(c.num_layers, c.num_kv_heads, c.head_dim, torch.float32, torch.device("cpu"), capacity)
    return made


LAYERS = 1  # the random head's fused target layers (`drafters` checks)


def round_result(seed: int, n: int, d: int, k: int):
    """A verify pass's hidden rows [N, k, H] and an acceptance result [2D + 3] (k nodes accepted of a
    path of D + 1 slots, `core/on_device.py`'s layout)."""
    g = torch.Generator().manual_seed(seed)
    path = [0] + sorted(torch.randperm(n - 1, generator=g)[:d].add(1).tolist())  # [D + 1] node indices
    tokens = torch.randint(0, 90, (d + 1,), generator=g).tolist()
    return torch.randn(n, LAYERS, 64, generator=g), torch.tensor([k] + path + tokens)


def contexts(drafter):
    return [(k.clone(), v.clone()) for k, v in drafter.cache.context()]


def assert_same_state(solo, pooled, rows):
    """Same bookkeeping, the same first `rows` context rows and the same queued draft (up to rounding)."""
    assert pooled.appended_ahead == solo.appended_ahead and pooled.cache.length == solo.cache.length
    for (ks, vs), (kp, vp) in zip(solo.cache.buffers(), pooled.cache.buffers()):
        assert torch.allclose(ks[0, :rows], kp[0, :rows], atol=1e-5) and torch.allclose(vs[0, :rows], vp[0, :rows], atol=1e-5)
    assert torch.equal(solo._drafted[1], pooled._drafted[1])  # the drafted token ids
    assert torch.allclose(solo._drafted[0], pooled._drafted[0], atol=1e-5)  # their log-probs


def test_drafting_together_leaves_each_drafter_what_drafting_alone_leaves(target):
    solo, pooled = drafters(target, 3), drafters(target, 3)
    assert isinstance(pooled[0], DraftsAheadTogether)
    states = [observed(d, target, p) for d, p in zip(solo, PROMPTS)]
    for d, p in zip(pooled, PROMPTS):
        observed(d, target, p)
    for step in range(3):
        results = [round_result(10 * step + i, n=7 + i, d=2 + i, k=1 + (step + i) % 3) for i in range(3)]
        for d, (hidden, packed) in zip(solo, results):
            d.draft_ahead(hidden, packed, budget=16)
        assert pooled[0].draft_ahead_together(pooled, [h for h, _ in results], [p for _, p in results], budget=16)
        for s, p, (_, packed), state in zip(solo, pooled, results, states):
            assert_same_state(s, p, rows=s.cache.length + (len(packed) - 1) // 2)
            k = int(packed[0])  # the round committed its k accepted tokens and the bonus: observe keeps the rows
            state.tokens += packed[(len(packed) + 1) // 2 : (len(packed) + 1) // 2 + k].tolist()
            hidden = torch.zeros(k, LAYERS, 64)  # not read: the rows were appended ahead
            s.observe(state, hidden)
            p.observe(state, hidden)
            assert s.kept_ahead and p.kept_ahead
            ps, pp = s.propose(state, 16), p.propose(state, 16)
            for depth in range(5):
                assert [t for t, _ in ps.children((0,) * depth)] == [t for t, _ in pp.children((0,) * depth)]


def test_a_pooled_drafter_not_in_the_step_keeps_its_context_and_drafts_as_before(target):
    solo, pooled = drafters(target, 3), drafters(target, 3)
    states = [observed(d, target, p) for d, p in zip(solo, PROMPTS)]
    for d, p in zip(pooled, PROMPTS):
        observed(d, target, p)
    results = [round_result(i, n=6, d=3, k=2) for i in range(3)]
    assert pooled[0].draft_ahead_together(pooled, [h for h, _ in results], [p for _, p in results], budget=16)
    assert all(d.cache.pool is pooled[0].cache.pool for d in pooled)
    before = contexts(pooled[1])
    # a step without the second sequence (it finished): the pool drafts for the two others
    assert pooled[0].draft_ahead_together([pooled[0], pooled[2]], [results[0][0], results[2][0]],
                                          [results[0][1], results[2][1]], budget=16)  # fmt: skip
    for (k, v), (k2, v2) in zip(before, contexts(pooled[1])):
        assert torch.equal(k, k2) and torch.equal(v, v2)
    solo[1].reset(states[1])  # its slot takes a new prompt: as a fresh drafter would
    observed(solo[1], target, PROMPTS[0])
    state = observed(pooled[1], target, PROMPTS[0])
    ps, pp = solo[1].propose(state, 16), pooled[1].propose(state, 16)
    for depth in range(5):
        assert [t for t, _ in ps.children((0,) * depth)] == [t for t, _ in pp.children((0,) * depth)]


def test_a_pooled_drafters_own_draft_from_the_pools_slot_is_its_own_draft(target):
    """`ContextPool.draft_one` (what a pooled drafter's own draft runs: a new sequence's first round)
    picks the asking member's rows of the pool and drafts from its root at its anchor: the same
    top-k as the member's own draft over its own context, for each slot, fresh prompts included."""
    pooled = drafters(target, 3)
    states = [observed(d, target, p) for d, p in zip(pooled, PROMPTS)]
    results = [round_result(i, n=6, d=3, k=2) for i in range(3)]
    assert pooled[0].draft_ahead_together(pooled, [h for h, _ in results], [p for _, p in results], budget=16)
    pool = pooled[0].cache.pool
    states[1] = observed(pooled[1], target, PROMPTS[2])  # its slot took a new prompt
    for d, state in zip(pooled, states):
        own = d.draft_block(torch.tensor([state.tokens[-1]]), torch.tensor([d.cache.length]), d.cache.context(), 5)
        one = pool.draft_one(d, state.tokens[-1], d.cache.length, 5)
        assert torch.equal(own[1], one[1]) and torch.allclose(own[0], one[0], atol=1e-5)
        queued = pool.draft_one(d, torch.tensor([state.tokens[-1]]), torch.tensor([d.cache.length]), 5)  # device inputs
        assert torch.equal(queued[1], one[1])


class EagerGraphs:
    """In place of a pool's `GraphSet` on a CPU (no CUDA graphs there): every replay runs its job as it
    is asked for, and the keys asked for are kept."""

    def __init__(self):
        self.keys = []

    def __contains__(self, key):
        return True

    def drop(self, stale):
        pass

    def replay(self, key, fn):
        self.keys.append(key)
        return fn()


def test_a_pooled_drafters_appends_through_the_pools_graphs_write_what_its_own_eager_append_writes(target):
    """`ContextPool.append_one` (on a GPU a pooled drafter's context appends: a new sequence's prompt, a
    round not drafted ahead) writes the asking member's rows as its own eager append does, the rows
    padded to a bucket whose graph every slot shares, the other slots untouched; above the largest
    bucket it declines (the drafter appends eagerly)."""
    from jetspec.drafters.head.graphs import HeadGraphs

    solo, pooled = drafters(target, 3), drafters(target, 3)
    for d, p in zip(solo + pooled, PROMPTS + PROMPTS):
        observed(d, target, p)
    results = [round_result(i, n=6, d=3, k=2) for i in range(3)]
    assert pooled[0].draft_ahead_together(pooled, [h for h, _ in results], [p for _, p in results], budget=16)
    pool = pooled[0].cache.pool
    pool.graphs = EagerGraphs()
    for d in pooled:  # graphed drafters, as on a GPU (their own graphs are never replayed here: the pool takes every append)
        d.graphs = HeadGraphs(torch.device("cpu"), torch.float32, LAYERS, 64)
    others = [contexts(pooled[i]) for i in (0, 2)]
    prompt = [(7 * j) % 90 for j in range(100)]  # a new sequence in slot 1: 99 rows before its root
    state, _ = observed(solo[1], target, prompt), observed(pooled[1], target, prompt)
    state.tokens += [4, 5, 6]  # a round not drafted ahead: three rows appended
    for d in (solo[1], pooled[1]):
        d.observe(state, torch.randn(3, LAYERS, 64, generator=torch.Generator().manual_seed(1)))
    assert pool.graphs.keys == [(pool.version, "append", 128), (pool.version, "append", 32)]
    (ks, vs), (kp, vp) = solo[1].cache.context()[0], pooled[1].cache.context()[0]
    assert kp.shape[1] == 102 and torch.allclose(ks, kp, atol=1e-5) and torch.allclose(vs, vp, atol=1e-5)
    for i, before in zip((0, 2), others):
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(contexts(pooled[i]), before))
    assert torch.isfinite(pooled[1].cache.buffers()[0][0]).all()  # the padded rows past its length: finite
    assert not pool.append_one(pooled[1], torch.zeros(2049, LAYERS, 64), 0) and len(pool.graphs.keys) == 2


def test_halves_of_a_pooled_batch_drafting_in_turn_leave_each_drafter_what_drafting_alone_leaves(target):
    """A pipeline reused with `overlap` (its slots' halves step in turn) finds its drafters in the one
    pool of an earlier run: a half's job must not touch the other half's drafts in flight — its
    queued drafts (each job has a host buffer of its own) and the context rows it appended ahead
    (a member not in the step writes them again as they were)."""
    prompts = PROMPTS + [[9, 8, 7, 6, 5]]
    solo, pooled = drafters(target, 4, capacity=16), drafters(target, 4, capacity=16)  # small: the pools grow as they go
    states = [observed(d, target, p) for d, p in zip(solo, prompts)]
    for d, p in zip(pooled, prompts):
        observed(d, target, p)

    def step(half: list[int], seed: int) -> None:
        results = {i: round_result(seed + i, n=7 + i, d=2 + i % 2, k=1 + (seed + i) % 2) for i in half}
        for i in half:
            solo[i].draft_ahead(*results[i], budget=16)
        assert pooled[half[0]].draft_ahead_together([pooled[i] for i in half], [results[i][0] for i in half],
                                                    [results[i][1] for i in half], budget=16)  # fmt: skip
        return results

    def land(results) -> None:
        for i, (_, packed) in results.items():
            k = int(packed[0])
            states[i].tokens += packed[(len(packed) + 1) // 2 : (len(packed) + 1) // 2 + k].tolist()
            for d in (solo[i], pooled[i]):
                d.observe(states[i], torch.zeros(k, LAYERS, 64))
            assert_same_state(solo[i], pooled[i], rows=solo[i].cache.length)
            ps, pp = solo[i].propose(states[i], 16), pooled[i].propose(states[i], 16)
            for depth in range(5):
                assert [t for t, _ in ps.children((0,) * depth)] == [t for t, _ in pp.children((0,) * depth)], (i, depth)

    land(step([0, 1, 2, 3], 0))  # one step of the whole batch: one pool of four
    first = pooled[0].cache.pool
    a = step([0, 2], 10)  # then the halves in turn, each with the other's drafts in flight
    for n in range(6):
        b = step([1, 3], 20 + 10 * n)
        land(a)
        first.reserve(4 * first.capacity)  # the pool growing between the halves' steps keeps every slot's rows
        a = step([0, 2], 30 + 10 * n)
        land(b)
    land(a)
    assert all(d.cache.pool is first for d in pooled)  # one pool throughout


def test_calibrated_drafters_of_a_pool_score_their_own_drafts_with_one_pass_for_the_step(target, monkeypatch):
    """With a calibration (one object for every drafter, as a checkpoint's file gives them) each
    pooled drafter's proposal is its own queued draft scored by the rates, exactly as `marginals`
    scores it alone — and the step calibrates every slot's draft in one pass (`PooledDrafts`)."""
    from jetspec.drafters.head.calibration import BINS, GROUPS, HeadCalibration

    depths = 5  # block_size 6: five drafted depths
    rates = [[[(1 + 100 * d + 10 * g + 0.5 * b) / 1000 for b in range(BINS)] for g in range(GROUPS)] for d in range(depths)]
    calibration = HeadCalibration(depths, rates, [], [])
    pooled = drafters(target, 3)
    states = [observed(d, target, p) for d, p in zip(pooled, PROMPTS)]
    for d in pooled:
        d.calibration = calibration
    passes = []
    made = HeadCalibration.drafts
    monkeypatch.setattr(HeadCalibration, "drafts", lambda self, *a: passes.append(1) or made(self, *a))
    results = [round_result(i, n=7, d=2, k=2) for i in range(3)]
    assert pooled[0].draft_ahead_together(pooled, [h for h, _ in results], [p for _, p in results], budget=16)
    for d, (_, packed), state in zip(pooled, results, states):
        drafted = d._drafted.clone()  # [2, depths, k]: what propose reads
        state.tokens += packed[(len(packed) + 1) // 2 : (len(packed) + 1) // 2 + 2].tolist()
        d.observe(state, torch.zeros(2, LAYERS, 64))
        got = d.propose(state, 16)
        want = made(calibration, drafted[1].long().numpy()[None], drafted[0].numpy()[None]).marginals(0)
        top = [t for t, _ in want.children(())]
        for path in [()] + [(t,) for t in top] + [(top[0], t) for t, _ in want.children((top[0],))]:
            assert got.children(path) == want.children(path), path
    assert len(passes) == 1  # one pass for the three drafters


def test_the_pool_grows_every_slot_and_keeps_their_rows(target):
    pooled = drafters(target, 2, capacity=16)
    for d, p in zip(pooled, PROMPTS[:2]):
        observed(d, target, p)
    results = [round_result(i, n=5, d=2, k=1) for i in range(2)]
    rows = [contexts(d) for d in pooled]
    assert pooled[0].draft_ahead_together(pooled, [h for h, _ in results], [p for _, p in results], budget=8)
    pool = pooled[0].cache.pool
    assert pool.capacity == 64 and all(d.cache.capacity == 64 and d.cache.version == pool.version for d in pooled)  # 8 + 32 rows
    for d, before in zip(pooled, rows):
        for (k, v), (k2, v2) in zip(before, d.cache.buffers()):
            assert torch.equal(k[0], k2[0, : k.shape[1]]) and torch.equal(v[0], v2[0, : v.shape[1]])
    state = DecodeState(tokens=PROMPTS[2] * 6, prompt_len=72)  # one member's own growth grows the pool
    pooled[1].reset(state)
    pooled[1].observe(state, target.hidden(state.tokens[:-1], pooled[1].hidden_layers))
    assert pool.capacity == 128 and pooled[0].cache.capacity == 128 and pooled[0].cache.version == pool.version


def test_drafters_that_cannot_draft_together_decline(target):
    a, b = drafters(target, 2)
    other = drafters(target, 1, top_k=3)[0]
    for d, p in zip((a, b, other), PROMPTS):
        observed(d, target, p)
    results = [round_result(i, n=5, d=2, k=1) for i in range(2)]
    hidden, packed = [h for h, _ in results], [p for _, p in results]
    assert not a.draft_ahead_together([a, other], hidden, packed, budget=8)  # another top-k
    assert not a.draft_ahead_together([a, b], [hidden[0], None], packed, budget=8)  # one observes no hidden rows
    off = drafters(target, 2, draft_together=False)
    assert not off[0].draft_ahead_together(off, hidden, packed, budget=8)  # asked not to
    assert a.cache.pool is None and b.cache.pool is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_a_graphed_pool_drafts_what_each_drafter_drafts_alone_across_pool_growth():
    """On a GPU the pool's job is replayed from a CUDA graph (one per pool buffer version): drafting
    together through it equals each drafter's own eager draft_ahead, step after step, while the
    contexts outgrow the pool twice."""
    gpu = HeadTarget(tiny_llama(), device="cuda")
    solo = [jetspec_drafter(HeadOptions(**OPTIONS, cuda_graphs=False), gpu) for _ in range(3)]
    pooled = [jetspec_drafter(HeadOptions(**OPTIONS), gpu) for _ in range(3)]
    for d in solo + pooled:
        c = d.config
        d.cache = ContextCache(c.num_layers, c.num_kv_heads, c.head_dim, torch.float32, torch.device("cuda"), capacity=16)
    states = [observed(d, gpu, p) for d, p in zip(solo, PROMPTS)]
    for d, p in zip(pooled, PROMPTS):
        observed(d, gpu, p)
    for step in range(12):  # 3-4 rows a step: past 48 and 80 rows with the 32 rows each job writes
        results = [round_result(10 * step + i, n=6, d=3, k=3) for i in range(3)]
        results = [(h.cuda(), p.cuda()) for h, p in results]
        for d, (hidden, packed) in zip(solo, results):
            d.draft_ahead(hidden, packed, budget=16)
        assert pooled[0].draft_ahead_together(pooled, [h for h, _ in results], [p for _, p in results], budget=16)
        torch.cuda.synchronize()
        for s, p, (_, packed), state in zip(solo, pooled, results, states):
            assert p.appended_ahead == s.appended_ahead
            assert torch.equal(s._drafted[1], p._drafted[1]) and torch.allclose(s._drafted[0], p._drafted[0], atol=1e-4)
            state.tokens += packed[5:8].tolist()  # k = 3 accepted of D + 1 = 4 slots: tokens at 1 + 4 .. 1 + 4 + 2
            for d in (s, p):
                d.observe(state, torch.zeros(3, LAYERS, 64, device="cuda"))
                assert d.kept_ahead
    pool = pooled[0].cache.pool
    assert pool.capacity >= 64 and pool.graphs is not None and len(pool.graphs) == 1  # stale versions' graphs dropped


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_pooled_drafters_draft_alone_from_one_graph_of_the_pool_not_one_each():
    """A pooled drafter's own draft (its sequence's first round) and its context appends replay the
    pool's graphs for every slot: the same tokens as an eager drafter's, one capture each for three
    drafters, no graph of their own."""
    gpu = HeadTarget(tiny_llama(), device="cuda")
    solo = [jetspec_drafter(HeadOptions(**OPTIONS, cuda_graphs=False), gpu) for _ in range(3)]
    pooled = [jetspec_drafter(HeadOptions(**OPTIONS), gpu) for _ in range(3)]
    for d, p in zip(solo + pooled, PROMPTS + PROMPTS):
        observed(d, gpu, p)
    results = [tuple(x.cuda() for x in round_result(i, n=6, d=3, k=3)) for i in range(3)]
    assert pooled[0].draft_ahead_together(pooled, [h for h, _ in results], [p for _, p in results], budget=16)
    pool, before = pooled[0].cache.pool, len(pooled[0].cache.pool.graphs)
    own = [len(p.graphs.graphs) for p in pooled]  # their first prompts' appends, before the pool
    for rep in range(2):
        for i, (s, p) in enumerate(zip(solo, pooled)):
            prompt = PROMPTS[(i + rep) % 3]  # each slot takes a new prompt, twice
            state, _ = observed(s, gpu, prompt), observed(p, gpu, prompt)
            assert p.cache.pool is pool
            ps, pp = s.propose(state, 16), p.propose(state, 16)
            for depth in range(5):
                assert [t for t, _ in ps.children((0,) * depth)] == [t for t, _ in pp.children((0,) * depth)]
    assert len(pool.graphs) == before + 2  # the pool's one-slot draft and its append of <= 32 rows (the new prompts)
    assert all((p.cache.version, "draft", 5) not in p.graphs.graphs for p in pooled)  # no draft graph of their own,
    assert [len(p.graphs.graphs) for p in pooled] == own  # nor an append graph since
