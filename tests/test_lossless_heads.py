"""Losslessness with the draft heads: speculative output == plain greedy output, token for token,
for any tiny model, prompt, head (random weights: its drafts are mostly wrong, sometimes right),
tree scorer and budget."""

from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from support.models import FAMILIES, tiny_target
from support.plain import plain_output
from support.registry import make_test_registry

REG = make_test_registry()

HEADS = {
    "jetspec": {"checkpoint": "random", "block_size": 6, "top_k": 4},
    "jetspec+rescore": {"checkpoint": "random", "block_size": 6, "top_k": 4, "rescore": True, "rescore_top_k": 2},
    "jetspec+rescore2": {"checkpoint": "random", "block_size": 6, "top_k": 4, "rescore": True, "rescore_top_k": 2,
                         "rescore_passes": 2},
    "jetspec+lookup": {"checkpoint": "random", "block_size": 6, "top_k": 4, "lookup": True},
    "jetspec+head-alone": {"checkpoint": "random", "block_size": 6, "top_k": 4, "lookup": False},
    "dflash": {"checkpoint": "random", "block_size": 6, "top_k": 4},
    "eagle": {"checkpoint": "random", "depth": 4, "top_k": 3, "frontier": 3},
}



prompts = st.lists(st.integers(0, 95), min_size=1, max_size=12).flatmap(
    lambda base: st.lists(st.sampled_from(base), min_size=1, max_size=30)
)


@settings(max_examples=60)
@given(
    family=st.sampled_from(FAMILIES),
    seed=st.integers(0, 2),
    prompt=prompts,
    max_new=st.integers(1, 32),
    budget=st.integers(1, 48),
    head=st.sampled_from(sorted(HEADS)),
    head_seed=st.integers(0, 3),
    scorer=st.sampled_from(REG.names("scorer")),
)
def test_speculative_with_a_draft_head_equals_plain_greedy(family, seed, prompt, max_new, budget, head, head_seed, scorer):
    expected = plain_output(family, seed, tuple(prompt), max_new)
    pipe = (
        jetspec.builder(REG)
        .target(tiny_target(family, seed))
        .drafter(head.split("+")[0], seed=head_seed, **HEADS[head])
        .scorer(scorer)
        .generation(budget=budget, max_new_tokens=max_new)
        .build()
    )
    result = pipe.generate(list(prompt))
    assert tuple(result.tokens) == expected
    assert result.stats.rounds <= len(expected)
