"""Greedy acceptance on hand-made trees."""

import torch

from jetspec.core.interfaces import DecodeState
from jetspec.core.tree import DraftTree
from jetspec.verifiers.greedy import GreedyVerifier, accept_greedy

# root 0 -> {a: 5 -> {c: 7, d: 8}, b: 6}
TREE = DraftTree.from_parents([0, 5, 6, 7, 8], [-1, 0, 0, 1, 1])  # pre-order: 0,5,7,8,6


def test_accepts_the_deepest_matching_path_and_its_bonus():
    # target: after root -> 5, after 5 -> 8, after 8 -> 42
    nxt = {0: 5, 1: 8, 2: 1, 3: 42, 4: 9}
    acc = accept_greedy(TREE, [nxt[i] for i in range(5)])
    assert acc.path == [0, 1, 3] and acc.bonus == 42
    assert acc.new_tokens(TREE) == [5, 8, 42]


def test_zero_acceptance_yields_the_bonus_only():
    acc = accept_greedy(TREE, [99, 0, 0, 0, 0])
    assert acc.path == [0] and acc.new_tokens(TREE) == [99]


def test_a_correct_node_under_a_wrong_parent_is_not_accepted():
    # node 5 is wrong (target wants 6 first), although 5 -> 7 would match
    acc = accept_greedy(TREE, [6, 7, 0, 0, 3])
    assert acc.path == [0, 4] and acc.bonus == 3


def test_verifier_uses_argmax_of_the_logits():
    logits = torch.full((5, 50), -1.0)
    for node, tok in {0: 6, 4: 11}.items():
        logits[node, tok] = 1.0
    acc = GreedyVerifier().accept(TREE, logits, DecodeState(tokens=[0], prompt_len=1))
    assert acc.path == [0, 4] and acc.bonus == 11
