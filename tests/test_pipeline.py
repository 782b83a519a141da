"""Pipeline behaviour beyond losslessness: stats, inputs, capacity, streaming."""

import pytest

import jetspec
from jetspec.core.errors import CapacityError, InputError
from jetspec.core.interfaces import PadsForward
from support.models import tiny_hf_model, tiny_target
from support.registry import make_test_registry

REG = make_test_registry()


def pipe(**gen):
    return jetspec.builder(REG).target(tiny_target("llama", 1)).drafter("ngram").generation(**gen).build()


def test_stats_count_rounds_tau_and_phases():
    p = pipe(budget=16, max_new_tokens=30)
    streamed = []
    r = p.generate([4, 5, 6, 4, 5, 6, 4, 5], on_tokens=streamed.extend)
    s = r.stats
    assert streamed == r.tokens and s.new_tokens == len(r.tokens)
    assert s.tau == pytest.approx(len(r.tokens) / s.rounds)
    assert set(s.seconds) == {"prefill", "draft", "build", "verify", "accept", "wait", "commit"}
    assert sum(s.accepted_by_depth[:1]) <= s.rounds
    plain = p.generate_plain([4, 5, 6, 4, 5, 6, 4, 5])
    assert plain.stats.rounds == len(plain.tokens) and plain.stats.tau == 1.0


def test_empty_prompt_is_one_line():
    with pytest.raises(InputError, match="the prompt is empty"):
        pipe().generate([])
    with pytest.raises(InputError, match="no tokenizer"):
        pipe().generate("hello")


def test_out_of_vocabulary_prompt():
    with pytest.raises(InputError, match=r"outside the vocabulary \[0, 96\)"):
        pipe().generate([1, 500])


def test_budget_too_large_for_the_context_fails_before_any_work():
    with pytest.raises(CapacityError, match="needs 2066 positions; the target allows 2048"):
        pipe(budget=64, max_new_tokens=2000).generate([1, 2])


def test_a_single_token_prompt_works():
    r = pipe(budget=8, max_new_tokens=5).generate([7])
    assert r.tokens == pipe(budget=8, max_new_tokens=5).generate_plain([7]).tokens


def test_plain_decoding_builds_without_the_drafters_requirements():
    """Budget 0 builds no drafter: a head drafter's need for hidden states does not apply, so the
    default config (drafter `jetspec`) serves plain decoding on a target without them."""
    from jetspec.core.errors import IncompatibleError

    class NoHidden:  # the tiny target minus its hidden-states capability
        def __init__(self, inner):
            self.inner, self.provides = inner, ()

        def __getattr__(self, name):
            return getattr(self.inner, name)

    target = NoHidden(tiny_target("llama", 1))
    with pytest.raises(IncompatibleError, match="hidden_states"):
        jetspec.builder(REG).target(target).drafter("jetspec").generation(budget=8).build()
    plain = jetspec.builder(REG).target(target).generation(budget=0, max_new_tokens=4).build()
    assert plain.drafter is None and len(plain.generate([3, 4, 5]).tokens) == 4


def test_stop_token_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(InputError, match=r"^stop token id 96 is not a token of this target; ids must be integers in \[0, 96\)$"):
        pipe().generate([1, 2], stop_token_ids=[5, 96])
    with pytest.raises(InputError, match="stop token id 500 is not a token"):
        pipe(stop_token_ids=[500]).generate([1, 2])
    assert pipe(max_new_tokens=4, stop_token_ids=[95]).generate([1, 2]).stopped in ("length", "stop_token")


def test_a_prompt_that_is_not_utf8_is_one_line():
    """Undecodable command-line bytes reach Python as lone surrogates (surrogateescape)."""
    with pytest.raises(InputError, match=r"^the prompt is not valid UTF-8 text \(character 2 cannot be encoded\)"):
        pipe().generate(b"hi\xff".decode("utf-8", "surrogateescape"))


def test_a_round_reserves_the_pending_slots_its_target_says_a_forward_writes(tmp_path):
    """`PadsForward.pending_for`: a target whose forward of n tokens writes more (a CUDA graph's
    padded bucket) finds them reserved when its forward starts, so it need not reserve again."""
    tiny_hf_model("llama", seed=3, hidden=64, layers=2).save_pretrained(tmp_path)
    p = (jetspec.builder(REG).target("decoder", path=str(tmp_path), dtype="float32", device="cpu").drafter("ngram")
         .generation(budget=16, max_new_tokens=30).build())
    prompt = [4, 5, 6, 4, 5, 6, 4, 5]
    reference = p.generate(prompt).tokens
    assert isinstance(p.target, PadsForward)
    target, forward, seen = p.target, p.target.forward, []

    def padded_forward(tokens, meta, cache, hidden_layers=()):
        seen.append((tokens.numel(), cache.pending))
        cache.begin(tokens.numel())  # this eager forward writes n after all
        return forward(tokens, meta, cache, hidden_layers)

    target.pending_for, target.forward = (lambda n, cache: n + 2), padded_forward
    assert p.generate(prompt).tokens == reference
    assert len(seen) > 1 and all(pending == n + 2 for n, pending in seen)  # the prompt's forward, then the rounds'
