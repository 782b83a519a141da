"""`replay` (τ without verifying: the drafter and scorer walked against plain decoding's output)
reports the rounds, tokens and acceptance by depth that `Pipeline.generate` reports, for any tiny
model, prompt, drafter (n-gram and randomly initialised heads of every kind), scorer and budget."""

from hypothesis import given, settings
from hypothesis import strategies as st
from support.models import FAMILIES, tiny_target
from support.plain import plain_output
from support.registry import make_test_registry

import jetspec
from jetspec.bench.replay import replay

REG = make_test_registry()

DRAFTERS = {
    "ngram": ("ngram", {"n_max": 3}),
    "jetspec": ("jetspec", {"checkpoint": "random", "block_size": 6, "top_k": 4}),
    "jetspec+rescore": ("jetspec", {"checkpoint": "random", "block_size": 6, "top_k": 4, "rescore": True, "rescore_top_k": 2}),
    "dflash": ("dflash", {"checkpoint": "random", "block_size": 6, "top_k": 4}),
    "eagle": ("eagle", {"checkpoint": "random", "depth": 4, "top_k": 3, "frontier": 3}),
}



prompts = st.lists(st.integers(0, 95), min_size=1, max_size=8).flatmap(
    lambda base: st.lists(st.sampled_from(base), min_size=2, max_size=30)
)


@settings(max_examples=60, deadline=None)
@given(
    family=st.sampled_from(FAMILIES),
    seed=st.integers(0, 2),
    prompt=prompts,
    max_new=st.integers(1, 32),
    budget=st.integers(1, 48),
    drafter=st.sampled_from(sorted(DRAFTERS)),
    drafter_seed=st.integers(0, 3),
    scorer=st.sampled_from(REG.names("scorer")),
)
def test_replay_reports_what_generate_reports(family, seed, prompt, max_new, budget, drafter, drafter_seed, scorer):
    name, options = DRAFTERS[drafter]
    if name != "ngram":
        options = {**options, "seed": drafter_seed}
    pipe = (
        jetspec.builder(REG)
        .target(tiny_target(family, seed))
        .drafter(name, **options)
        .scorer(scorer)
        .generation(budget=budget, max_new_tokens=max_new)
        .build()
    )
    ref = plain_output(family, seed, tuple(prompt), max_new)
    live = pipe.generate(list(prompt)).stats
    replayed = replay(pipe, list(prompt), list(ref), budget)
    assert (replayed.rounds, replayed.new_tokens, replayed.accepted_by_depth) == (
        live.rounds, live.new_tokens, live.accepted_by_depth
    )
    assert replayed.tree_nodes == live.tree_nodes


def test_replay_matches_where_drafts_are_accepted():
    """Not only τ = 1: over repetitive prompts the n-gram drafter gets drafts accepted, and the
    replay still reports what decoding reports."""
    taus = []
    for seed in range(3):
        target = tiny_target(FAMILIES[seed % len(FAMILIES)], seed)
        pipe = jetspec.builder(REG).target(target).drafter("ngram", n_max=3).generation(budget=16, max_new_tokens=32).build()
        for prompt in ([5, 6, 7, 8] * 6, [1, 2] * 10, [9, 3, 9, 4, 9, 3, 9, 4] * 3):
            ref = list(plain_output(FAMILIES[seed % len(FAMILIES)], seed, tuple(prompt), 32))
            live, replayed = pipe.generate(prompt).stats, replay(pipe, prompt, ref, 16)
            assert (replayed.rounds, replayed.accepted_by_depth) == (live.rounds, live.accepted_by_depth)
            taus.append(replayed.tau)
    assert max(taus) > 1.5, taus


def test_a_budget_sweep_sharing_proposals_replays_each_budget_as_alone():
    """`SharedProposals`: the budgets of one drafter reuse each other's proposals at the same
    committed length (rescoring opts out: its candidate tree is budget-sized) and report the
    rounds and acceptance of replaying each budget on its own."""
    from jetspec.bench.replay import SharedProposals

    prompt, budgets = [5, 6, 7, 8, 5, 6, 9, 8, 5, 6, 7, 3] * 2, (4, 16, 48)
    for name in sorted(DRAFTERS):
        drafter, options = DRAFTERS[name]
        target = tiny_target("llama", 1)
        ref = list(plain_output("llama", 1, tuple(prompt), 24))
        build = lambda b: jetspec.builder(REG).target(target).drafter(drafter, **options).generation(budget=b, max_new_tokens=24).build()  # noqa: E731
        alone = [replay(build(b), prompt, ref, b) for b in budgets]
        memo: dict = {}
        shared = []
        for b in budgets:
            pipe = build(b)
            pipe.drafter = SharedProposals(pipe.drafter, memo)
            shared.append(replay(pipe, prompt, ref, b))
        for a, s in zip(alone, shared):
            assert (a.rounds, a.new_tokens, a.accepted_by_depth) == (s.rounds, s.new_tokens, s.accepted_by_depth), name
        assert memo or name == "jetspec+rescore", name  # shared where the drafter allows it
