"""`keep_best` (`core/row_sharing.py`): a capped step's draft rows go to the draft nodes of highest
score over all the sequences' trees, each tree cut to a prefix-closed subtree in its own pre-order."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.core.row_sharing import keep_best
from jetspec.core.tree import DraftTree


def tree(parents, scores, root=1):
    return DraftTree.from_parents([root] + [10 + i for i in range(1, len(parents))], parents, scores)


def test_the_rows_go_to_the_best_nodes_over_all_trees():
    sure = tree([-1, 0, 1, 2], [0.0, -0.1, -0.2, -0.3])  # a confident chain
    unsure = tree([-1, 0, 0, 1], [0.0, -1.0, -2.0, -1.5])
    a, b = keep_best([sure, unsure], 4)
    assert a.tokens.tolist() == sure.tokens.tolist()  # all three of its drafts rank first
    assert b.tokens.tolist() == [1, 11] and b.parents.tolist() == [-1, 0]  # then the best of the other


def test_a_cut_tree_keeps_its_pre_order_and_scores():
    t = tree([-1, 0, 1, 0, 3], [0.0, -0.5, -3.0, -0.7, -0.8])
    (cut,) = keep_best([t], 3)
    assert cut.tokens.tolist() == [1, 11, 13, 14] and cut.parents.tolist() == [-1, 0, 0, 2]
    assert cut.scores.tolist() == pytest.approx([0.0, -0.5, -0.7, -0.8])


def test_a_child_never_outranks_its_parent_whatever_the_scores():
    """A scorer may write any scores (the greedy verifier never reads them): a child scored above
    its parent, or NaN, ranks as its parent at best, and ties go to the shallower node."""
    odd = tree([-1, 0, 1], [0.0, -5.0, 0.0])  # the child claims more than its parent
    nan = tree([-1, 0, 1], [0.0, math.nan, -0.1])
    flat = tree([-1, 0, 1], [0.0, -1.0, -1.0])
    a, b, c = keep_best([odd, nan, flat], 1)
    assert (a.size, b.size, c.size) == (1, 1, 2)  # flat's depth-1 node (-1.0) first
    a, b, c = keep_best([odd, nan, flat], 3)
    assert (a.size, b.size, c.size) == (2, 1, 3)  # then flat's depth-2 node (-1.0, deeper), then odd's parent (-5.0)
    a, b, c = keep_best([odd, nan, flat], 4)
    assert (a.size, b.size, c.size) == (3, 1, 3)  # odd's child ranks as its parent (-5.0), after it; NaN: last


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_trees=st.integers(1, 4), drafts=st.integers(0, 20))
def test_every_cut_tree_is_prefix_closed_and_the_step_keeps_the_best_drafts(data, n_trees, drafts):
    trees = []
    for _ in range(n_trees):
        n = data.draw(st.integers(1, 8))
        parents = [-1] + [data.draw(st.integers(0, i - 1)) for i in range(1, n)]
        scores = [0.0] + [data.draw(st.floats(-10, 0)) for _ in range(1, n)]
        for i in range(1, n):  # cumulative, as a best-first scorer writes them
            scores[i] = min(scores[i], scores[parents[i]])
        trees.append(DraftTree.from_parents([1] + list(range(10, 9 + n)), parents, scores))
    cut = keep_best(trees, drafts)
    total = sum(t.size - 1 for t in trees)
    assert sum(c.size - 1 for c in cut) == min(drafts, total)
    kept, dropped = [], []
    for t, c in zip(trees, cut):
        c.validate()  # a valid pre-order tree: prefix-closed
        paths = {tuple(_path(c, i)) for i in range(c.size)}
        for i in range(1, t.size):
            (kept if tuple(_path(t, i)) in paths else dropped).append(float(t.scores[i]))
    assert not kept or not dropped or min(kept) >= max(dropped)


def _path(t, i):
    out = []
    while i > 0:
        out.append(int(t.tokens[i]))
        i = int(t.parents[i])
    return out[::-1]
