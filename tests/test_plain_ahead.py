"""Plain decoding with each step's forward queued before the host reads the step before
(`core/plain_ahead.py`, the device path): the same tokens, stats and errors as the
step-at-a-time loop. On the CPU the device is the host (`accept_on_device = "always"`)."""

from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from jetspec.core import pipeline as pipeline_module
from jetspec.core.errors import PluginError
from jetspec.verifiers.greedy import GreedyVerifier
from support.models import EOS, FAMILIES, tiny_target
from support.plain import plain_output
from support.registry import make_test_registry

REG = make_test_registry()


def plain_pipe(family: str, seed: int, max_new: int, ahead: bool = True, verifier: str = "greedy", **generation):
    b = jetspec.builder(REG).target(tiny_target(family, seed)).kv_cache("paged")
    if verifier == "sampling":
        b = b.verifier("sampling", temperature=0.9, seed=3)
    return b.generation(budget=0, max_new_tokens=max_new, accept_on_device="always", plain_ahead=ahead, **generation).build()


class Uses:
    """Counts the generations that went through plain_ahead."""

    def __enter__(self):
        self.calls = 0
        real = pipeline_module.plain_ahead

        def counted(*args):
            self.calls += 1
            return real(*args)

        self._patch = patch.object(pipeline_module, "plain_ahead", counted)
        self._patch.start()
        return self

    def __exit__(self, *exc):
        self._patch.stop()


prompts = st.lists(st.integers(0, 95), min_size=1, max_size=20)


@settings(max_examples=30, deadline=None)
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 3), prompt=prompts, max_new=st.integers(1, 40))
def test_plain_ahead_gives_the_tokens_of_plain_decoding(family, seed, prompt, max_new):
    pipe = plain_pipe(family, seed, max_new)
    with Uses() as uses:
        result = pipe.generate(prompt)
    assert uses.calls == 1
    assert tuple(result.tokens) == plain_output(family, seed, tuple(prompt), max_new)
    assert result.stats.rounds == len(result.tokens) == result.stats.new_tokens  # one round a token
    assert result.stopped in ("length", "eos") and (result.stopped == "eos") == (EOS in result.tokens)


@settings(max_examples=10, deadline=None)
@given(family=st.sampled_from(FAMILIES), prompt=prompts, max_new=st.integers(1, 30))
def test_seeded_sampling_draws_the_same_tokens_ahead_or_not(family, prompt, max_new):
    """The verifier is called after the host read the token before: it sees the state it always sees."""
    ahead = plain_pipe(family, 1, max_new, verifier="sampling").generate(prompt)
    step_by_step = plain_pipe(family, 1, max_new, ahead=False, verifier="sampling").generate(prompt)
    assert ahead.tokens == step_by_step.tokens and ahead.stopped == step_by_step.stopped


def test_a_stop_token_ends_it_and_the_next_generation_starts_clean():
    family = FAMILIES[0]
    pipe = plain_pipe(family, 0, 24)
    prompt = [7, 8, 9, 10]
    full = list(plain_output(family, 0, tuple(prompt), 24))
    stop = full[5]
    cut = pipe.generate(prompt, stop_token_ids=[stop])
    assert cut.tokens == full[: full.index(stop) + 1] and cut.stopped == "stop_token"
    # the step queued past the stop token is dropped: the same pipeline again gives the full output
    assert pipe.generate(prompt).tokens == full
    assert pipe.generate(prompt, max_new_tokens=3).tokens == full[:3]


def test_one_read_back_a_token():
    pipe = plain_pipe(FAMILIES[1], 2, 16)
    before = pipe._readback.copies
    result = pipe.generate([3, 4, 5])
    assert pipe._readback.copies - before == len(result.tokens) == 16


def test_off_or_off_the_device_path_it_is_not_used():
    prompt = [3, 4, 5, 6]
    with Uses() as uses:
        off = plain_pipe(FAMILIES[0], 0, 12, ahead=False).generate(prompt)
        host = (jetspec.builder(REG).target(tiny_target(FAMILIES[0], 0)).kv_cache("paged")
                .generation(budget=0, max_new_tokens=12, accept_on_device="never").build().generate(prompt))  # fmt: skip
    assert uses.calls == 0
    assert off.tokens == host.tokens == list(plain_output(FAMILIES[0], 0, tuple(prompt), 12))


class OutOfVocabulary(GreedyVerifier):
    """Reports a bonus token the vocabulary does not have."""

    def accept_on_device(self, tree, logits, state):
        packed = super().accept_on_device(tree, logits, state)
        packed[-1] = 10**6
        return packed


def test_a_verifier_s_out_of_vocabulary_token_fails_in_one_line_and_keeps_the_prompt():
    """The next step was queued with that token (clamped into the vocabulary on the device, so no
    embedding lookup fails); the host's check of the read-back names the verifier."""
    pipe = plain_pipe(FAMILIES[0], 0, 8)
    pipe.verifier = OutOfVocabulary()
    with pytest.raises(PluginError, match=r"bonus token 1000000") as e:
        pipe.generate([3, 4, 5])
    assert "\n" not in str(e.value) and e.value.partial.tokens == []
