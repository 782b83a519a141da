"""Lossless per sequence (issue #20, part 3): every prompt's output at batch size B equals its plain
batch-1 output, token for token, for any tiny decoder, prompts of any lengths in any arrival order,
batch size, drafter (n-gram lookup, random trees, a near-perfect oracle), KV cache, budget, row cap
and length, accepting on the host or on the device, one step at a time or the slots' two halves in
alternating steps (`overlap`) (fp32, CPU, our `decoder` target with the
reference attention, greedy verifier)."""

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.caches.dense import DenseKVCache
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.config import GenerationConfig, PipelineConfig
from jetspec.core.pipeline import Pipeline
from jetspec.drafters.ngram import NgramDrafter, NgramOptions
from jetspec.scorers.best_first import BestFirstScorer
from jetspec.testing.models import EOS, tiny_decoder_target
from jetspec.testing.oracle import OracleDrafter, OracleOptions
from jetspec.verifiers.greedy import GreedyVerifier

MAX_NEW = 24
TARGETS = (("llama", 0), ("qwen3", 1))
CACHES = {
    "dense": lambda info, capacity: DenseKVCache(info, capacity),
    "paged-gather": lambda info, capacity: PagedKVCache(info, capacity, PagedCacheOptions(page_size=4)),
    "paged-remap": lambda info, capacity: PagedKVCache(info, capacity, PagedCacheOptions(page_size=4, commit="remap")),
}
# a prompt with repeats, so n-gram lookup finds matches
prompt = st.lists(st.integers(0, 95), min_size=1, max_size=8).flatmap(lambda base: st.lists(st.sampled_from(base), min_size=1, max_size=30))


@functools.lru_cache(maxsize=512)
def plain(target: tuple[str, int], prompt: tuple[int, ...]) -> tuple[int, ...]:
    """Plain greedy decoding, one sequence at a time: the expected output."""
    return tuple(pipeline(target, "none", "dense", {}).generate_plain(list(prompt), max_new_tokens=MAX_NEW).tokens)


class KnowsTheAnswer(OracleDrafter):
    """The kit's oracle drafter, told each prompt's true continuation at `reset` (corrupted now and
    then): long accepted paths, partial ones and misses, in one batch."""

    def __init__(self, target: tuple[str, int], corrupt_p: float):
        super().__init__(OracleOptions(corrupt_p=corrupt_p, extra_branches=2, depth=8))
        self.target = target

    def reset(self, state) -> None:
        self.o = self.o.model_copy(update={"reference": list(plain(self.target, tuple(state.tokens)))})
        super().reset(state)


def new_drafter(kind: str, target: tuple[str, int]):
    if kind == "ngram":
        return NgramDrafter(NgramOptions())
    if kind == "random-trees":  # the kit's oracle knowing nothing: random trees of random shapes
        return OracleDrafter(OracleOptions(reference=[], extra_branches=4, depth=6))
    return KnowsTheAnswer(target, corrupt_p=0.2)


def pipeline(target: tuple[str, int], drafter: str, cache: str, generation: dict) -> Pipeline:
    model = tiny_decoder_target(*target)
    make = None if drafter == "none" else (lambda: new_drafter(drafter, target))
    return Pipeline(
        target=model, drafter=make() if make else None, scorer=BestFirstScorer(), verifier=GreedyVerifier(),
        new_cache=lambda capacity: CACHES[cache](model.info, capacity),
        config=PipelineConfig(generation=GenerationConfig(max_new_tokens=MAX_NEW, **generation)),
        new_drafter=make, new_verifier=GreedyVerifier,
    )


@settings(max_examples=40)
@given(
    target=st.sampled_from(TARGETS),
    prompts=st.lists(prompt, min_size=1, max_size=7),  # their order is the arrival order
    batch_size=st.integers(1, 6),
    drafter=st.sampled_from(["ngram", "random-trees", "oracle"]),
    cache=st.sampled_from(sorted(CACHES)),
    budget=st.integers(1, 24),
    max_new=st.integers(1, MAX_NEW),
    on_device=st.sampled_from(["auto", "always"]),  # host acceptance, or device acceptance with one read-back a step
    overlap=st.booleans(),  # the slots' two halves in alternating steps, one in flight while the other is made
    data=st.data(),
)
def test_each_sequence_of_a_batch_decodes_as_it_would_alone(target, prompts, batch_size, drafter, cache, budget, max_new,
                                                            on_device, overlap, data):
    cap = data.draw(st.one_of(st.none(), st.integers(batch_size, 4 * batch_size)), label="max_verify_rows")
    pipe = pipeline(target, drafter, cache, {"budget": budget, "batch_size": batch_size, "max_verify_rows": cap,
                                             "accept_on_device": on_device, "overlap": overlap})
    finished = []
    results = pipe.generate_many(prompts, max_new_tokens=max_new, on_result=lambda i, r: finished.append(i))
    for p, result in zip(prompts, results):
        expected = plain(target, tuple(p))[:max_new]  # greedy is prefix-closed: the first max_new tokens
        assert tuple(result.tokens) == expected
        assert len(expected) == max_new or expected[-1] == EOS
        assert result.stats.rounds <= len(expected)
    assert sorted(finished) == list(range(len(prompts)))  # each prompt reported once


def test_plain_batched_decoding_equals_plain_decoding():
    prompts = [[5, 6, 7, 5, 6, 7], [9], [1, 2, 3, 4, 1, 2, 3, 4, 1], [40, 41] * 9]
    pipe = pipeline(("llama", 0), "ngram", "paged-gather", {"budget": 8})
    results = pipe.generate_many(prompts, batch_size=3, speculative=False)
    assert [tuple(r.tokens) for r in results] == [plain(("llama", 0), tuple(p)) for p in prompts]
    assert all(r.stats.tau == 1.0 for r in results)  # root-only trees: one token a step


@pytest.mark.parametrize("batch_size", [2, 5])
def test_a_perfect_oracle_commits_several_tokens_a_step_in_a_batch(batch_size):
    prompts = [[i, i + 1, i] for i in range(10, 16)]
    pipe = pipeline(("qwen3", 1), "oracle", "dense", {"budget": 16, "batch_size": batch_size})
    pipe.new_drafter = lambda: KnowsTheAnswer(("qwen3", 1), corrupt_p=0.0)
    results = pipe.generate_many(prompts)
    assert [tuple(r.tokens) for r in results] == [plain(("qwen3", 1), tuple(p)) for p in prompts]
    assert all(r.stats.tau > 2 or len(r.tokens) <= 2 for r in results)


@pytest.mark.parametrize("batch_size, cap", [(2, None), (3, 6)])
def test_an_exact_target_batches_seeded_sampling_draw_for_draw(batch_size, cap):
    """The kit's exact TinyDecoder (every row's bits its own sequence's) with the seeded sampling
    verifier at T = 1, whose uniforms follow each sequence's generated index: every prompt samples
    in a batch exactly what it samples alone, whatever tree the batch's row cap leaves it."""
    import jetspec
    from jetspec.testing.models import TinyDecoder
    from support.registry import make_test_registry

    pipe = (jetspec.builder(make_test_registry()).target(TinyDecoder(2, exact=True)).drafter("ngram").kv_cache("paged")
            .verifier("sampling", temperature=1.0, seed=7).generation(budget=8, max_new_tokens=16).build())
    prompts = [[5, 6, 7, 5, 6, 7], [9], [1, 2, 3, 4, 1, 2, 3, 4, 1], [40, 41] * 6, [3, 3, 3]]
    alone = [pipe.generate(p).tokens for p in prompts]
    pipe.config.generation = GenerationConfig(budget=8, max_new_tokens=16, batch_size=batch_size, max_verify_rows=cap)
    assert [r.tokens for r in pipe.generate_many(prompts)] == alone
