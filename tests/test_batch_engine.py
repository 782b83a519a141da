"""The batched engine's contract (`core/batch_engine.py`): packed rows say which sequence, position
and ancestors each row has; no slot idles while prompts wait (continuous batching); a step never
verifies more rows than `max_verify_rows`; a failure ends only the sequence it belongs to; what
cannot batch is refused in one line naming what can."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from jetspec.core.batch import BatchMeta
from jetspec.core.errors import ConfigError, IncompatibleError, InputError, JetSpecError
from jetspec.core.interfaces import AttentionMeta
from jetspec.core.tree import DraftTree
from jetspec.kernels.reference import TorchAttention
from jetspec.testing.batched import PromptOracle, assemble_batched
from jetspec.testing.lossless import plain_greedy
from jetspec.testing.models import TinyDecoder, tiny_decoder, tiny_target
from support.registry import make_test_registry

REG = make_test_registry()


class Spy:
    """A target that records the packed forwards it is asked for (and forwards them to `inner`)."""

    def __init__(self, inner, log):
        self.inner, self.log = inner, log
        self.info, self.tokenizer = inner.info, inner.tokenizer

    def forward(self, *args, **kw):
        return self.inner.forward(*args, **kw)

    def batch_problem(self):
        return self.inner.batch_problem()

    def forward_batch(self, tokens, meta, caches, hidden_layers=()):
        # a packed prefill starts every sequence at position 0 (the tests' prompts are longer than one token)
        kind = "prefill" if not meta.prefix_lens.any() else "step"
        self.log.append((kind, [meta.rows(s).stop - meta.rows(s).start for s in range(meta.num_sequences)]))
        return self.inner.forward_batch(tokens, meta, caches, hidden_layers)


def one_line(e):
    assert "\n" not in str(e), str(e)
    return str(e)


def test_packed_rows_name_their_sequence_position_and_tree():
    trees = [DraftTree.from_parents([7, 1, 2, 3], [-1, 0, 0, 1]), DraftTree.root_only(9), DraftTree.from_parents([4, 5], [-1, 0])]
    meta = BatchMeta.pack([AttentionMeta.for_tree(t, prefix) for t, prefix in zip(trees, (10, 3, 0))])
    assert meta.cu_rows == (0, 4, 5, 7) and meta.num_queries == 7 and meta.num_sequences == 3
    assert meta.seq_ids.tolist() == [0, 0, 0, 0, 1, 2, 2]
    assert trees[0].depths.tolist() == [0, 1, 2, 1]  # DFS pre-order: 7, 1, 3, 2
    assert meta.positions.tolist() == [10, 11, 12, 11, 3, 0, 1]  # its own prefix + depth, per sequence
    assert meta.subtree_sizes.tolist() == trees[0].subtree_sizes.tolist() + [1, 2, 1]
    assert meta.prefix_lens.tolist() == [10, 3, 0] and meta.rows(1) == slice(4, 5)


@settings(max_examples=12)
@given(batch_size=st.integers(1, 4), cap=st.one_of(st.none(), st.integers(4, 12)), n=st.integers(1, 7), seed=st.integers(0, 3))
def test_no_slot_idles_while_prompts_wait_and_no_step_exceeds_the_row_cap(batch_size, cap, n, seed):
    log = []
    target = Spy(tiny_decoder(seed), log)
    prompts = [[5 + i, 6, 5 + i, 6, 7 + i] for i in range(n)]
    answer = lambda p: plain_greedy("decoder", seed, p)  # noqa: E731
    cap = None if cap is None else max(cap, batch_size)
    in_call = seed % 2 == 1  # the cap from the generation config, or from generate_many's argument
    pipe = assemble_batched(target, lambda: PromptOracle(answer, corrupt_p=0.3, seed=seed), batch_size=batch_size,
                            max_verify_rows=None if in_call else cap)
    results = pipe.generate_many(prompts, max_new_tokens=12, budget=16, on_result=lambda i, r: log.append(("done", i)),
                                 max_verify_rows=cap if in_call else None)
    waiting = n  # prompts not finished
    for event, what in log:
        if event == "done":
            waiting -= 1
            continue
        if event == "prefill":  # the newly admitted prompts' prefills, packed
            assert 1 <= len(what) <= batch_size and set(what) == {4}  # each prompt but its last token
            continue
        assert len(what) == min(batch_size, waiting)  # every free slot took the next prompt
        if cap is not None:
            assert sum(what) <= cap and max(what) <= cap // len(what)  # root + min(budget, cap // S - 1) drafts
    assert waiting == 0 and [tuple(r.tokens) for r in results] == [answer(tuple(p))[:12] for p in prompts]


def test_a_failing_sequence_ends_alone_and_the_others_finish():
    class Fails(PromptOracle):
        def propose(self, state, budget):
            if state.tokens[0] == 66 and len(state.generated) >= 2:
                raise ValueError("no idea")
            return super().propose(state, budget)

    seed = 1
    answer = lambda p: plain_greedy("decoder", seed, p)  # noqa: E731
    pipe = assemble_batched(tiny_decoder(seed), lambda: Fails(answer, corrupt_p=0.5), batch_size=3)
    prompts = [[1, 2, 1, 2], [66, 5, 66], [9, 8, 7], "words", [3, 4] * 3000]
    done = {d.index: d for d in pipe.batched().run(prompts, max_new_tokens=10)}
    assert sorted(done) == [0, 1, 2, 3, 4]
    for i in (0, 2):
        assert done[i].error is None and tuple(done[i].result.tokens) == answer(tuple(prompts[i]))[:10]
    failed = done[1].error
    assert re.match(r"drafter \w+ raised ValueError: no idea in propose$", one_line(failed))
    assert failed.partial.tokens == list(answer((66, 5, 66))[: len(failed.partial.tokens)])  # what it had is kept
    assert "no tokenizer" in one_line(done[3].error) and "the target allows 2048" in one_line(done[4].error)
    with pytest.raises(JetSpecError, match="no idea"):  # generate_many raises the first failure
        pipe.generate_many(prompts[:2], max_new_tokens=10)


def test_what_cannot_batch_is_refused_in_one_line():
    hf = jetspec.builder(REG).target(tiny_target("llama", 0)).drafter("ngram").build()
    with pytest.raises(IncompatibleError, match=r"has no batched forward \(forward_batch\); batch_size > 1 runs with target 'decoder'") as e:
        hf.generate_many([[1, 2]], batch_size=2)
    one_line(e.value)
    assert [r.tokens for r in hf.generate_many([[1, 2]], batch_size=1)] == [hf.generate([1, 2]).tokens]  # batch 1: no batching needed

    class OneSequenceAttention(TorchAttention):  # an attention backend without the batched form
        attend_batch = None

    one = jetspec.builder(REG).target(TinyDecoder(0, attention=OneSequenceAttention())).drafter("ngram").build()
    with pytest.raises(IncompatibleError, match=r"OneSequenceAttention has no batched form \(attend_batch\); batched decoding "
                                                r"\(batch_size > 1\) runs with attention 'torch' or 'triton'") as e:
        one.generate_many([[1, 2]], batch_size=2)
    one_line(e.value)

    with pytest.raises(ConfigError, match=r"max_verify_rows \(2\) must be at least batch_size \(4\): every sequence verifies at least its root"):
        jetspec.builder(REG).target(tiny_decoder(0)).drafter("ngram").generation(batch_size=4, max_verify_rows=2).build()
    pipe = jetspec.builder(REG).target(tiny_decoder(0)).drafter("ngram").generation(max_verify_rows=2).build()
    with pytest.raises(InputError, match=r"max_verify_rows \(2\) must be at least batch_size \(3\)"):
        pipe.generate_many([[1]], batch_size=3)
    with pytest.raises(InputError, match=r"max_verify_rows \(3\) must be at least batch_size \(4\)"):
        pipe.generate_many([[1]], batch_size=4, max_verify_rows=3)
    with pytest.raises(InputError, match=r"batch_size must be at least 1, got 0"):
        pipe.generate_many([[1]], batch_size=0)


def test_the_builder_gives_each_slot_its_own_drafter_and_verifier():
    pipe = jetspec.builder(REG).target(tiny_decoder(2)).drafter("ngram").verifier("sampling", temperature=0.0).build()
    engine = pipe.batched(3)
    drafters = {id(p.drafter) for p in engine.parts}
    verifiers = {id(p.verifier) for p in engine.parts}
    assert len(drafters) == len(verifiers) == 3 and id(pipe.drafter) not in drafters
    prompts = [[1, 2, 1, 2, 1], [7, 7, 7], [4, 5, 6, 4, 5]]
    assert [r.tokens for r in pipe.generate_many(prompts, batch_size=3)] == [pipe.generate(p).tokens for p in prompts]


@pytest.mark.parametrize("batch_size", [1, 8])
def test_on_a_gpu_a_batched_config_gets_the_exact_attention_that_batches(monkeypatch, batch_size):
    """triton over one paged pool at any batch size: the decoder's exact mode (its default on CUDA)
    batches bit-exactly."""
    import importlib.util

    from jetspec.core.config import PipelineConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    config = PipelineConfig.parse({"generation": {"batch_size": batch_size}})
    assert (config.attention.name, config.kv_cache.name) == ("triton", "paged")
    named = PipelineConfig.parse({"attention": "torch", "generation": {"batch_size": batch_size}})
    assert named.attention.name == "torch"  # a config's own choice stands


def test_a_full_shared_page_pool_ends_only_the_sequence_that_needs_more():
    from jetspec.caches.paged import PagedCacheOptions, PagedKVCache

    seed = 0
    answer = lambda p: plain_greedy("decoder", seed, p)  # noqa: E731
    target = tiny_decoder(seed)
    pipe = assemble_batched(target, lambda: PromptOracle(answer), batch_size=2,  # 8 pages of 4 rows for both sequences
                            new_cache=lambda c: PagedKVCache(target.info, c, PagedCacheOptions(page_size=4, max_pages=8)))
    prompts = [[1, 2, 3], [5] * 40, [7, 8]]
    done = {d.index: d for d in pipe.batched().run(prompts, max_new_tokens=6, budget=4)}
    assert "KV page pool full" in one_line(done[1].error)
    for i in (0, 2):
        assert done[i].error is None and tuple(done[i].result.tokens) == answer(tuple(prompts[i]))[:6]
    assert pipe.batched() is pipe.batched() and pipe.batched(3) is not pipe.batched(2)  # one engine per setting, kept


def test_an_engines_runs_share_its_caches_until_one_needs_more_room():
    """The slots' caches outlive a run (reset for the next), so the packed forward's CUDA graphs,
    captured over their storage, stay valid: a warm-up and the runs after it share one storage
    (capacity rounded up to a multiple of 1024). A run that needs more gets new caches."""
    from jetspec.caches.paged import PagedKVCache

    seed = 0
    answer = lambda p: plain_greedy("decoder", seed, p)  # noqa: E731
    target, made = tiny_decoder(seed), []
    pipe = assemble_batched(target, lambda: PromptOracle(answer), batch_size=2,
                            new_cache=lambda c: made.append(c) or PagedKVCache(target.info, c))
    engine = pipe.batched()
    short, long = [[1, 2, 3], [5, 6], [7, 8, 9, 10]], [[3] * 1100, [4, 5]]
    made_by = []  # the capacities of the caches made by the end of each run
    for prompts in (short, short, long, short):
        done = sorted(engine.run(prompts, max_new_tokens=5, budget=3), key=lambda d: d.index)
        assert [tuple(d.result.tokens) for d in done] == [answer(tuple(p))[:5] for p in prompts]
        made_by.append(list(made))
    assert made_by == [[1024], [1024], [1024, 2048], [1024, 2048]]  # the first run's storage served the second; the long run's, the last


def test_one_prompt_given_where_a_list_of_prompts_belongs_is_a_one_line_error():
    pipe = jetspec.builder(REG).target(tiny_decoder(0)).drafter("ngram").build()
    for wrong in ("a prompt", [1, 2, 3]):
        with pytest.raises(InputError, match=r"^generate_many takes a list of prompts \(texts or token-id lists\), not one "
                                             r"prompt; use generate for one$"):
            pipe.generate_many(wrong, batch_size=2)
    assert pipe.generate_many([], batch_size=2) == []


def test_device_acceptance_reads_back_once_a_step_for_the_whole_batch():
    from jetspec.core.config import GenerationConfig

    log, seed = [], 3
    target = Spy(tiny_decoder(seed), log)
    answer = lambda p: plain_greedy("decoder", seed, p)  # noqa: E731
    pipe = assemble_batched(target, lambda: PromptOracle(answer, corrupt_p=0.3), batch_size=3)
    pipe.config.generation = GenerationConfig(budget=8, max_new_tokens=12, batch_size=3, accept_on_device="always")
    prompts = [[1, 2, 1], [4, 4, 4, 4], [9, 7], [6, 5, 6, 5]]
    engine = pipe.batched()
    results = pipe.generate_many(prompts)
    assert [tuple(r.tokens) for r in results] == [answer(tuple(p))[:12] for p in prompts]
    steps = [what for kind, what in log if kind == "step"]
    assert len(steps) > 1 and sum(r.copies for r in engine._readbacks) == len(steps)  # one read-back per step, not one per sequence
    assert [len(what) for kind, what in log if kind == "prefill"][0] == 3  # the first three prompts' prefills: one forward


@pytest.mark.parametrize("overlap", [False, True])
def test_a_steps_read_back_is_queued_before_its_drafters_next_rounds(monkeypatch, overlap):
    """The host's one wait a step is for the acceptance alone: the copy of the step's results to the
    host is queued before the drafters' next rounds (the pooled head job), which the device runs while
    the host reads the results; a drafter's host copy of its drafts carries its own event."""
    import sys

    from jetspec.core.on_device import Readback
    from jetspec.drafters.head.pool import ContextPool
    from jetspec.testing.models import tiny_decoder_target

    order: list[str] = []
    start, job = Readback.start, ContextPool.draft_ahead
    monkeypatch.setattr(Readback, "start", lambda self, x: order.append(sys._getframe(1).f_code.co_name) or start(self, x))
    monkeypatch.setattr(ContextPool, "draft_ahead", lambda self, *a: order.append("job") or job(self, *a))
    pipe = (jetspec.builder(REG).target(tiny_decoder_target("llama", 0))
            .drafter("jetspec", checkpoint="random", block_size=6, top_k=4, lookup=True).kv_cache("paged")
            .generation(budget=8, max_new_tokens=16, accept_on_device="always", batch_size=4, overlap=overlap).build())
    prompts = [[3, 4, 5, 3, 4, 5, 3], [9, 8, 7, 6], [1, 2, 1, 2, 1, 2], [7, 7, 7], [5, 6, 5, 6, 5, 6, 5, 6]]
    results = pipe.generate_many(prompts)
    assert [r.tokens for r in results] == [pipe.generate_plain(p).tokens for p in prompts]
    jobs = [i for i, what in enumerate(order) if what == "job"]
    assert jobs and all(order[i - 1] == "start_on_device" for i in jobs)  # each job right behind its step's read-back


@pytest.mark.parametrize("on_device", ["auto", "always"])
def test_a_seeded_sample_in_a_batch_is_the_prompts_seeded_sample_alone(on_device):
    """Seeded sampling (T = 1) stays reproducible under batching: each sequence draws u_t for its own
    generated index t from the seed, on its own rows of the logits, so a prompt's sample at batch 3
    is its sample alone (a row mixed up with another sequence's would change it)."""
    pipe = (jetspec.builder(REG).target(tiny_decoder(1)).drafter("ngram").verifier("sampling", temperature=1.0, seed=7)
            .generation(budget=6, max_new_tokens=16, accept_on_device=on_device).build())
    prompts = [[1, 2, 1, 2], [5, 6, 7], [8, 8, 8], [3, 4, 3, 4, 3]]
    alone = [pipe.generate(p).tokens for p in prompts]
    assert len({tuple(t) for t in alone}) > 1
    assert [r.tokens for r in pipe.generate_many(prompts, batch_size=3)] == alone


def test_with_overlap_one_half_is_verified_while_the_other_half_is_committed():
    """`overlap`: the slots in two halves (even, odd) whose steps alternate — a half's step is queued
    (its forward and its result's copy started) before the other half's step is read back and
    committed, so the device always has a step while the host works. Outputs stay plain decoding's."""
    from jetspec.core.config import GenerationConfig

    log, seed = [], 5
    target = Spy(tiny_decoder(seed), log)
    answer = lambda p: plain_greedy("decoder", seed, p)  # noqa: E731
    pipe = assemble_batched(target, lambda: PromptOracle(answer, corrupt_p=0.3), batch_size=4)
    pipe.config.generation = GenerationConfig(budget=6, max_new_tokens=10, batch_size=4, accept_on_device="always",
                                              overlap=True)
    engine = pipe.batched()
    for half, readback in enumerate(engine._readbacks):  # log each half's wait for its step's result
        wait = readback.wait
        readback.wait = lambda wait=wait, half=half: (log.append(("wait", half)), wait())[1]
    prompts = [[1, 2, 1], [4, 4, 4, 4], [9, 7], [6, 5, 6, 5], [3, 3], [8, 1, 8]]
    assert [tuple(r.tokens) for r in pipe.generate_many(prompts)] == [answer(tuple(p))[:10] for p in prompts]
    events = [e for e in log if e[0] != "prefill"]
    # while both halves have prompts: two steps queued, then each wait is followed by that half's next step
    assert [kind for kind, _ in events[:12]] == ["step", "step"] + ["wait", "step"] * 5
    assert [half for kind, half in events[:12] if kind == "wait"] == [0, 1, 0, 1, 0]  # the halves land in turn
    assert all(rows == [7, 7] for kind, rows in events[:12] if kind == "step")  # each step: one half's two sequences


def test_a_batch_of_one_is_generate_per_prompt_with_no_engine(monkeypatch):
    """generate_many at batch size 1 with no row cap runs `generate` for each prompt in order (what
    `jetspec run --batch-size 1` runs: its loop queues work ahead of each read-back), building no
    batch engine; a row cap still goes through the engine, which applies it."""
    pipe = jetspec.builder(REG).target(TinyDecoder(2, exact=True)).drafter("ngram").kv_cache("paged").generation(
        budget=6, max_new_tokens=8).build()
    prompts = [[5, 6, 7, 5, 6], [9, 9], [1, 2, 1, 2, 1]]
    alone = [pipe.generate(p).tokens for p in prompts]
    seen = []
    assert [r.tokens for r in pipe.generate_many(prompts, batch_size=1, on_result=lambda i, r: seen.append(i))] == alone
    assert seen == [0, 1, 2] and pipe._engine is None
    assert [r.tokens for r in pipe.generate_many(prompts, batch_size=1, max_verify_rows=3)] == alone
    assert pipe._engine is not None


def test_overlap_auto_splits_speculative_runs_of_at_least_overlap_from_slots_and_no_others(monkeypatch):
    """`overlap = "auto"` (the default): a speculative run of OVERLAP_FROM slots or more steps its two
    halves in turn (a step: one half's sequences), a smaller run or plain decoding steps every slot at
    once; every output what plain decoding gives."""
    import jetspec.core.batch_engine as batch_engine
    from jetspec.core.config import GenerationConfig

    assert GenerationConfig().overlap == "auto"
    monkeypatch.setattr(batch_engine, "OVERLAP_FROM", 4)
    seed, prompts = 5, [[1, 2, 1], [4, 4, 4, 4], [9, 7], [6, 5, 6, 5]]
    answer = lambda p: plain_greedy("decoder", seed, p)  # noqa: E731

    def widest_step(batch_size: int, speculative: bool) -> int:
        log = []
        pipe = assemble_batched(Spy(tiny_decoder(seed), log), lambda: PromptOracle(answer, corrupt_p=0.3), batch_size=batch_size)
        pipe.config.generation = GenerationConfig(budget=6, max_new_tokens=8, batch_size=batch_size, accept_on_device="always")
        outs = [tuple(r.tokens) for r in pipe.generate_many(prompts, speculative=speculative)]
        assert outs == [answer(tuple(p))[:8] for p in prompts]
        return max(len(rows) for kind, rows in log if kind == "step")

    assert widest_step(4, speculative=True) == 2  # two halves of two sequences
    assert widest_step(4, speculative=False) == 4  # plain decoding: not overlapped by default
    assert widest_step(3, speculative=True) == 3  # fewer slots than OVERLAP_FROM
