"""`accum-logp` and `capped` tree scorers: valid prefix-closed trees within budget, built from the
proposal's own candidates, with the pop / fan-out rule each one promises."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from jetspec.core.proposal import DepthMarginals, TokenTrie
from jetspec.core.tree import DraftTree
from jetspec.scorers.accum_logp import AccumLogpOptions, AccumLogpScorer
from jetspec.scorers.best_first import BestFirstScorer
from jetspec.scorers.capped import CappedOptions, CappedScorer, fanout_cap


@st.composite
def marginals(draw):
    depth, k = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    logps = -torch.tensor(draw(st.lists(st.floats(0.0, 8.0), min_size=depth * k, max_size=depth * k))).reshape(depth, k)
    return DepthMarginals(torch.arange(depth * k).reshape(depth, k) + 10, logps.sort(dim=1, descending=True).values)


@st.composite
def tries(draw):
    trie = TokenTrie()
    for _ in range(draw(st.integers(1, 8))):
        seq = draw(st.lists(st.integers(0, 5), min_size=1, max_size=5))
        trie.add_sequence(seq, [-draw(st.floats(0.0, 6.0)) for _ in seq])
    return trie


proposals = st.one_of(marginals(), tries())


def paths(tree: DraftTree) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for i in range(1, tree.size):
        out.append(out[int(tree.parents[i])] + (int(tree.tokens[i]),))
    return out


def count_nodes(proposal, limit=10_000) -> int:
    n, stack = 0, [()]
    while stack and n < limit:
        path = stack.pop()
        for tok, _ in proposal.children(path):
            n += 1
            stack.append(path + (tok,))
    return n


def assert_grown_from(tree: DraftTree, proposal, root: int, budget: int) -> None:
    """Root first; every node is a candidate child of its parent's path, scored cumulatively."""
    tree.validate()
    assert int(tree.tokens[0]) == root and tree.budget <= budget
    ps = paths(tree)
    for i in range(1, tree.size):
        parent = int(tree.parents[i])
        kids = dict(proposal.children(ps[parent]))
        assert int(tree.tokens[i]) in kids
        assert math.isclose(float(tree.scores[i]), float(tree.scores[parent]) + kids[int(tree.tokens[i])], abs_tol=1e-4)


@given(proposals, st.integers(0, 60), st.one_of(st.none(), st.integers(1, 4)))
def test_accum_logp_expands_the_best_nodes_whole(proposal, budget, fanout):
    tree = AccumLogpScorer(AccumLogpOptions(fanout=fanout)).build(proposal, root=3, budget=budget)
    assert_grown_from(tree, proposal, 3, budget)
    available = count_nodes(proposal) if fanout is None else None
    if available is not None:
        assert tree.budget == min(budget, available)
    ps = paths(tree)
    offered = [len(proposal.children(p)[:fanout]) for p in ps]
    kids = [len(tree.children(i)) for i in range(tree.size)]
    partial = [i for i in range(tree.size) if 0 < kids[i] < offered[i]]
    assert len(partial) <= 1  # only the last pop can be cut short by the budget
    expanded = [i for i in range(tree.size) if kids[i] > 0]
    waiting = [i for i in range(tree.size) if kids[i] == 0 and offered[i] > 0]
    if expanded and waiting:  # the heap pops the best node first
        assert min(float(tree.scores[i]) for i in expanded) >= max(float(tree.scores[i]) for i in waiting) - 1e-5


@given(proposals, st.integers(0, 60), st.integers(1, 4), st.floats(0.1, 3.0))
def test_capped_keeps_each_fan_out_under_its_gap_cap(proposal, budget, max_fanout, temperature):
    tree = CappedScorer(CappedOptions(max_fanout=max_fanout, temperature=temperature)).build(proposal, 3, budget)
    assert_grown_from(tree, proposal, 3, budget)
    for i, path in enumerate(paths(tree)):
        kids = list(proposal.children(path))
        assert len(tree.children(i)) <= fanout_cap(kids, max_fanout, temperature) <= max_fanout
        # the children kept are the best-ranked ones
        assert [int(tree.tokens[c]) for c in tree.children(i)] == [t for t, _ in kids[: len(tree.children(i))]]


def test_capped_fan_out_follows_the_top_two_gap():
    assert fanout_cap([(1, -0.1), (2, -0.1), (3, -0.2), (4, -0.3)], 4, 1.0) == 4  # undecided
    assert fanout_cap([(1, -0.1), (2, -0.1 - math.log(2)), (3, -3.0)], 4, 1.0) == 2  # top-1 twice top-2
    assert fanout_cap([(1, -0.01), (2, -6.0)], 4, 1.0) == 1  # confident
    assert fanout_cap([(1, -0.5)], 4, 1.0) == 1 and fanout_cap([], 4, 1.0) == 0


@given(marginals(), st.integers(0, 40))
def test_with_no_cap_binding_capped_is_best_first(proposal, budget):
    """max_fanout >= k and an infinite temperature leave best-first's exact top-B set."""
    tree = CappedScorer(CappedOptions(max_fanout=5, temperature=1e9)).build(proposal, 3, budget)
    exact = BestFirstScorer().build(proposal, 3, budget)
    assert sorted(tree.scores.tolist()) == sorted(exact.scores.tolist())
