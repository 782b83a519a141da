"""Hypothesis strategies for the method's data: proposals and draft trees (random, valid)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from ..core.proposal import DepthMarginals, EmptyProposal, TokenTrie
from ..core.tree import DraftTree

LOGPS = st.floats(-8.0, 0.0, allow_nan=False)


@st.composite
def token_tries(draw, vocab: int = 96, max_paths: int = 12, max_depth: int = 8) -> TokenTrie:
    """A trie of up to `max_paths` random continuations with random edge log-probs <= 0."""
    trie = TokenTrie()
    for _ in range(draw(st.integers(0, max_paths))):
        path = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=max_depth))
        trie.add_sequence(path, draw(st.lists(LOGPS, min_size=len(path), max_size=len(path))))
    return trie


@st.composite
def depth_marginals(draw, vocab: int = 96, max_depth: int = 6, max_k: int = 6) -> DepthMarginals:
    """Per-depth top-k candidates: distinct tokens per depth, log-probs sorted descending."""
    depth, k = draw(st.integers(1, max_depth)), draw(st.integers(1, max_k))
    tokens = [draw(st.lists(st.integers(0, vocab - 1), min_size=k, max_size=k, unique=True)) for _ in range(depth)]
    logps = [sorted(draw(st.lists(LOGPS, min_size=k, max_size=k)), reverse=True) for _ in range(depth)]
    return DepthMarginals(torch.tensor(tokens), torch.tensor(logps))


def proposals(vocab: int = 96):
    """Any of the core proposal kinds, the empty one included."""
    return st.one_of(token_tries(vocab), depth_marginals(vocab), st.just(EmptyProposal()))


@st.composite
def draft_trees(draw, vocab: int = 96, max_nodes: int = 24) -> DraftTree:
    """A random valid draft tree: random parents, distinct sibling tokens."""
    n = draw(st.integers(1, max_nodes))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    tokens = [draw(st.integers(0, vocab - 1))]
    used: dict[int, set[int]] = {}
    for i in range(1, n):
        taken = used.setdefault(parents[i], set())
        tok = draw(st.integers(0, vocab - 1).filter(lambda t: t not in taken))
        taken.add(tok)
        tokens.append(tok)
    scores = [0.0] + [-float(i) for i in range(1, n)]
    return DraftTree.from_parents(tokens, parents, scores)


@st.composite
def trees_and_choices(draw, vocab: int = 96, max_nodes: int = 40) -> tuple[DraftTree, list[int]]:
    """A tree and the target's token at each node [N], steered to follow a child often (deep paths)."""
    tree = draw(draft_trees(vocab=vocab, max_nodes=max_nodes))
    choice = []
    for i in range(tree.size):
        kids = tree.children(i)
        if kids and draw(st.booleans()):
            choice.append(int(tree.tokens[draw(st.sampled_from(kids))]))
        else:
            choice.append(draw(st.integers(0, vocab - 1)))
    return tree, choice
