"""`ngram` (prompt lookup), as its module docstring says: the longest suffix n-gram (n_max down to
n_min) that occurred earlier, the continuations after its `max_matches` most recent earlier
occurrences (up to min(`max_depth`, budget) tokens: no tree of that budget is deeper), merged with
empirical conditional log-probs — checked
against a brute-force reading of that rule while the sequence grows round by round."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.core.interfaces import DecodeState
from jetspec.core.proposal import EmptyProposal
from jetspec.drafters.ngram import NgramDrafter, NgramOptions


def brute_force(tokens, o, budget):
    length = len(tokens)
    for n in range(min(o.n_max, length), o.n_min - 1, -1):
        suffix = tokens[length - n :]
        after = [s for s in range(n, length) if tokens[s - n : s] == suffix]  # positions right after an earlier occurrence
        if after:
            return [tokens[s : s + min(o.max_depth, budget)] for s in after[-o.max_matches :]]
    return None


def walk(proposal, path=()):
    """Every (path, children) of a proposal's trie."""
    kids = proposal.children(path)
    out = {path: kids}
    for token, _ in kids:
        out |= walk(proposal, path + (token,))
    return out


def expected_trie(continuations):
    counts = {}
    for seq in continuations:
        for d in range(len(seq) + 1):
            counts[tuple(seq[:d])] = counts.get(tuple(seq[:d]), 0) + 1
    trie = {}
    for path, c in counts.items():
        if path:
            trie.setdefault(path[:-1], {})[path[-1]] = math.log(c / counts[path[:-1]])
    return trie


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(0, 4), min_size=1, max_size=60), rounds=st.lists(st.integers(1, 6), max_size=8),
       n_max=st.integers(1, 4), max_matches=st.integers(1, 4), max_depth=st.integers(1, 6), budget=st.integers(1, 8))
def test_proposes_the_continuations_of_the_longest_recent_suffix_match(tokens, rounds, n_max, max_matches, max_depth, budget):
    o = NgramOptions(n_max=n_max, n_min=1, max_matches=max_matches, max_depth=max_depth)
    drafter = NgramDrafter(o)
    cut = max(1, len(tokens) - sum(rounds))
    state = DecodeState(tokens=tokens[:cut], prompt_len=cut)
    drafter.reset(state)
    for grow in [0, *rounds]:  # the sequence grows as rounds commit tokens; the index follows
        state.tokens.extend(tokens[len(state.tokens) : len(state.tokens) + grow])
        proposal = drafter.propose(state, budget)
        want = brute_force(state.tokens, o, budget)
        if want is None:
            assert isinstance(proposal, EmptyProposal)
            continue
        got = {path: dict(kids) for path, kids in walk(proposal).items() if kids}
        trie = expected_trie(want)
        assert got.keys() == trie.keys()
        for path in trie:
            assert got[path].keys() == trie[path].keys()
            assert all(math.isclose(got[path][t], trie[path][t]) for t in trie[path])


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(0, 3), min_size=2, max_size=60), budget=st.integers(1, 20))
def test_the_cut_at_the_budget_changes_no_tree(tokens, budget):
    """A tree of `budget` drafts is at most that deep and a path's counts depend on the
    continuations' prefixes alone: best-first builds the same tree from the cut proposal as from
    continuations of the full max_depth."""
    from jetspec.core.proposal import TokenTrie
    from jetspec.scorers.best_first import BestFirstScorer

    o = NgramOptions(max_depth=16)
    drafter = NgramDrafter(o)
    state = DecodeState(tokens=list(tokens), prompt_len=len(tokens))
    drafter.reset(state)
    full = brute_force(tokens, o, budget=o.max_depth)
    if full is None:
        return
    cut = BestFirstScorer().build(drafter.propose(state, budget), tokens[-1], budget)
    whole = BestFirstScorer().build(TokenTrie.from_counts(full), tokens[-1], budget)
    assert cut.tokens.tolist() == whole.tokens.tolist() and cut.parents.tolist() == whole.parents.tolist()
    assert torch.allclose(cut.scores, whole.scores)
