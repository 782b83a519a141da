"""`core/checks.py`: the vectorised tree check agrees with `DraftTree.validate` (plus root, budget
and vocabulary) on valid trees and on every one-field corruption of them."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetspec.core.checks import check_tree
from jetspec.core.errors import InputError, PluginError
from jetspec.core.tree import DraftTree

VOCAB = 50
FIELDS = ("tokens", "parents", "depths", "subtree_sizes")


@st.composite
def trees(draw):
    n = draw(st.integers(1, 24))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    tokens = [draw(st.integers(0, VOCAB - 1))]
    for i in range(1, n):  # distinct tokens among siblings
        taken = {tokens[j] for j in range(1, i) if parents[j] == parents[i]}
        tokens.append(draw(st.sampled_from([t for t in range(VOCAB) if t not in taken])))
    return DraftTree.from_parents(tokens, parents)


def reference_ok(tree: DraftTree, root: int, budget: int) -> bool:
    try:
        tree.validate()
    except InputError:
        return False
    return int(tree.tokens[0]) == root and tree.budget <= budget and all(0 <= t < VOCAB for t in tree.tokens.tolist())


@given(tree=trees(), field=st.sampled_from(FIELDS), at=st.integers(0, 30), delta=st.integers(-3, 60), budget=st.integers(0, 30))
def test_the_vectorised_check_agrees_with_validate(tree, field, at, delta, budget):
    values = {f: getattr(tree, f).clone() for f in FIELDS}
    values[field][at % tree.size] += delta
    bad = DraftTree(*(values[f] for f in FIELDS), tree.scores)
    root = int(tree.tokens[0])
    for candidate in (tree, bad):
        if reference_ok(candidate, root, budget):
            assert check_tree(candidate, root, budget, VOCAB, "scorer 's'") is candidate
        else:
            with pytest.raises(PluginError, match=r"^scorer 's' built "):
                check_tree(candidate, root, budget, VOCAB, "scorer 's'")


def test_a_tree_on_the_wrong_root_names_both_tokens():
    with pytest.raises(PluginError, match=r"its root token is 3, but the last committed token is 4$"):
        check_tree(DraftTree.chain([3, 5]), 4, 8, VOCAB, "scorer 's'")
