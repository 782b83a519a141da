"""The kit's batched check (`jetspec.testing.batched`) catches what only batches expose: a component
that passes one sequence at a time but shares what must be per sequence fails with ONE line naming
it, the check and the batched example."""

from jetspec import Implementation
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.drafters.ngram import NgramDrafter, NgramOptions
from jetspec.testing import check_drafter, check_kv_cache
from test_testing_kit import FAST, fails


class WholePoolReset(PagedKVCache):
    """A paged cache whose reset gives back the WHOLE page pool, not just its own pages: right for
    one sequence, but in a batch a finished sequence frees pages the others still use."""

    def reset(self) -> None:
        super().reset()
        self.allocator.reset()


class OneSequenceDrafter(NgramDrafter):
    """An n-gram drafter that keeps 'the' sequence in a class attribute: every instance shares it."""

    current = None

    def reset(self, state) -> None:
        type(self).current = state
        super().reset(state)

    def propose(self, state, budget):
        if state is not type(self).current:
            raise RuntimeError("proposing for a sequence I was not reset for")
        return super().propose(state, budget)


def test_a_cache_that_frees_other_sequences_pages_fails_only_in_batches():
    impl = Implementation("pool-reset", lambda o, info, capacity: WholePoolReset(info, capacity, PagedCacheOptions(page_size=4)),
                          PagedCacheOptions)
    check_kv_cache(impl, **FAST, batched=0)  # one sequence at a time it conforms
    fails(check_kv_cache, impl, match=r"^kv_cache 'pool-reset': batched lossless: prompt \d+ .* differs from its plain greedy "
                                      r"output at position \d+ .*batched example \d+", **FAST, batched=12)


def test_a_drafter_that_holds_one_sequence_for_all_instances_fails_in_batches():
    impl = Implementation("one-seq", lambda o, target=None: OneSequenceDrafter(o), NgramOptions)
    check_drafter(impl, **FAST, at_scale=0, batched=0)
    fails(check_drafter, impl, match=r"^drafter 'one-seq': propose: raised RuntimeError: proposing for a sequence I was not "
                                     r"reset for .*; batched example \d+ .*batch_size [2-4]", **FAST, at_scale=0, batched=12)


def test_a_batch_of_one_under_a_cap_of_one_row_is_an_example_the_kit_can_build():
    """The kit draws a row cap from batch_size up; its pipeline's default batch size must not make a
    cap of 1 for a batch of 1 an invalid config (a fresh-seed run failed on it, 1 in ~25)."""
    from jetspec.testing.batched import assemble_batched
    from jetspec.testing.models import tiny_decoder
    from jetspec.testing.lossless import plain_greedy

    pipe = assemble_batched(tiny_decoder(0), None, max_verify_rows=1)
    [result] = pipe.generate_many([[3, 4, 5]], batch_size=1, max_new_tokens=3, budget=1)
    assert tuple(result.tokens) == plain_greedy("decoder", 0, (3, 4, 5))[:3]
