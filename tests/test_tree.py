"""DraftTree invariants: DFS pre-order, the interval ancestor rule, positions, validation."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jetspec.core.errors import InputError
from jetspec.core.tree import DraftTree


@st.composite
def random_trees(draw, max_nodes=40):
    n = draw(st.integers(1, max_nodes))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    tokens = [draw(st.integers(0, 10_000))]
    for i in range(1, n):  # distinct tokens keep siblings distinct
        tokens.append(10_001 + i)
    return DraftTree.from_parents(tokens, parents)


def naive_is_ancestor(tree: DraftTree, j: int, i: int) -> bool:
    while i != -1:
        if i == j:
            return True
        i = int(tree.parents[i])
    return False


@given(random_trees())
def test_interval_rule_equals_walking_up_the_parents(tree):
    mask = tree.ancestor_mask()
    for i in range(tree.size):
        for j in range(tree.size):
            assert bool(mask[i, j]) == naive_is_ancestor(tree, j, i) == tree.is_ancestor(j, i)


@given(random_trees())
def test_preorder_layout(tree):
    n = tree.size
    assert int(tree.subtree_sizes[0]) == n
    for i in range(1, n):
        p = int(tree.parents[i])
        assert p < i < p + int(tree.subtree_sizes[p])
        assert int(tree.depths[i]) == int(tree.depths[p]) + 1
    assert tree.position_ids(7).tolist() == [7 + d for d in tree.depths.tolist()]


@given(random_trees())
def test_path_and_children(tree):
    for i in range(tree.size):
        path = tree.path_to(i)
        assert path[0] == 0 and path[-1] == i and len(path) == int(tree.depths[i]) + 1
        assert sorted(tree.children(i)) == [c for c in range(tree.size) if int(tree.parents[c]) == i]


def test_from_parents_relays_out_in_preorder():
    # root 9 with children a(1) and b(2); a has child c(3) given last
    tree = DraftTree.from_parents([9, 1, 2, 3], [-1, 0, 0, 1])
    assert tree.tokens.tolist() == [9, 1, 3, 2]
    assert tree.parents.tolist() == [-1, 0, 1, 0]
    assert tree.subtree_sizes.tolist() == [4, 2, 1, 1]


def test_chain_and_root_only():
    chain = DraftTree.chain([5, 6, 7])
    assert chain.parents.tolist() == [-1, 0, 1] and chain.subtree_sizes.tolist() == [3, 2, 1]
    assert DraftTree.root_only(4).size == 1 and DraftTree.root_only(4).budget == 0


@pytest.mark.parametrize(
    "tokens, parents, message",
    [
        ([1, 2], [0, 0], "root"),
        ([1, 2, 3], [-1, 0, 5], "parent"),
        ([1, 2, 2], [-1, 0, 0], "two children with token 2"),
        ([1, 2, 3], [-1, 2, 1], "not connected"),
    ],
)
def test_malformed_trees_are_rejected_with_a_clear_message(tokens, parents, message):
    with pytest.raises(InputError, match=message):
        DraftTree.from_parents(tokens, parents)


def test_validate_catches_a_non_preorder_layout():
    good = DraftTree.from_parents([0, 1, 2, 3], [-1, 0, 1, 0])
    bad = DraftTree(
        tokens=good.tokens, parents=torch.tensor([-1, 0, 0, 1]), depths=torch.tensor([0, 1, 1, 2]),
        subtree_sizes=torch.tensor([4, 2, 1, 1]), scores=good.scores,
    )
    with pytest.raises(InputError):
        bad.validate()
