"""Several sequences over one page pool (`PagedKVCache.sequences`, what the batched engine uses):
whatever the interleaving of their begin / write / commit / reset, each sequence reads exactly what
a dense cache of its own would hold, no page belongs to two sequences, and a reset gives back only
the pages of its own sequence."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.caches.dense import DenseKVCache
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.interfaces import BatchedKVCache
from .test_paged import LAYERS, info, kv

CAPACITY = 40

# (sequence, op): ("reset",) or ("round", n, keep bits): begin(n), write every layer, commit the kept ones
ops = st.lists(st.tuples(st.integers(0, 2), st.one_of(
    st.just(("reset",)), st.tuples(st.just("round"), st.integers(1, 6), st.integers(0, 63)))), max_size=40)


@settings(max_examples=40)
@given(ops=ops, page_size=st.sampled_from([1, 3, 4]), commit=st.sampled_from(["gather", "remap"]))
def test_sequences_of_one_pool_behave_as_separate_caches(ops, page_size, commit):
    template = PagedKVCache(info(), CAPACITY, PagedCacheOptions(page_size=page_size, commit=commit))
    assert isinstance(template, BatchedKVCache)
    paged = template.sequences(3)
    dense = [DenseKVCache(info(), CAPACITY) for _ in paged]
    assert all(p.k is paged[0].k for p in paged) and paged[0].k is not template.k  # one new pool, shared
    for step, (s, op) in enumerate(ops):
        if op[0] == "reset":
            paged[s].reset(), dense[s].reset()
        else:
            _, n, bits = op
            n = min(n, CAPACITY - dense[s].committed)
            if n == 0:
                continue
            keep = [j for j in range(n) if bits >> j & 1]
            for cache in (paged[s], dense[s]):
                cache.begin(n)
                for layer in range(LAYERS):
                    cache.write(layer, *kv(n, 1000 * step + layer))
                cache.commit(keep)
        owned = [set(p._pages) for p in paged]
        assert sum(map(len, owned)) == len(set().union(*owned))  # no page is two sequences'
        assert paged[0].allocator.free == paged[0].num_pages - sum(map(len, owned))  # the rest is free
        for p, d in zip(paged, dense):
            for layer in range(LAYERS):
                for got, want in zip(p.read(layer), d.read(layer)):
                    assert torch.equal(got, want)


def test_a_reset_gives_back_only_its_own_pages():
    a, b = PagedKVCache(info(), 16, PagedCacheOptions(page_size=4)).sequences(2)
    assert a.num_pages == 8  # by default two sequences' worth: each can always grow to capacity
    for cache in (a, b):
        cache.begin(10)
        cache.commit(range(10))
    assert a.allocator.free == 8 - 3 - 3
    a.reset()
    assert a.allocator.free == 8 - 3 and len(b._pages) == 3 and b.committed == 10
