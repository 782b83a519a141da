"""`MergedProposal`: several drafters' candidates as one proposal."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from jetspec.core.proposal import DepthMarginals, EmptyProposal, MergedProposal, TokenTrie

paths = st.lists(st.integers(0, 5), min_size=1, max_size=4)
edges = st.lists(st.tuples(paths, st.sampled_from([0.0, -0.5, -1.0, -2.0]) | st.floats(-8.0, 0.0)), max_size=12)  # ties too


def trie(edges) -> TokenTrie:
    t = TokenTrie()
    for path, logp in edges:
        t.add_edge(tuple(path[:-1]), path[-1], logp)
    return t


@given(edges, edges, paths)
def test_children_are_the_union_with_each_tokens_best_log_prob_best_first(a, b, path):
    ta, tb = trie(a), trie(b)
    path = tuple(path[:-1])
    merged = MergedProposal(ta, EmptyProposal(), tb).children(path)
    expected: dict[int, float] = {}
    for token, logp in [*ta.children(path), *tb.children(path)]:
        expected[token] = max(logp, expected.get(token, -1e9))
    assert list(merged) == sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))  # best first, ties by token


def test_a_copied_continuation_extends_below_the_heads_candidates():
    """A head proposes the same candidates at a depth whatever the path; a lookup trie adds its
    copy on top, so a path may follow the copy and then the head's candidates."""
    head = DepthMarginals(torch.tensor([[4, 5], [6, 7], [8, 9]]), torch.tensor([[-0.5, -1.0], [-0.25, -2.0], [-0.125, -3.0]]))
    copy = TokenTrie()
    copy.add_sequence([5, 1, 2])
    m = MergedProposal(head, copy)
    assert list(m.children(())) == [(5, 0.0), (4, -0.5)]  # 5 from both: log 1 from the copy wins
    assert list(m.children((5,))) == [(1, 0.0), (6, -0.25), (7, -2.0)]
    assert list(m.children((5, 1, 2))) == []  # past the head's depth and the copy's end
    assert list(m.children((4, 6))) == [(8, -0.125), (9, -3.0)]  # the head alone: its own order


def test_a_trie_row_read_before_a_new_edge_is_made_again_after_it():
    """A trie hands out the same sorted row for a path until an edge is added under that path."""
    t = TokenTrie()
    t.add_edge((), 3, -1.0)
    first = t.children(())
    assert first == ((3, -1.0),) and t.children(()) is first  # one immutable row, made once
    t.add_edge((), 2, -0.5)
    t.add_edge((3,), 4, -0.1)  # another path: the root's row is not touched by it
    assert t.children(()) == ((2, -0.5), (3, -1.0))
    assert t.children((3,)) == ((4, -0.1),) and t.children((9,)) == ()


def test_a_token_twice_in_one_part_keeps_its_best_log_prob():
    class Twice:
        def children(self, path):
            return [(1, -0.5), (1, -2.0), (3, -0.75)]  # a dict of the row would keep -2.0

    other = TokenTrie()
    other.add_edge((), 2, -1.0)
    assert MergedProposal(Twice(), other).children(()) == [(1, -0.5), (3, -0.75), (2, -1.0)]
