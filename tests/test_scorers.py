"""Tree scorers: best-first picks the exact top-B prefix-closed set; chain follows rank 1."""

import itertools
import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from jetspec.core.proposal import DepthMarginals, TokenTrie
from jetspec.scorers.best_first import BestFirstOptions, BestFirstScorer, ChainScorer


@st.composite
def marginals(draw):
    depth = draw(st.integers(1, 4))
    k = draw(st.integers(1, 4))
    # distinct log-probs so the top-B set is unique
    raw = draw(st.lists(st.integers(1, 10_000), min_size=depth * k, max_size=depth * k, unique=True))
    logps = -torch.tensor(raw, dtype=torch.float64).reshape(depth, k) / 1000
    logps, _ = logps.sort(dim=1, descending=True)
    tokens = torch.arange(depth * k).reshape(depth, k) + 100
    return DepthMarginals(tokens, logps)


def all_paths(proposal, max_depth):
    """Every path of the (finite) proposal with its cumulative score."""
    out = {}
    frontier = [((), 0.0)]
    while frontier:
        path, score = frontier.pop()
        if path:
            out[path] = score
        if len(path) < max_depth:
            for tok, lp in proposal.children(path):
                frontier.append((path + (tok,), score + lp))
    return out


@given(marginals(), st.integers(0, 40))
def test_best_first_is_the_exact_top_budget_set(proposal, budget):
    tree = BestFirstScorer().build(proposal, root=7, budget=budget)
    paths = all_paths(proposal, proposal.depth)
    best = sorted(paths.values(), reverse=True)[:budget]
    got = sorted(tree.scores.tolist()[1:], reverse=True)
    assert tree.budget == min(budget, len(paths))
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(got, best))
    for i in range(1, tree.size):  # scores are cumulative along the tree's own paths
        assert tree.scores[i] <= tree.scores[int(tree.parents[i])] + 1e-6


@given(marginals(), st.integers(1, 40), st.integers(1, 3))
def test_best_first_respects_max_depth(proposal, budget, max_depth):
    tree = BestFirstScorer(BestFirstOptions(max_depth=max_depth)).build(proposal, 0, budget)
    assert int(tree.depths.max()) <= max_depth


def test_chain_follows_rank_one():
    trie = TokenTrie()
    trie.add_sequence([1, 2, 3], [-0.1, -0.1, -0.1])
    trie.add_sequence([4, 5], [-0.05, -2.0])
    tree = ChainScorer().build(trie, root=0, budget=10)
    assert tree.tokens.tolist() == [0, 4, 5]
    assert ChainScorer().build(trie, root=0, budget=1).tokens.tolist() == [0, 4]


def test_token_trie_from_counts_gives_empirical_conditionals():
    trie = TokenTrie.from_counts([[1, 2], [1, 3], [1, 2], [4]])
    kids = dict(trie.children(()))
    assert math.isclose(kids[1], math.log(3 / 4)) and math.isclose(kids[4], math.log(1 / 4))
    assert [t for t, _ in trie.children((1,))] == [2, 3]
