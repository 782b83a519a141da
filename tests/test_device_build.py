"""Trees grown on the device (`core/device_proposal.py`, `scorers/best_first_device.py`,
`core/batch_grow.py`): the best-first scorer's device form chooses the nodes its host form
chooses, lays them out as a valid tree, and a batched run that grows its trees there decodes
exactly what plain decoding does; a scorer or drafter that breaks the device contract fails its
sequence in one line, naming itself."""

import dataclasses
from contextlib import contextmanager
from unittest.mock import patch

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
import jetspec.scorers.best_first as best_first
from jetspec.core.batch_grow import host_trees
from jetspec.core.device_proposal import (DeviceProposal, DeviceProposals, DeviceTrees, FlatTrie, builds_on_device, pack_tries,
                                          proposes_on_device, trie_faults, trie_rows)
from jetspec.core.errors import PluginError
from jetspec.core.invariant import interpreted
from jetspec.core.proposal import DepthMarginals, MergedProposal, TokenTrie
from jetspec.core.tree import DraftTree
from jetspec.drafters.head.drafter import HeadDrafter
from jetspec.scorers.best_first import BestFirstOptions, BestFirstScorer
from jetspec.scorers.best_first_device import fills, grow
from jetspec.testing.device_build import device_proposals
from jetspec.testing.device_build import step_proposals as kit_step_proposals
from jetspec.testing.models import tiny_decoder_target
from support.registry import make_test_registry

REG = make_test_registry()
VOCAB = 20


def step_proposals(ties: bool = False):
    return kit_step_proposals(VOCAB, ties)


def host_form(tokens, logp, tries, s):
    marginals = DepthMarginals(tokens[s], logp[s])
    return marginals if tries[s] is None else MergedProposal(marginals, tries[s])


def paths(tree: DraftTree) -> dict[tuple[int, ...], int]:
    """path (draft tokens below the root) -> node index."""
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    out: dict[tuple[int, ...], int] = {}
    for i in range(1, tree.size):
        out[out_path(tokens, parents, i)] = i
    return out


def out_path(tokens, parents, i):
    p = []
    while i > 0:
        p.append(tokens[i])
        i = parents[i]
    return tuple(p[::-1])


def score_of(proposal, path) -> float:
    total = 0.0
    for d in range(len(path)):
        total += dict(proposal.children(path[:d]))[path[d]]
    return total


def grown_trees(proposals, budget, max_depth=None, roots=None, prefixes=None):
    s = proposals.size
    roots = torch.arange(s) + 7 if roots is None else roots
    prefixes = torch.arange(s) * 5 + 3 if prefixes is None else prefixes
    made = grow(proposals, roots, prefixes, budget, max_depth)
    values = made.block.numpy().reshape(-1)
    return made, host_trees(values, budget + 1, roots.tolist(), prefixes.tolist(), 10_000, "scorer 'best-first'")


# ---------------------------------------------------------------------------- the device build
@settings(max_examples=80, deadline=None)
@given(case=step_proposals(), budget=st.integers(1, 24), max_depth=st.sampled_from([None, 1, 2, 3]))
def test_the_device_build_chooses_the_nodes_the_host_build_chooses(case, budget, max_depth):
    tokens, logp, tries = case
    proposals = device_proposals(tokens, logp, tries)
    if not fills(proposals, budget, max_depth):
        assert BestFirstScorer(BestFirstOptions(max_depth=max_depth)).build_on_device(proposals, torch.zeros(1), torch.zeros(1), budget) is None
        return
    made, trees = grown_trees(proposals, budget, max_depth)
    assert made.max_depth <= (max_depth or budget)
    for s, tree in enumerate(trees):
        assert isinstance(tree, DraftTree), tree  # checked as a host-built tree is (`host_trees`)
        tree.validate()  # a host tree's invariants: the root's parent -1, pre-order, depths, sizes, distinct siblings
        assert tree.size == budget + 1 and int(tree.tokens[0]) == 7 + s
        host = BestFirstScorer(BestFirstOptions(max_depth=max_depth)).build(host_form(tokens, logp, tries, s), 7 + s, budget)
        assert set(paths(tree)) == set(paths(host))


@settings(max_examples=60, deadline=None)
@given(case=step_proposals(ties=True), budget=st.integers(1, 24))
def test_with_tied_scores_the_device_tree_is_a_best_budget_set_of_real_candidates(case, budget):
    """Ties may pick other nodes than the heap, never a worse set: the same sorted scores, and every
    node a candidate its proposal offers under its parent's path."""
    tokens, logp, tries = case
    proposals = device_proposals(tokens, logp, tries)
    if not fills(proposals, budget):
        return
    _, trees = grown_trees(proposals, budget)
    for s, tree in enumerate(trees):
        proposal = host_form(tokens, logp, tries, s)
        mine = sorted(score_of(proposal, p) for p in paths(tree))  # score_of fails on a path the proposal does not offer
        host = BestFirstScorer().build(proposal, 7 + s, budget)
        assert mine == pytest.approx(sorted(score_of(proposal, p) for p in paths(host)), abs=1e-5)


def test_positions_ends_and_index_rows_are_those_of_the_upload():
    from jetspec.core.on_device import TreeUpload

    tokens, logp = torch.tensor([[[3, 4], [5, 6]]]), torch.tensor([[[-0.1, -2.0], [-0.3, -0.5]]])
    proposals = device_proposals(tokens, logp, [None])
    made = grow(proposals, torch.tensor([9]), torch.tensor([40]), 4)
    tree = host_trees(made.block.numpy().reshape(-1), 5, [9], [40], 100, "s")[0]
    uploaded, _ = TreeUpload("cpu").many([tree], [40])
    assert torch.equal(made.block, uploaded[0].block)
    assert set(paths(tree)) == {(3,), (3, 5), (3, 6), (4,)}


def test_nan_and_minus_infinity_log_probs_still_make_a_valid_tree():
    tokens = torch.tensor([[[1, 2, 3], [4, 5, 6]]])
    logp = torch.tensor([[[float("nan"), -1.0, float("-inf")], [-0.5, float("nan"), float("-inf")]]])
    _, trees = grown_trees(device_proposals(tokens, logp, [None]), 8)
    assert isinstance(trees[0], DraftTree) and trees[0].size == 9


def test_tries_are_flattened_parents_first_and_padded_to_a_few_widths():
    trie = TokenTrie()
    trie.add_sequence([1, 2, 3], [-0.1, -0.2, -0.3])
    trie.add_sequence([1, 4], [-0.1, -0.5])
    tokens, parents, logps, depths = trie_rows(trie)
    assert all(p < i for i, p in enumerate(parents)) and sorted(zip(depths, tokens)) == [(1, 1), (2, 2), (2, 4), (3, 3)]
    ints, logp, deepest = pack_tries([FlatTrie.of(trie), None])
    assert ints.shape == (3, 2, 8) and deepest == 3 and (ints[2, 1] == 0).all() and np.isinf(logp[1]).all()


def test_a_proposal_too_small_for_the_budget_is_built_on_the_host():
    proposals = device_proposals(torch.tensor([[[1, 2]]]), torch.tensor([[[-0.1, -0.2]]]), [None])  # 2 nodes in all
    assert BestFirstScorer().build_on_device(proposals, torch.tensor([0]), torch.tensor([0]), 3) is None


def test_host_trees_name_the_scorer_of_a_broken_tree():
    tokens, logp = torch.tensor([[[3, 4], [5, 6]]]), torch.tensor([[[-0.1, -2.0], [-0.3, -0.5]]])
    made = grow(device_proposals(tokens, logp, [None]), torch.tensor([9]), torch.tensor([40]), 4)
    for row, column in ((3, 2), (4, 1), (0, 0), (1, 3)):  # a subtree size, a position, the root token, a parent
        values = made.block.clone()
        values[row, column] += 1
        out = host_trees(values.numpy().reshape(-1), 5, [9], [40], 100, "scorer 'odd'")
        assert isinstance(out[0], PluginError) and str(out[0]).startswith("scorer 'odd' built an invalid tree on the device"), (row, column)


def slow_verdict(block: np.ndarray, root: int, prefix: int, vocab: int) -> bool:
    """One tree's rows [7, N] judged node by node: `invariants_hold` plus the rows the verification reads."""
    from jetspec.core.tree import invariants_hold

    tok, par, dep, size, pos, ends, idx = block
    n = tok.shape[0]
    parents = [-1] + par[1:].tolist()
    return bool(tok[0] == root and par[0] == 0 and ends[0] == 0 and all(0 <= t < vocab for t in tok)
                and idx.tolist() == list(range(n)) and (pos == prefix + dep).all()
                and all(ends[i] == i + size[i] for i in range(1, n))
                and invariants_hold(tok.tolist(), parents, dep.tolist(), size.tolist()))


@pytest.mark.parametrize("mode", ["entry", "size", "depth", "parent", "reparent"])
@settings(max_examples=100, deadline=None)
@given(case=step_proposals(), budget=st.integers(2, 12), row=st.integers(0, 6), column=st.integers(0, 40), by=st.sampled_from([-1, 1, 5]))
def test_the_step_wide_tree_check_judges_each_tree_as_a_node_by_node_check_does(mode, case, budget, row, column, by):
    """Broken one entry at a time, or consistently (a size with its end; a parent with its node's
    depth and position), so that each check is the only one that can see some break."""
    tokens, logp, tries = case
    proposals = device_proposals(tokens, logp, tries)
    if not fills(proposals, budget):
        return
    n, roots, prefixes = budget + 1, list(range(7, 7 + proposals.size)), [5 * i + 3 for i in range(proposals.size)]
    block = grow(proposals, torch.tensor(roots), torch.tensor(prefixes), budget).block.numpy().copy()  # [7, S * N]
    t, i = column % proposals.size, 1 + column % budget  # a tree, and a node of it other than the root
    c = t * n + i
    if mode == "entry":
        block[row, column % block.shape[1]] += by
    elif mode == "size":  # sizes and ends alike: only the recount or the intervals can tell
        block[3, c] += by
        block[5, c] += by
    elif mode == "depth":  # a depth with its position: only the depth rule can tell
        block[2, c] += by
        block[4, c] += by
    else:  # another parent, then its depth and position ("parent") or every row rederived ("reparent"): only
        tree = block[:, t * n : (t + 1) * n]  # the pre-order intervals, the sizes or the siblings can tell
        new = (tree[1, i] + by) % i
        tree[1, i], tree[2, i], tree[4, i] = new, tree[2, new] + 1, tree[4, new] + 1
        if mode == "reparent":
            from jetspec.core.tree import _depths_and_sizes

            depths, sizes = _depths_and_sizes([-1] + tree[1, 1:].tolist())
            tree[2], tree[3] = depths, sizes
            tree[4], tree[5] = prefixes[t] + tree[2], np.arange(n) + tree[3]
            tree[5, 0] = 0
    judged = host_trees(block.reshape(-1), n, roots, prefixes, VOCAB, "s")
    for i, tree in enumerate(judged):
        assert isinstance(tree, DraftTree) == slow_verdict(block[:, i * n : (i + 1) * n], roots[i], prefixes[i], VOCAB)


def test_only_the_class_that_defines_the_host_method_or_below_may_have_the_device_one():
    class HostOnly(BestFirstScorer):
        def build(self, proposal, root, budget):
            return super().build(proposal, root, budget)

    assert builds_on_device(BestFirstScorer()) and not builds_on_device(HostOnly())

    class Proposes(HeadDrafter):
        def propose(self, state, budget):
            return super().propose(state, budget)

    assert proposes_on_device.__doc__ and not proposes_on_device(object.__new__(Proposes))
    assert proposes_on_device(object.__new__(HeadDrafter))


# ---------------------------------------------------------------------------- in a batched run
def grown_pipe(batch: int, lookup: bool, budget: int = 12, max_new: int = 16, **generation):
    """The default drafter's kind (the causal head, prompt lookup merged in) on the device path, every
    step grown there (`build_on_device = true`, unless given); on a CPU the device is the host, so the
    device build runs its torch form."""
    return (jetspec.builder(REG).target(tiny_decoder_target("llama", 0))
            .drafter("jetspec", checkpoint="random", block_size=6, top_k=4, lookup=lookup)
            .kv_cache("paged").generation(budget=budget, max_new_tokens=max_new, accept_on_device="always",
                                          batch_size=batch, **({"build_on_device": True} | generation)).build())


@contextmanager
def counted_builds():
    """-> {"host": scorer.build calls, "device": grow calls}, counted while the block runs."""
    counts = {"host": 0, "device": 0}
    host, device = BestFirstScorer.build, best_first.grow

    def on_host(scorer, *args):
        counts["host"] += 1
        return host(scorer, *args)

    def on_device(*args):
        counts["device"] += 1
        return device(*args)

    with patch.object(BestFirstScorer, "build", on_host), patch.object(best_first, "grow", on_device):
        yield counts


repeating = st.lists(st.integers(0, 95), min_size=1, max_size=6).flatmap(lambda base: st.lists(st.sampled_from(base), min_size=1, max_size=20))


@settings(max_examples=8, deadline=None)
@given(prompts=st.lists(repeating, min_size=1, max_size=5), batch=st.integers(2, 3), lookup=st.booleans(), overlap=st.booleans(),
       budget=st.sampled_from([4, 12]))
def test_a_batched_run_that_grows_its_trees_on_the_device_decodes_what_plain_decoding_does(prompts, batch, lookup, overlap, budget):
    pipe = grown_pipe(batch, lookup, budget, overlap=overlap)
    plain = [pipe.generate_plain(p).tokens for p in prompts]
    with counted_builds() as builds:
        results = pipe.generate_many(prompts)
    assert [r.tokens for r in results] == plain
    assert builds["device"] > 0 and builds["host"] == 0


def test_auto_grows_steps_of_at_least_grow_from_sequences_and_builds_smaller_ones_on_the_host(monkeypatch):
    """`build_on_device = "auto"` (the default): a step of GROW_FROM sequences or more is grown on the
    device, a smaller one built on the host (here the last prompt's steps, alone once the first three
    finished); every output what plain decoding gives."""
    import jetspec.core.batch_engine as batch_engine

    assert jetspec.GenerationConfig().build_on_device == "auto"
    monkeypatch.setattr(batch_engine, "GROW_FROM", 3)
    prompts = [[3, 4, 5, 3, 4, 5, 3], [9, 8, 7, 6], [1, 2, 1, 2, 1, 2], [5, 6, 5, 6, 5]]
    pipe = grown_pipe(3, True, build_on_device="auto")
    with counted_builds() as builds:
        results = pipe.generate_many(prompts)
    assert [r.tokens for r in results] == [pipe.generate_plain(p).tokens for p in prompts]
    assert builds["device"] > 0 and builds["host"] > 0
    monkeypatch.setattr(batch_engine, "GROW_FROM", 4)  # no step holds 4 sequences: all on the host
    pipe = grown_pipe(3, True, build_on_device="auto")
    with counted_builds() as builds:
        pipe.generate_many(prompts)
    assert builds["device"] == 0 and builds["host"] > 0


def test_build_on_device_false_builds_on_the_host_with_the_same_trees():
    prompts = [[3, 4, 5, 3, 4, 5, 3], [9, 8, 7, 6], [1, 2, 1, 2, 1, 2], [7, 7, 7]]
    taus = {}
    for on_device in (True, False):
        pipe = grown_pipe(3, True, build_on_device=on_device)
        with counted_builds() as builds:
            results = pipe.generate_many(prompts)
        assert [r.tokens for r in results] == [pipe.generate_plain(p).tokens for p in prompts]
        assert (builds["device"] > 0, builds["host"] > 0) == (on_device, not on_device)
        taus[on_device] = [r.stats.tau for r in results]
    assert taus[True] == taus[False]  # distinct random log-probs: the same trees, so the same rounds


@pytest.mark.skipif(not interpreted(), reason="the tiny target runs on the CPU: its Triton build runs in Triton's interpreter "
                    "(TRITON_INTERPRET=1) only; on CUDA see tests/kernel_tests/test_best_first_kernel.py")
def test_the_triton_device_build_decodes_what_the_torch_form_does():
    """`device_build = "triton"` (one launch a step, `best_first_kernel.py`; here in Triton's interpreter):
    the same outputs and the same rounds as the torch form."""
    import jetspec.scorers.best_first_kernel as kernel_module

    prompts = [[3, 4, 5, 3, 4, 5, 3], [9, 8, 7, 6], [1, 2, 1, 2, 1, 2]]
    runs = {}
    for form in ("graph", "triton"):
        pipe = (jetspec.builder(REG).target(tiny_decoder_target("llama", 0))
                .drafter("jetspec", checkpoint="random", block_size=6, top_k=4).scorer("best-first", device_build=form)
                .kv_cache("paged").generation(budget=8, max_new_tokens=10, accept_on_device="always", batch_size=3,
                                              build_on_device=True).build())
        calls = []
        real = kernel_module.grow_kernel
        with patch.object(kernel_module, "grow_kernel", lambda *a: calls.append(1) or real(*a)):
            results = pipe.generate_many(prompts)
        assert bool(calls) == (form == "triton")
        runs[form] = [(r.tokens, r.stats.tau) for r in results]
    assert runs["triton"] == runs["graph"]
    assert [t for t, _ in runs["triton"]] == [pipe.generate_plain(p).tokens for p in prompts]


class Scrambled(BestFirstScorer):
    """Grows its trees on the device, then breaks them: each tree's first subtree size is off by one."""

    def build_on_device(self, proposals, roots, prefix_lens, budget):
        made = super().build_on_device(proposals, roots, prefix_lens, budget)
        block = made.block.clone()
        block[3, 1 :: budget + 1] += 1
        return DeviceTrees(block, made.nodes, made.max_depth)


def test_a_scorer_whose_device_trees_are_broken_fails_their_sequences_in_one_line_before_any_commit():
    pipe = grown_pipe(2, False)
    pipe.scorer = Scrambled()
    done = list(pipe.batched().run([[3, 4, 5, 3], [9, 8, 7]]))
    assert len(done) == 2
    for f in done:
        assert isinstance(f.error, PluginError) and "\n" not in str(f.error)
        assert str(f.error).startswith("scorer 'best-first' (plugin 'jetspec.builtins') built an invalid tree on the device (tokens [")
        assert f.error.partial.tokens == []  # its first round's tree was broken: nothing committed


class Shapeless(BestFirstScorer):
    def build_on_device(self, proposals, roots, prefix_lens, budget):
        return DeviceTrees(torch.zeros(7, 3, dtype=torch.int64), budget + 1, 1)


class Strided(BestFirstScorer):
    """The right shape, but a strided view (every other column of a wider block): not one flat read-back."""
    def build_on_device(self, proposals, roots, prefix_lens, budget):
        return DeviceTrees(torch.zeros(7, 2 * proposals.size * (budget + 1), dtype=torch.int64)[:, ::2], budget + 1, 1)


@pytest.mark.parametrize("scorer, block", [(Shapeless, "block (7, 3) torch.int64"), (Strided, "block (7, 26) torch.int64")])
def test_a_scorer_whose_device_trees_have_the_wrong_shape_is_one_line(scorer, block):
    pipe = grown_pipe(2, False)
    pipe.scorer = scorer()
    done = list(pipe.batched().run([[3, 4, 5, 3], [9, 8, 7]]))
    for f in done:
        assert isinstance(f.error, PluginError) and "\n" not in str(f.error)
        assert str(f.error).startswith(f"scorer 'best-first' (plugin 'jetspec.builtins') returned DeviceTrees({block} on cpu, nodes 13, "
                                       "max_depth 1) from build_on_device; expected DeviceTrees of a contiguous [7, 26] int64 block")


def test_a_drafter_whose_device_proposal_is_malformed_fails_its_own_sequence_the_others_go_on():
    pipe = grown_pipe(2, True)
    calls = {"n": 0}
    real = HeadDrafter.propose_on_device

    def sometimes_wrong(drafter, state, budget):
        calls["n"] += 1
        p = real(drafter, state, budget)
        return p if calls["n"] != 3 else DeviceProposal(p.tokens.float(), p.logp, p.trie)

    prompts = [[3, 4, 5, 3], [9, 8, 7], [1, 2, 1, 2]]
    with patch.object(HeadDrafter, "propose_on_device", sometimes_wrong):
        done = sorted(pipe.batched().run(prompts), key=lambda f: f.index)
    failed = [f for f in done if f.error is not None]
    assert len(failed) == 1 and str(failed[0].error).startswith("drafter 'jetspec' (plugin 'jetspec.builtins') returned marginals (")
    assert "expected int64 tokens and float log-probs of one shape [D >= 1, K]" in str(failed[0].error)
    for f in done:
        if f.error is None:
            assert f.result.tokens == pipe.generate_plain(prompts[f.index]).tokens


# ---------------------------------------------------------------------------- the graphed build's shapes
class EagerGraphs:
    """A stand-in for `GraphSet` on the CPU: runs the recorded function at every replay, keeps the keys."""

    def __init__(self):
        self.keys = []

    def replay(self, key, fn):
        self.keys.append(key)
        return fn()


@settings(max_examples=30, deadline=None)
@given(cases=st.lists(step_proposals(), min_size=1, max_size=4), budget=st.sampled_from([4, 8]))
def test_the_graphed_build_pads_a_step_to_its_sequence_bucket_and_returns_its_own_trees(cases, budget):
    """Graphs are kept for multiples of SEQUENCE_BUCKET sequences: a step of S fills the first S rows of
    a bucket's static inputs (the rest: the first sequence's copies, or an earlier step's) and gets back
    the trees of its own S sequences, bit for bit those of the eager build on those S alone."""
    from jetspec.scorers.best_first_device import SEQUENCE_BUCKET, GraphedGrowth

    graphed = GraphedGrowth()
    graphed.graphs = EagerGraphs()
    for tokens, logp, tries in cases:
        proposals = device_proposals(tokens, logp, tries)
        if not fills(proposals, budget):
            continue
        roots, prefixes = torch.arange(proposals.size) + 3, torch.arange(proposals.size) * 7
        made = graphed(proposals, roots, prefixes, budget)
        eager = grow(proposals, roots, prefixes, budget)
        assert torch.equal(made.block, eager.block) and made.nodes == eager.nodes and made.max_depth == eager.max_depth
        assert made.block.is_contiguous()  # read back as one flat copy
        assert graphed.graphs.keys[-1][0] == SEQUENCE_BUCKET  # 1..3 sequences: one bucket


def test_a_batch_draining_sequence_by_sequence_replays_one_shape_per_bucket():
    """Sequences leaving a step one at a time (16 -> 9) keep one graph shape (16 rows), not eight."""
    from jetspec.scorers.best_first_device import GraphedGrowth

    rng = np.random.default_rng(5)
    tokens = torch.from_numpy(np.stack([[rng.permutation(VOCAB)[:4] for _ in range(3)] for _ in range(16)])).long()  # [16, 3, 4]
    logp = -torch.from_numpy(np.sort(rng.exponential(2.0, (16, 3, 4)), axis=-1)).float()  # [16, 3, 4]
    tries = [TokenTrie() for _ in range(16)]
    for trie in tries:
        trie.add_sequence(rng.integers(0, VOCAB, 5).tolist(), (-rng.exponential(1.0, 5)).tolist())
    graphed = GraphedGrowth()
    graphed.graphs = EagerGraphs()
    for s in range(16, 8, -1):
        proposals = device_proposals(tokens[:s], logp[:s], tries[:s])
        roots, prefixes = torch.arange(s) + 3, torch.arange(s) * 7
        assert torch.equal(graphed(proposals, roots, prefixes, 6).block, grow(proposals, roots, prefixes, 6).block)
    assert len(set(graphed.graphs.keys)) == 1 and graphed.graphs.keys[0][0] == 16


def test_tries_deeper_than_the_marginals_share_one_walk_depth_per_power_of_two():
    """levels_for: 7 rows of marginals and a trie of depth t walk max(7, t) depths, t rounded up to a
    power of two past the rows (the graph shapes by depth: 7, 8, 16), capped by the budget."""
    from jetspec.scorers.best_first_device import levels_for

    def levels(trie_depth, budget=16):
        p = DeviceProposals(torch.zeros(1, 7, 4, dtype=torch.int64), torch.zeros(1, 7, 4), *([torch.zeros(1, 0)] * 4), trie_depth)
        return levels_for(p, budget)

    assert [levels(t) for t in range(0, 17)] == [7] * 8 + [8] + [16] * 8
    assert levels(12, budget=12) == 12 and levels(3, budget=5) == 5


# ---------------------------------------------------------------------------- on a GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the device build's CUDA graphs need a CUDA GPU")
@settings(max_examples=12, deadline=None)
@given(cases=st.lists(step_proposals(), min_size=2, max_size=4), budget=st.sampled_from([8, 24]))
def test_the_graphed_device_build_gives_the_eager_builds_trees_on_cuda(cases, budget):
    """Each shape's graph replayed with the step's proposals copied in: the eager build's block exactly,
    step after step (a replay must not keep a value of the capture's inputs)."""
    scorer, built = BestFirstScorer(), 0
    for tokens, logp, tries in cases:
        proposals = device_proposals(tokens, logp, tries)
        if not fills(proposals, budget):
            continue
        built += 1
        cuda = DeviceProposals(*(getattr(proposals, f).cuda() for f in ("tokens", "logp", "trie_tokens", "trie_parents",
                                                                          "trie_logp", "trie_depths")), proposals.trie_depth)
        roots, prefixes = torch.arange(proposals.size) + 3, torch.arange(proposals.size) * 7
        graphed = scorer.build_on_device(cuda, roots.cuda(), prefixes.cuda(), budget)
        eager = grow(proposals, roots, prefixes, budget)
        assert torch.equal(graphed.block.cpu(), eager.block) and graphed.max_depth == eager.max_depth
    assert len(scorer.device_graphs) >= min(built, 1)


# ---------------------------------------------------------------------------- prompt lookup, flat
def edges(flat: FlatTrie) -> dict[tuple[int, ...], float]:
    """path -> its last edge's log-prob."""
    paths: list[tuple[int, ...]] = []
    for t, p in zip(flat.tokens, flat.parents):
        paths.append((paths[p] if p >= 0 else ()) + (t,))
    return dict(zip(paths, flat.logps))


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(0, 6), min_size=1, max_size=60), budget=st.integers(1, 20), calibrated=st.booleans())
def test_the_lookups_flat_trie_is_its_trie(tokens, budget, calibrated):
    from jetspec.core.interfaces import DecodeState
    from jetspec.drafters.lookup_calibration import LookupCalibration
    from jetspec.drafters.ngram import NgramDrafter
    from jetspec.drafters.head.drafter import SHIPPED

    calibration = LookupCalibration.load(SHIPPED / "SmolLM2-135M-Instruct" / "causal" / "lookup.json") if calibrated else None
    state = DecodeState(tokens=tokens, prompt_len=1)
    flat, trie = NgramDrafter(calibration=calibration).propose_flat(state, budget), NgramDrafter(calibration=calibration).propose(state, budget)
    if flat is None:
        assert not trie.children(())
        return
    assert flat.problem(7) is None
    want = edges(FlatTrie.of(trie))
    assert edges(flat).keys() == want.keys()
    assert list(edges(flat).values()) == pytest.approx([want[k] for k in edges(flat)], abs=1e-12)


BROKEN = [
    (FlatTrie([1, 2], [-1, 1], [-0.1, -0.2], [1, 2]), "parent is not an earlier node"),
    (FlatTrie([1, 2], [-1, 0], [-0.1, -0.2], [1, 3]), "depth is not its parent's + 1"),
    (FlatTrie([1, 99], [-1, 0], [-0.1, -0.2], [1, 2]), "outside the vocabulary [0, 20)"),
    (FlatTrie([1, 2], [-1, 0], [-0.1, float("nan")], [1, 2]), "NaN or above 0"),
    (FlatTrie([1, 2], [-1, 0], [-0.1, 0.5], [1, 2]), "NaN or above 0"),
    (FlatTrie([1, 1], [-1, -1], [-0.1, -0.2], [1, 1]), "two children with one token"),
    (FlatTrie([1, 2], [-1], [-0.1, -0.2], [1, 2]), "lists differ in length"),
    (FlatTrie([1, "x"], [-1, 0], [-0.1, -0.2], [1, 2]), "something other than int tokens"),
]


@pytest.mark.parametrize("broken, says", BROKEN)
def test_a_flat_trie_that_is_no_trie_is_named(broken, says):
    assert says in broken.problem(VOCAB)


@pytest.mark.parametrize("broken", [b for b, says in BROKEN if "differ in length" not in says and "other than" not in says])
def test_the_step_check_of_packed_tries_finds_what_problem_finds(broken):
    good = FlatTrie([1, 2, 3], [-1, 0, -1], [-0.1, -0.2, 0.0], [1, 2, 1])
    tries = [good, broken, None, good]
    ints, logp, _ = pack_tries(tries)
    assert trie_faults(ints, logp, [3, broken.size, 0, 3], VOCAB).tolist() == [False, True, False, False]


@st.composite
def flat_tries(draw) -> FlatTrie:
    """A FlatTrie, well-formed or broken in one entry: a parent not earlier (or below -1), a depth off by
    one, a token outside [0, VOCAB), a log-prob above 0 or NaN, a sibling's token repeated."""
    n = draw(st.integers(1, VOCAB))  # at most VOCAB siblings: distinct tokens for all
    parents = [-1] + [draw(st.integers(-1, i - 1)) for i in range(1, n)]
    depths: list[int] = []
    for p in parents:
        depths.append(1 if p < 0 else depths[p] + 1)
    tokens: list[int] = []
    for p in parents:  # each a token its siblings do not have
        free = [t for t in range(VOCAB) if (p, t) not in set(zip(parents, tokens))]
        tokens.append(free[draw(st.integers(0, len(free) - 1))])
    logps = [-draw(st.floats(0, 30)) for _ in range(n)]
    j, fault = draw(st.integers(0, n - 1)), draw(st.sampled_from(["none", "parent", "depth", "token", "logp", "twin"]))
    if fault == "parent":
        parents[j] = draw(st.sampled_from([j, j + 1, -2, n + 5]))
    elif fault == "depth":
        depths[j] += draw(st.sampled_from([-1, 1, 7]))
    elif fault == "token":
        tokens[j] = draw(st.sampled_from([-1, VOCAB, 10**12]))
    elif fault == "logp":
        logps[j] = draw(st.sampled_from([0.5, float("nan"), float("inf")]))
    elif fault == "twin" and j > 0:
        tokens[j], parents[j], depths[j] = tokens[0], parents[0], depths[0]  # the root's sibling with its token
    return FlatTrie(tokens, parents, logps, depths)


@settings(max_examples=200, deadline=None)
@given(tries=st.lists(st.one_of(st.none(), flat_tries()), min_size=1, max_size=9))
def test_the_step_check_of_packed_tries_is_problem_on_every_trie(tries):
    """`trie_faults` over a step's packed tries marks exactly the tries `FlatTrie.problem` rejects."""
    ints, logp, _ = pack_tries(tries)
    sizes = [0 if t is None else t.size for t in tries]
    assert trie_faults(ints, logp, sizes, VOCAB).tolist() == [t is not None and t.problem(VOCAB) is not None for t in tries]


@pytest.mark.parametrize("broken, says", [BROKEN[5], BROKEN[7]])  # found by the step's array check; lists that do not convert
def test_a_drafter_whose_device_trie_is_broken_for_one_sequence_fails_that_sequence_alone(broken, says):
    pipe = grown_pipe(2, True)
    real = HeadDrafter.propose_on_device

    def broken_for_the_first_prompt(drafter, state, budget):
        p = real(drafter, state, budget)
        return DeviceProposal(p.tokens, p.logp, broken) if state.tokens[0] == 3 else p

    prompts = [[3, 4, 5, 3], [9, 8, 7], [6, 5, 6, 5]]
    with patch.object(HeadDrafter, "propose_on_device", broken_for_the_first_prompt):
        done = {f.index: f for f in pipe.batched().run(prompts)}
    assert isinstance(done[0].error, PluginError) and "whose trie is wrong: a FlatTrie" in str(done[0].error) and says in str(done[0].error)
    for i in (1, 2):
        assert done[i].error is None and done[i].result.tokens == pipe.generate_plain(prompts[i]).tokens


def test_a_drafter_whose_device_trie_holds_a_foreign_token_fails_its_own_sequence_in_one_line():
    pipe = grown_pipe(2, True)
    real = HeadDrafter.propose_on_device

    def foreign(drafter, state, budget):
        p = real(drafter, state, budget)
        return DeviceProposal(p.tokens, p.logp, FlatTrie([10_000_000], [-1], [-0.5], [1]))

    with patch.object(HeadDrafter, "propose_on_device", foreign):
        done = list(pipe.batched().run([[3, 4, 5, 3], [9, 8, 7]]))
    for f in done:
        assert isinstance(f.error, PluginError) and "\n" not in str(f.error)
        assert str(f.error).startswith("drafter 'jetspec' (plugin 'jetspec.builtins') returned a DeviceProposal from "
                                       "propose_on_device whose trie is wrong: a FlatTrie holds a token outside the vocabulary")


# ---------------------------------------------------------------------------- the conformance kit
class Contrary(BestFirstScorer):
    """Grows valid trees on the device from its rows ranked worst first: real candidates, not the
    nodes its `build` picks."""

    def build_on_device(self, proposals, roots, prefix_lens, budget):
        worst = dataclasses.replace(proposals, tokens=proposals.tokens.flip(-1))
        return super().build_on_device(worst, roots, prefix_lens, budget)


@pytest.mark.parametrize("scorer, says", [
    (Contrary, r"build_on_device: sequence \d's device tree has paths \[.*\] that build leaves out and lacks \[.*\]"),
    (Scrambled, r"build_on_device: scorer 'odd' .*built an invalid tree on the device"),
])
def test_the_kit_fails_a_scorer_whose_device_trees_are_not_its_host_trees(scorer, says):
    import re

    from jetspec import Implementation
    from jetspec.scorers.best_first import BestFirstOptions as Options
    from jetspec.testing import ConformanceError, check_scorer

    with pytest.raises(ConformanceError) as e:
        check_scorer(Implementation("odd", lambda o: scorer(), Options), registry=REG, examples=20, targets=("decoder",),
                     shrink=False, batched=0)
    assert "\n" not in str(e.value) and re.search(says, str(e.value)), str(e.value)


def test_the_kit_passes_the_built_in_scorer_and_drafter_on_the_device_path():
    from jetspec.testing import check_scorer

    check_scorer("best-first", registry=REG, examples=10, targets=("decoder",), shrink=False, batched=0)
