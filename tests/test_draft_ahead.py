"""A head drafter queues its next round on the device before the host reads the round's result
(`DraftsAhead`, the pipeline's device path): the context append of the accepted path and the next
one-forward draft, from the bonus token, run behind the acceptance. What that must keep: the output
(speculative == plain), the drafts (the queued draft is the one `propose` would have made), a clean
start for the next generation after a round cut short, and one-line errors for a bad verifier."""

from contextlib import ExitStack
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from jetspec.core.errors import PluginError
from jetspec.core.interfaces import DraftsAhead
from jetspec.drafters.head.drafter import HeadDrafter
from jetspec.drafters.head.pool import ContextPool
from support.bad_verifiers import NotAChild
from support.models import FAMILIES, tiny_target
from support.plain import plain_output
from support.registry import make_test_registry

REG = make_test_registry()
HEADS = {
    "jetspec": {"checkpoint": "random", "block_size": 6, "top_k": 4, "lookup": False},
    "jetspec+lookup": {"checkpoint": "random", "block_size": 6, "top_k": 4, "lookup": True},
    "jetspec+rescore": {"checkpoint": "random", "block_size": 6, "top_k": 4, "rescore": True, "rescore_top_k": 2},
    "dflash": {"checkpoint": "random", "block_size": 6, "top_k": 4},
}


def device_path_pipe(family: str, seed: int, head: str, budget: int, max_new: int, head_seed: int = 0,
                     verifier: str = "greedy", **options):  # fmt: skip
    """A head pipeline on the device path (`accept_on_device = "always"`: on a CPU the device is the host)."""
    b = jetspec.builder(REG).target(tiny_target(family, seed)).drafter(head.split("+")[0], seed=head_seed, **HEADS[head], **options)
    if verifier == "sampling":  # its device walk at the greedy limit: the same packed result, its own kernels
        b = b.verifier("sampling", temperature=0.0)
    return b.kv_cache("paged").generation(budget=budget, max_new_tokens=max_new, accept_on_device="always").build()


class Calls:
    """Counts the rounds drafted ahead (`draft_ahead` calls, and the sequences of a batch's
    `ContextPool` jobs: `together`) and the drafts `propose` makes itself (`_draft` from a host root)."""

    def __init__(self):
        self.ahead = self.own = self.together = 0

    def __enter__(self):
        ahead, draft, pooled = HeadDrafter.draft_ahead, HeadDrafter._draft, ContextPool.draft_ahead

        def counted_ahead(drafter, *args):
            self.ahead += 1
            return ahead(drafter, *args)

        def counted_pooled(pool, peers, *args):
            self.ahead += len(peers)
            self.together += len(peers)
            return pooled(pool, peers, *args)

        def counted_draft(drafter, root, *args):
            self.own += not isinstance(root, torch.Tensor)
            return draft(drafter, root, *args)

        self._patches = [patch.object(HeadDrafter, "draft_ahead", counted_ahead), patch.object(HeadDrafter, "_draft", counted_draft),
                         patch.object(ContextPool, "draft_ahead", counted_pooled)]
        for p in self._patches:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in self._patches:
            p.stop()


prompts = st.lists(st.integers(0, 95), min_size=1, max_size=12).flatmap(lambda base: st.lists(st.sampled_from(base), min_size=1, max_size=30))


@settings(max_examples=25, deadline=None)
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 2), prompt=prompts, max_new=st.integers(1, 32),
       budget=st.integers(1, 40), head=st.sampled_from(sorted(HEADS)), head_seed=st.integers(0, 3),
       verifier=st.sampled_from(["greedy", "sampling"]))  # fmt: skip
def test_drafting_ahead_keeps_speculative_equal_to_plain(family, seed, prompt, max_new, budget, head, head_seed, verifier):
    pipe = device_path_pipe(family, seed, head, budget, max_new, head_seed, verifier)
    assert isinstance(pipe.drafter, DraftsAhead)
    with Calls() as calls:
        result = pipe.generate(list(prompt))
    assert tuple(result.tokens) == plain_output(family, seed, tuple(prompt), max_new)
    # every round queues the next one; propose drafts itself only in the first round after prefill
    assert calls.ahead == result.stats.rounds and calls.own == 1


def test_the_queued_drafts_and_the_heads_context_are_those_of_the_host_path():
    """Round by round, the draft `propose` hands on and the head's context cache are those of the
    same generation on the host path, which drafts after the read-back (equal up to float
    rounding: the queued draft attends over the whole buffer with the tail masked)."""
    seen = {}
    propose = HeadDrafter.propose

    def recording(drafter, state, budget):
        drafter_logp = drafter._drafted[0].clone() if drafter._drafted is not None and drafter.kept_ahead else None  # [depths, k]
        context = [(k.clone(), v.clone()) for k, v in drafter.cache.context()]
        proposal = propose(drafter, state, budget)
        seen.setdefault(mode, []).append((len(state.tokens), context, drafter_logp, proposal))
        return proposal

    prompt = [5, 6, 7, 5, 6, 7, 5, 6, 9, 11]
    for mode in ("never", "always"):
        pipe = (jetspec.builder(REG).target(tiny_target(FAMILIES[0], 0)).drafter("jetspec", **HEADS["jetspec"]).kv_cache("paged")
                .generation(budget=16, max_new_tokens=40, accept_on_device=mode).build())  # fmt: skip
        with patch.object(HeadDrafter, "propose", recording):
            pipe.generate(prompt)
    host, ahead = seen["never"], seen["always"]
    assert len(host) == len(ahead) > 3
    assert sum(logp is not None for *_, logp, _ in ahead) == len(ahead) - 1  # all but the first round's draft was queued
    for (n, context, _, proposal), (n2, context2, logp2, proposal2) in zip(host, ahead):
        assert n == n2
        assert all(torch.allclose(k, k2, atol=1e-5) and torch.allclose(v, v2, atol=1e-5) for (k, v), (k2, v2) in zip(context, context2))
        for depth in range(proposal.depth):
            kids, kids2 = proposal.children((0,) * depth), proposal2.children((0,) * depth)
            assert [t for t, _ in kids] == [t for t, _ in kids2]
            assert [lp for _, lp in kids] == pytest.approx([lp for _, lp in kids2], abs=1e-5)


def test_draft_ahead_false_drafts_after_the_read_back_with_the_same_output():
    family = FAMILIES[1]
    prompt = [4, 5, 6, 4, 5, 6, 4, 5, 7]
    on = device_path_pipe(family, 2, "jetspec", budget=12, max_new=30)
    off = device_path_pipe(family, 2, "jetspec", budget=12, max_new=30, draft_ahead=False)
    with Calls() as calls:
        result = off.generate(prompt)
    assert calls.own == result.stats.rounds  # every round drafted by propose itself
    assert off.drafter.appended_ahead is None and not off.drafter.kept_ahead
    assert result.tokens == on.generate(prompt).tokens == list(plain_output(family, 2, tuple(prompt), 30))


def test_a_generation_cut_short_leaves_the_next_one_nothing_stale():
    """A round cut by max_new_tokens (or a stop token) ends its generation with a draft queued for a
    round that never comes; the next generation, same pipeline, must start from its own prefill."""
    family = FAMILIES[0]
    pipe = device_path_pipe(family, 1, "jetspec+lookup", budget=24, max_new=5)
    for prompt, max_new in (([3, 4, 5, 3, 4, 5, 3], 5), ([9, 8, 7, 6], 3), ([3, 4, 5, 3, 4, 5, 3], 17), ([1, 2], 1)):
        with Calls() as calls:
            result = pipe.generate(prompt, max_new_tokens=max_new)
        assert tuple(result.tokens) == plain_output(family, 1, tuple(prompt), max_new)
        assert calls.own == 1


def test_a_verifier_whose_path_leaves_the_tree_fails_in_one_line_not_in_the_queued_draft():
    pipe = device_path_pipe(FAMILIES[0], 0, "jetspec", budget=8, max_new=16)
    pipe.verifier = NotAChild()
    with pytest.raises(PluginError, match=r"accepted path \[0, 1000000\]: node 1000000 is not a child of node 0") as e:
        pipe.generate([5, 6, 7, 5, 6, 7, 5, 6])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_batch_of_head_drafters_drafts_ahead_too(overlap):
    """The batched engine on the device path queues each sequence's next draft before the step's one
    read-back, as the one-sequence pipeline does: every prompt's output is plain decoding's, and each
    sequence's `propose` drafts itself only in its first round (with `overlap` too: a half's drafts
    are then ready before the other half's step is read back)."""
    from jetspec.testing.models import tiny_decoder_target

    prompts = [[3, 4, 5, 3, 4, 5, 3], [9, 8, 7, 6], [1, 2, 1, 2, 1, 2], [7, 7, 7], [5, 6, 5, 6, 5]]
    pipe = (jetspec.builder(REG).target(tiny_decoder_target("llama", 0)).drafter("jetspec", **HEADS["jetspec+lookup"])
            .kv_cache("paged").generation(budget=12, max_new_tokens=14, accept_on_device="always", batch_size=3,
                                          overlap=overlap).build())
    plain = [pipe.generate_plain(p).tokens for p in prompts]
    with Calls() as calls:
        results = pipe.generate_many(prompts)
    assert [r.tokens for r in results] == plain
    assert calls.own == len(prompts)  # one draft of its own per prompt: the first round's
    assert calls.ahead == sum(r.stats.rounds for r in results)
    assert calls.together > calls.ahead // 2  # most rounds drafted in one job with the step's other sequences


@pytest.mark.parametrize("build_on_device", [True, False])
def test_a_reused_pipeline_drafts_every_round_from_its_own_context_with_its_halves_overlapped(build_on_device):
    """Per sequence, `overlap` changes no call: a pipeline whose head drafters were pooled by a run of
    the whole batch, run again with its halves stepping in turn (then again as one), drafts every
    round from the sequence's own context, most of them pooled (a half's pooled job once overwrote the other half's drafts in flight:
    the same outputs from staler drafts). With the trees grown on the device the drafts are read there
    (`propose_on_device`), on the host otherwise (`propose`)."""
    from jetspec.testing.models import tiny_decoder_target

    prompts = [[3, 4, 5, 3, 4, 5, 3], [9, 8, 7, 6], [1, 2, 1, 2, 1, 2], [7, 7, 7], [5, 6, 5, 6, 5], [2, 3, 2, 3]]
    pipe = (jetspec.builder(REG).target(tiny_decoder_target("llama", 0)).drafter("jetspec", **HEADS["jetspec+lookup"])
            .kv_cache("paged").generation(budget=12, max_new_tokens=24, accept_on_device="always", batch_size=4,
                                          build_on_device=build_on_device).build())
    method = "propose_on_device" if build_on_device else "propose"
    real, stale = getattr(HeadDrafter, method), []

    def propose(drafter, state, budget):  # a draft queued ahead must be the one the drafter would make now
        drafted = drafter._drafted_dev if build_on_device else drafter._drafted  # (logp, ids) / [2, depths, k]
        if drafted is not None and drafter.kept_ahead:
            ids = drafted[1].float()  # [depths, k]
            _, tokens = drafter._draft(state.tokens[-1], drafter.cache.length, ids.shape[0], drafter.cache.context())
            stale.append(not torch.equal(tokens.float(), ids))
        return real(drafter, state, budget)

    runs = []
    with patch.object(HeadDrafter, method, propose):
        for overlap in (False, True, False):
            pipe.config.generation = pipe.config.generation.model_copy(update={"overlap": overlap})
            with Calls() as calls:
                runs.append(pipe.generate_many(prompts))
            assert calls.together > calls.ahead // 2  # still pooled: one pool, then one per half, then one again
    assert [r.tokens for r in runs[1]] == [r.tokens for r in runs[0]] == [r.tokens for r in runs[2]]
    assert [r.stats.rounds for r in runs[1]] == [r.stats.rounds for r in runs[0]] == [r.stats.rounds for r in runs[2]]
    assert len(stale) > len(prompts) and not any(stale)  # drafts queued ahead were read, and every one was current


def test_a_failing_draft_ahead_in_a_batch_fails_its_own_sequence_in_one_line():
    from jetspec.testing.models import tiny_decoder_target

    prompts = [[3, 4, 5, 3, 4, 5, 3], [9, 8, 7, 6], [1, 2, 1, 2, 1, 2]]
    pipe = (jetspec.builder(REG).target(tiny_decoder_target("llama", 0)).drafter("jetspec", **HEADS["jetspec"])
            .kv_cache("paged").generation(budget=8, max_new_tokens=10, accept_on_device="always", batch_size=3).build())
    plain = [pipe.generate_plain(p).tokens for p in prompts]
    engine = pipe.batched()
    broken = engine.parts[1].drafter  # the second slot's: the second prompt's
    real = HeadDrafter.draft_ahead

    def draft_ahead(drafter, *args):
        if drafter is broken:
            raise RuntimeError("device lost")
        return real(drafter, *args)

    declined = patch.object(HeadDrafter, "draft_ahead_together", lambda *a: False)  # each drafter on its own
    with patch.object(HeadDrafter, "draft_ahead", draft_ahead), declined:
        done = {f.index: f for f in engine.run(prompts)}
    assert isinstance(done[1].error, PluginError) and "\n" not in str(done[1].error)
    assert "raised RuntimeError: device lost in draft_ahead" in str(done[1].error)
    assert done[1].result.tokens == []  # its first round failed: nothing committed, nothing lost
    assert [done[i].result.tokens for i in (0, 2)] == [plain[0], plain[2]] and done[0].error is done[2].error is None


def test_a_failing_pooled_draft_fails_the_sequences_it_drafted_for_in_one_line():
    """Drafted together (one `ContextPool` job for the step), a failure belongs to every sequence of
    that job: each ends with the drafter's one-line error; what they committed before is kept."""
    from jetspec.testing.models import tiny_decoder_target

    prompts = [[3, 4, 5, 3, 4, 5, 3], [9, 8, 7, 6], [1, 2, 1, 2, 1, 2]]
    pipe = (jetspec.builder(REG).target(tiny_decoder_target("llama", 0)).drafter("jetspec", **HEADS["jetspec"])
            .kv_cache("paged").generation(budget=8, max_new_tokens=10, accept_on_device="always", batch_size=3).build())
    plain = [pipe.generate_plain(p).tokens for p in prompts]
    real, jobs = ContextPool.draft_ahead, []

    def draft_ahead(pool, peers, *args):
        jobs.append(len(peers))
        if len(jobs) == 2:
            raise RuntimeError("device lost")
        return real(pool, peers, *args)

    with patch.object(ContextPool, "draft_ahead", draft_ahead):
        done = [f for f in pipe.batched().run(prompts)]
    assert jobs[:2] == [3, 3]
    for f in done:
        assert isinstance(f.error, PluginError) and "\n" not in str(f.error)
        assert "raised RuntimeError: device lost in draft_ahead_together" in str(f.error)
        assert f.result.tokens == plain[f.index][: len(f.result.tokens)] and f.result.tokens  # its first round's tokens kept


class Observed:
    """Each `HeadDrafter.observe` call after the prompt's: (rows given or None, tokens it commits)."""

    def __init__(self):
        self.calls: list[tuple[int | None, int]] = []

    def __enter__(self):
        real = HeadDrafter.observe

        def observe(drafter, state, hidden):
            if drafter.cache.length:  # not the prompt's
                self.calls.append((None if hidden is None else hidden.shape[0], len(state.tokens) - 1 - drafter.cache.length))
            return real(drafter, state, hidden)

        self._patch = patch.object(HeadDrafter, "observe", observe)
        self._patch.start()
        return self

    def __exit__(self, *exc):
        self._patch.stop()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_drafter_keeping_its_rows_ahead_observes_no_rows_and_drafts_the_same_rounds(batch_size):
    """`KeepsRowsAhead`: after a drafted-ahead round that committed its whole path the head's
    `observe` gets no hidden rows — none are gathered for it — and the rows `draft_ahead` appended
    stand: the same rounds as when the rows are gathered and handed over, every draft but the
    first round's taken from ahead, every output plain decoding's. A round cut short by the length
    limit still gets its rows (one generation alone: the batched engine ends such a sequence unobserved)."""
    from jetspec.core import batch_engine, pipeline
    from jetspec.testing.models import tiny_decoder_target

    prompts = [[3, 4, 5, 3, 4, 5, 3], [9, 8, 7, 6], [1, 2, 1, 2, 1, 2], [7, 7, 7]]
    pipe = (jetspec.builder(REG).target(tiny_decoder_target("llama", 0)).drafter("jetspec", **HEADS["jetspec+lookup"])
            .kv_cache("paged").generation(budget=12, max_new_tokens=13, accept_on_device="always", batch_size=batch_size).build())
    plain = [pipe.generate_plain(p).tokens for p in prompts]
    run = {}
    for keeps in (False, True):
        with ExitStack() as stack:
            if not keeps:  # as for a drafter that keeps no rows: the engines gather and hand them over
                for module in (pipeline, batch_engine):
                    stack.enter_context(patch.object(module, "rows_kept_ahead", lambda drafter: False))
            seen, calls = stack.enter_context(Observed()), stack.enter_context(Calls())
            results = pipe.generate_many(prompts)
        assert [r.tokens for r in results] == plain
        assert calls.own == len(prompts)  # one draft of its own per prompt: the first round's
        run[keeps] = ([r.stats.rounds for r in results], seen.calls)
    assert run[True][0] == run[False][0]  # the same rounds: the same drafts
    assert all(rows is not None for rows, _ in run[False][1])
    whole = [(rows, need) for rows, need in run[True][1] if rows is None]
    cut = [(rows, need) for rows, need in run[True][1] if rows is not None]
    assert len(whole) == len(run[False][1]) - len(cut) and whole  # every whole round observed without rows
    assert all(rows > need for rows, need in cut) and bool(cut) == (batch_size == 1)  # cut rounds: their path's rows


def test_observing_no_rows_where_none_were_appended_ahead_is_an_error_in_one_line():
    pipe = device_path_pipe(FAMILIES[0], 0, "jetspec", budget=8, max_new=16)
    pipe.generate([5, 6, 7, 5, 6, 7, 5, 6])
    drafter = pipe.drafter
    state = jetspec.core.interfaces.DecodeState(tokens=[5, 6, 7, 5, 6], prompt_len=3)
    drafter.reset(state)
    drafter.observe(jetspec.core.interfaces.DecodeState(tokens=[5, 6, 7], prompt_len=3), torch.zeros(2, len(drafter.hidden_layers), drafter.config.hidden_size))
    with pytest.raises(jetspec.core.errors.InputError, match=r"out of step: 2 cached \+ no hidden states and no rows appended ahead") as e:
        drafter.observe(state, None)
    assert "\n" not in str(e.value)
