"""The kit's realistic-size checks catch what small ones cannot: a drafter that keeps token ids in
16 bits (vocabulary >= 32k), one sized for short contexts (> 80 tokens), one whose bug only the
`sampling` verifier sees. Each deliberately broken drafter fails with one line naming the check;
the built-ins pass the same checks (tests/test_conformance.py)."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec import Implementation
from jetspec.caches.dense import DenseKVCache
from jetspec.core.interfaces import DecodeState
from jetspec.drafters.ngram import NgramDrafter, NgramOptions
from jetspec.core.tree import DraftTree
from jetspec.testing import ConformanceError, check_drafter
from jetspec.testing.at_scale import REALISTIC_VOCAB, check_at_scale, realistic_decoder
from jetspec.testing.exactness import first_inexact_node, padded_tree_logits, plain_logits, step
from jetspec.testing.models import TinyDecoder
from jetspec.testing.strategies import draft_trees
from jetspec.testing.subject import resolve
from support.registry import make_test_registry

REG = make_test_registry()
SMALL = dict(registry=REG, examples=4, targets=("decoder",), shrink=False)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fails(check, *args, match, **kw):
    with pytest.raises(ConformanceError) as e:
        check(*args, **kw)
    message = str(e.value)
    assert "\n" not in message, message
    assert re.search(match, message), message
    return message


# ---------------------------------------------------------------------------- the exact target
@settings(max_examples=6, deadline=None)
@given(tree=draft_trees(REALISTIC_VOCAB, max_nodes=12), context=st.integers(1, 140), seed=st.integers(0, 1))
def test_the_realistic_target_scores_a_tree_node_as_a_one_token_step_bit_for_bit(tree, context, seed):
    target = realistic_decoder(seed)
    cache = DenseKVCache(target.info, context + tree.size)
    for t in range(context):
        step(target, cache, (t * 7919) % REALISTIC_VOCAB)
    assert first_inexact_node(padded_tree_logits(target, cache, tree), plain_logits(target, cache, tree)) is None


def test_without_exact_mode_a_tree_node_differs_from_its_one_token_step():
    """Why the realistic target is exact: fp32 in a batch reduces in another order than one row."""
    target = TinyDecoder(0, vocab=REALISTIC_VOCAB)
    cache = DenseKVCache(target.info, 128)
    for t in range(90):
        step(target, cache, t * 1009)
    tree = DraftTree.from_parents([5, 6, 7, 8, 9], [-1, 0, 1, 0, 3], [0, -1, -2, -1, -2])
    assert first_inexact_node(padded_tree_logits(target, cache, tree), plain_logits(target, cache, tree)) is not None


# ---------------------------------------------------------------------------- deliberately bad plugins
class Int16History(NgramDrafter):
    """Keeps the history as int16, as a compact buffer might: ids of 2^15 and more wrap negative."""

    def propose(self, state, budget):
        history = torch.tensor(state.tokens).to(torch.int16).tolist()
        return super().propose(DecodeState(tokens=history, prompt_len=state.prompt_len), budget)


class EightyTokenWindow(NgramDrafter):
    """Copies the context into a buffer sized for the contexts its author tested."""

    def propose(self, state, budget):
        window = torch.zeros(80, dtype=torch.int64)
        window[: len(state.tokens)] = torch.tensor(state.tokens)
        return super().propose(state, budget)


class ScratchState(NgramDrafter):
    """Pushes its first draft onto `state.tokens` to look one token further, and takes it off
    again only in `observe`: invisible to `greedy`, which never reads the state, but the
    `sampling` verifier reads the state's length to pick its uniforms."""

    pushed = 0

    def propose(self, state, budget):
        proposal = super().propose(state, budget)
        kids = proposal.children(())
        if kids:
            state.tokens.append(int(kids[0][0]))
            self.pushed = len(state.tokens) - 1
        return proposal

    def observe(self, state, hidden):
        if self.pushed:
            del state.tokens[self.pushed]
            self.pushed = 0


def drafter(name, cls):
    return Implementation(name, lambda o, target: cls(o, target), NgramOptions)


@pytest.mark.parametrize("cls, match", [
    (Int16History, r"proposal: children\(\(\)\) offers token -\d+ outside the vocabulary \[0, 151936\)"),
    (EightyTokenWindow, r"propose: raised RuntimeError: .* \(after \d+ generated tokens\); example \d+ at scale .*prompt of \d+ tokens"),
], ids=["int16 ids", "80-token buffer"])
def test_a_drafter_that_passes_small_checks_fails_at_realistic_sizes(cls, match):
    check_drafter(drafter("bad", cls), at_scale=0, **SMALL)  # vocabulary 96, contexts <= 64: passes
    msg = fails(check_drafter, drafter("bad", cls), at_scale=1, match=r"^drafter 'bad': " + match, **SMALL)
    assert "tiny-decoder-" in msg and f"v{REALISTIC_VOCAB}" in msg


def test_a_drafter_that_changes_the_state_passes_greedy_and_fails_sampling():
    s = resolve("drafter", drafter("scratch", ScratchState), None, REG)
    check_at_scale(s, lambda t: ScratchState(NgramOptions()), 2, 0, False, verifiers=("greedy",))
    fails(check_at_scale, s, lambda t: ScratchState(NgramOptions()), 2, 0, False, verifiers=("sampling",),
          match=r"^drafter 'scratch': lossless at scale: output differs from plain sampling at position \d+ .*"
                r"sampling \(temperature [\d.]+, top_k \w+, seed \d+\)")


def test_the_ngram_drafter_passes_under_sampling_at_scale():
    check_at_scale(resolve("drafter", "ngram", None, REG), lambda t: NgramDrafter(), 3, 0, False, verifiers=("sampling",))
