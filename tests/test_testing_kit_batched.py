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
