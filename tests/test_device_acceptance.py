"""Acceptance on the device is the host rule, exactly: for any tree and any target choices, the
packed path read back (`core/on_device.py`) is `accept_greedy`'s path, and its tokens are the
round's committed tokens; the verifiers' `accept_on_device` agree with their `accept`."""

import pytest
import torch
from hypothesis import given, settings

import jetspec
from hypothesis import strategies as st

from jetspec.core.interfaces import AcceptsOnDevice, DecodeState, accepts_on_device
from jetspec.core.on_device import Readback, TreeUpload, unpack
from jetspec.core.errors import PluginError
from jetspec.core.tree import DraftTree
from jetspec.testing.models import tiny_decoder
from jetspec.testing.strategies import draft_trees, trees_and_choices
from jetspec.verifiers.greedy import GreedyVerifier, accept_greedy, walk_on_device
from jetspec.verifiers.sampling import SamplingOptions, SamplingVerifier
from support.bad_verifiers import NotAChild
from support.registry import make_test_registry

VOCAB = 96
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # cuda: pinned buffers, events, the walk's kernels


def device_path(tree: DraftTree, choice: list[int], prefix_len: int = 0, device: str = "cpu") -> tuple[list[int], list[int]]:
    dtree = TreeUpload(device, capacity=4)(tree, prefix_len)  # capacity 4: larger trees regrow it
    return unpack(Readback(device)(walk_on_device(dtree, torch.tensor(choice, device=device))))


@settings(max_examples=300)
@given(trees_and_choices(), st.sampled_from(DEVICES))
def test_the_device_walk_accepts_what_the_host_walk_accepts(case, device):
    tree, choice = case
    acc = accept_greedy(tree, choice)
    path, tokens = device_path(tree, choice, device=device)
    assert path == acc.path
    assert tokens == acc.new_tokens(tree)


def test_a_correct_node_under_a_wrong_parent_is_not_accepted_on_the_device():
    tree = DraftTree.from_parents([0, 5, 6, 7, 8], [-1, 0, 0, 1, 1])  # pre-order: 0,5,7,8,6
    # node 5 is wrong (the target wants 6 first), although 5 -> 7 would match
    assert device_path(tree, [6, 7, 0, 0, 3]) == ([0, 4], [6, 3])
    assert device_path(tree, [5, 8, 1, 42, 9]) == ([0, 1, 3], [5, 8, 42])


def test_the_uploaded_tree_holds_the_host_tree_and_its_positions():
    tree = DraftTree.from_parents([0, 5, 6, 7, 8], [-1, 0, 0, 1, 1])
    dtree = TreeUpload("cpu")(tree, prefix_len=10)
    assert dtree.tokens.tolist() == tree.tokens.tolist()
    assert dtree.parents.tolist() == [0] + tree.parents.tolist()[1:]
    assert dtree.positions.tolist() == (tree.depths + 10).tolist()
    assert dtree.ends.tolist() == [0] + (torch.arange(5) + tree.subtree_sizes).tolist()[1:]
    assert dtree.max_depth == 2


@settings(max_examples=100)
@given(trees_and_choices(), st.integers(0, 2**31))
def test_the_greedy_verifier_accepts_the_same_on_the_device(case, seed):
    tree, choice = case
    logits = torch.randn(tree.size, VOCAB, generator=torch.Generator().manual_seed(seed))
    logits[torch.arange(tree.size), torch.tensor(choice)] = 10.0
    verifier, state = GreedyVerifier(), DecodeState(tokens=[1, 2], prompt_len=1)
    assert isinstance(verifier, AcceptsOnDevice)
    acc = verifier.accept(tree, logits, state)
    dtree = TreeUpload("cpu")(tree, 0)
    path, tokens = unpack(Readback("cpu")(verifier.accept_on_device(dtree, logits, state)))
    assert (path, tokens) == (acc.path, acc.new_tokens(tree))


@settings(max_examples=100)
@given(draft_trees(vocab=8, max_nodes=24), st.integers(0, 2**31), st.sampled_from([0.0, 0.7, 1.0]),
       st.sampled_from([None, 3]), st.sampled_from([1.0, 0.8]))
def test_the_sampling_verifier_draws_the_same_on_the_device(tree, seed, temperature, top_k, top_p):
    logits = torch.randn(tree.size, 8, generator=torch.Generator().manual_seed(seed))
    state = DecodeState(tokens=[1, 2, 3], prompt_len=1)
    options = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    host, device = SamplingVerifier(options), SamplingVerifier(options)
    host.reset(state), device.reset(state)
    acc = host.accept(tree, logits, state)
    path, tokens = unpack(Readback("cpu")(device.accept_on_device(TreeUpload("cpu")(tree, 0), logits, state)))
    assert (path, tokens) == (acc.path, acc.new_tokens(tree))


def test_a_read_back_with_an_impossible_length_unpacks_to_nothing():
    assert unpack([0, 0, 0, 5, 5]) == ([], [])
    assert unpack([3, 0, 1, 5, 6]) == ([], [])  # D = 1: at most 2 nodes on a path
    assert unpack([2, 0, 1, 5, 6]) == ([0, 1], [5, 6])


def test_a_subclass_that_overrides_accept_alone_keeps_the_host_path():
    class OwnRule(GreedyVerifier):  # its accept is the rule now; the inherited device walk is not
        def accept(self, tree, logits, state):
            return super().accept(tree, logits, state)

    class OwnRuleOnDevice(OwnRule):
        def accept_on_device(self, tree, logits, state):
            return super().accept_on_device(tree, logits, state)

    assert accepts_on_device(GreedyVerifier()) and accepts_on_device(SamplingVerifier())
    assert not accepts_on_device(OwnRule())
    assert accepts_on_device(OwnRuleOnDevice())


class WrongShape(GreedyVerifier):
    def accept_on_device(self, tree, logits, state):
        return logits.argmax(dim=-1).float()  # [N] float: not a packed path


@pytest.mark.parametrize("verifier, match", [
    (WrongShape, r"returned \(\d+,\) from accept_on_device; expected an int64 tensor of shape \[\d+\]"),
    (NotAChild, r"accepted path \[0, 1000000\]: node 1000000 is not a child of node 0"),
])
def test_a_wrong_device_acceptance_fails_the_round_in_one_line(verifier, match):
    pipe = (jetspec.builder(make_test_registry()).target(tiny_decoder(1)).drafter("ngram").kv_cache("paged")
            .generation(budget=8, max_new_tokens=16, accept_on_device="always").build())
    pipe.verifier = verifier()
    with pytest.raises(PluginError, match=match) as e:
        pipe.generate([5, 6, 7, 5, 6, 7, 5, 6])
    assert "\n" not in str(e.value)
