"""The central property: speculative output == plain greedy output, token for token, for any
tiny model, prompt, drafter, scorer, KV-cache backend, budget and length (fp32, CPU)."""

from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from support.models import EOS, FAMILIES, tiny_target
from support.plain import plain_output
from support.registry import make_test_registry

REG = make_test_registry()
SCORERS = REG.names("scorer")
CACHES = REG.names("kv_cache")



# a prompt with repeats, so n-gram lookup finds matches
prompts = st.lists(st.integers(0, 95), min_size=1, max_size=12).flatmap(
    lambda base: st.lists(st.sampled_from(base), min_size=1, max_size=40)
)


@settings(max_examples=200)
@given(
    family=st.sampled_from(FAMILIES),
    seed=st.integers(0, 3),
    prompt=prompts,
    max_new=st.integers(1, 48),
    budget=st.integers(1, 256),
    drafter=st.sampled_from(["ngram", "oracle"]),
    scorer=st.sampled_from(SCORERS),
    cache=st.sampled_from(CACHES),
    corrupt=st.sampled_from([0.0, 0.15, 0.6, 1.0]),
    on_device=st.sampled_from(["auto", "always"]),  # host walk and commit, or device walk and staged commit
    data=st.data(),
)
def test_speculative_equals_plain_greedy(family, seed, prompt, max_new, budget, drafter, scorer, cache, corrupt, on_device, data):
    expected = plain_output(family, seed, tuple(prompt), max_new)
    options = {"reference": list(expected), "corrupt_p": corrupt, "seed": seed} if drafter == "oracle" else {}
    pipe = (
        jetspec.builder(REG)
        .target(tiny_target(family, seed))
        .drafter(drafter, **options)
        .scorer(scorer)
        .kv_cache(cache)
        .generation(budget=budget, max_new_tokens=max_new, accept_on_device=on_device)
        .build()
    )
    result = pipe.generate(list(prompt))
    assert tuple(result.tokens) == expected
    assert len(expected) == max_new or expected[-1] == EOS
    assert result.stats.rounds <= len(expected)
    if drafter == "oracle" and corrupt == 0.0 and scorer != "chain":
        # a perfect oracle with room for its whole path commits several tokens per round
        assert result.stats.tau > 1 or len(expected) <= 2 or budget < 2


@settings(max_examples=30)
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 3), prompt=prompts, data=st.data())
def test_stop_tokens_end_both_decodings_at_the_same_place(family, seed, prompt, data):
    expected = plain_output(family, seed, tuple(prompt), 32)
    stop = data.draw(st.sampled_from(expected))
    cut = list(expected[: expected.index(stop) + 1])
    pipe = jetspec.builder(REG).target(tiny_target(family, seed)).drafter("ngram").generation(budget=32, max_new_tokens=32).build()
    spec = pipe.generate(list(prompt), stop_token_ids=[stop])
    plain = pipe.generate_plain(list(prompt), stop_token_ids=[stop])
    assert spec.tokens == plain.tokens == cut
