"""The paged KV cache is the dense cache with a different memory layout: for any sequence of
begin / write / commit, `read` returns exactly what the dense cache returns, in both commit modes.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.caches.dense import DenseKVCache
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.errors import CapacityError, InputError
from jetspec.core.interfaces import KVCache, TargetInfo

LAYERS, HKV, D = 2, 2, 4


def info(dtype=torch.float32) -> TargetInfo:
    return TargetInfo(
        name="tiny", architecture="llama", vocab_size=32, hidden_size=HKV * D, num_layers=LAYERS,
        num_kv_heads=HKV, head_dim=D, max_positions=4096, dtype=dtype, device=torch.device("cpu"),
    )


def kv(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, HKV, D, generator=g), torch.randn(n, HKV, D, generator=g)  # [n, Hkv, D]


# one round: (tokens to verify, which of them to keep)
rounds = st.lists(
    st.integers(1, 20).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)))),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(rounds=rounds, page_size=st.sampled_from([1, 3, 4, 16]), mode=st.sampled_from(["gather", "remap"]))
def test_paged_reads_equal_dense_reads(rounds, page_size, mode):
    capacity = sum(n for n, _ in rounds)
    dense = DenseKVCache(info(), capacity)
    paged = PagedKVCache(info(), capacity, PagedCacheOptions(page_size=page_size, commit=mode))
    assert isinstance(paged, KVCache)
    for step, (n, keep) in enumerate(rounds):
        for cache in (dense, paged):
            cache.begin(n)
            for layer in range(LAYERS):
                cache.write(layer, *kv(n, seed=100 * step + layer))
        for layer in range(LAYERS):
            for a, b in zip(dense.read(layer), paged.read(layer)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        for cache in (dense, paged):
            cache.commit(sorted(keep))
        assert (paged.committed, paged.pending) == (dense.committed, dense.pending)
        for layer in range(LAYERS):
            for a, b in zip(dense.read(layer), paged.read(layer)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        # pages in use are exactly those holding committed tokens (gather: the first ceil(T/P))
        live_pages = {row // page_size for row in paged.slot_mapping.tolist()}
        assert paged.pages_in_use == len(live_pages)
        if mode == "gather":
            assert paged.pages_in_use == -(-paged.committed // page_size)


@pytest.mark.parametrize("mode", ["gather", "remap"])
def test_a_begin_that_does_not_fit_raises_before_any_change(mode):
    cache = PagedKVCache(info(), 10, PagedCacheOptions(page_size=4, commit=mode))
    cache.begin(6)
    cache.write(0, *kv(6, 0))
    cache.commit(range(6))
    before = (cache.committed, cache.pending, cache.pages_in_use, cache.allocator.free)
    with pytest.raises(CapacityError, match="capacity of 10") as err:
        cache.begin(5)
    assert "\n" not in str(err.value)
    assert (cache.committed, cache.pending, cache.pages_in_use, cache.allocator.free) == before
    cache.begin(4)  # exactly full still fits


def test_a_small_page_pool_raises_capacity_error():
    cache = PagedKVCache(info(), 100, PagedCacheOptions(page_size=4, max_pages=2))
    with pytest.raises(CapacityError, match="page pool full"):
        cache.begin(9)
    cache.begin(8)


@pytest.mark.parametrize("mode", ["gather", "remap"])
def test_commit_frees_the_pages_of_discarded_tokens(mode):
    cache = PagedKVCache(info(), 64, PagedCacheOptions(page_size=4, commit=mode))
    cache.begin(32)  # 8 pages
    assert (cache.pages_in_use, cache.allocator.free) == (8, 8)
    cache.commit([0, 1, 2, 5])  # remap keeps rows 0,1,2 (page 0) and 5 (page 1)
    assert cache.pages_in_use == (1 if mode == "gather" else 2)
    assert cache.pages_in_use + cache.allocator.free == 16
    cache.reset()
    assert (cache.pages_in_use, cache.allocator.free) == (0, 16)


def test_remap_commit_moves_no_bytes_and_reuses_holes():
    cache = PagedKVCache(info(), 16, PagedCacheOptions(page_size=4, commit="remap"))
    cache.begin(8)
    cache.write(0, *kv(8, 0))
    k_before = cache.k.clone()
    cache.commit([1, 6])
    assert torch.equal(cache.k, k_before)  # kept entries stay where verify wrote them
    assert cache.slot_mapping.tolist() == [1, 6]
    cache.begin(6)  # fills the 6 holes of the two pages before asking for a new page
    assert cache.pages_in_use == 2
    assert sorted(cache.slot_mapping[2:].tolist()) == [0, 2, 3, 4, 5, 7]


def test_gather_mode_keeps_logical_order_in_pages():
    cache = PagedKVCache(info(), 16, PagedCacheOptions(page_size=4))
    cache.begin(10)
    cache.commit([0, 3, 9])
    pages = cache.block_table[: cache.pages_in_use].tolist()
    assert cache.slot_mapping.tolist() == [pages[0] * 4 + o for o in range(3)]


def test_commit_rejects_unsorted_or_out_of_range_indices():
    cache = PagedKVCache(info(), 16)
    cache.begin(4)
    with pytest.raises(InputError):
        cache.commit([2, 1])
    with pytest.raises(InputError):
        cache.commit([4])


def test_footprint_counts_pages_and_bytes():
    fp = PagedKVCache.footprint(info(torch.bfloat16), seq_len=30, budget=3, page_size=16)
    assert (fp.tokens, fp.pages) == (33, 3)
    assert fp.bytes == 2 * LAYERS * 3 * 16 * HKV * D * 2
    cache = PagedKVCache(info(), fp.tokens, PagedCacheOptions(page_size=16, max_pages=fp.pages))
    cache.begin(29)
    cache.commit(range(29))
    cache.begin(4)  # the last round of a 30-token sequence with budget 3 fits


def test_options_reject_unknown_fields():
    with pytest.raises(Exception, match="extra"):
        PagedCacheOptions(pagesize=8)


@pytest.mark.parametrize("kind", ["dense", "paged"])
def test_a_cache_that_cannot_fit_in_memory_is_one_line_before_anything_is_allocated(kind):
    info = TargetInfo(name="huge", architecture="llama", vocab_size=10, hidden_size=8192, num_layers=1000,
                      num_kv_heads=64, head_dim=128, max_positions=1 << 24, dtype=torch.float32,
                      device=torch.device("cpu"))  # 2 x 1000 x 2^22 x 64 x 128 x 4 bytes = 256 TiB
    with pytest.raises(CapacityError, match=r"KV cache .* needs .* GiB but only .* GiB are free on cpu"):
        (DenseKVCache(info, 1 << 22) if kind == "dense" else PagedKVCache(info, 1 << 22))


def test_a_spare_page_that_comes_back_is_not_sent_to_the_device_again():
    """Gather mode: a round's tree reaches into a page its commit gives back; the next round's begin
    takes that same page again (the allocator is last-in first-out), so the slot and block tables
    already hold it: nothing is copied. A page another cache took in between is sent: its slot rows at
    once, the block table (no kernel of ours reads it) when it is read, once."""
    a, b = PagedKVCache(info(), 64, PagedCacheOptions(page_size=4)).sequences(2)
    sent = []
    real = a._host
    a._host = lambda values: (sent.append(list(values)), real(values))[1]
    a.begin(6)  # pages p0, p1
    a.commit(range(3))  # keeps p0, gives p1 back
    sent.clear()
    a.begin(4)  # tokens 3..6: p0 and p1 again
    assert sent == [] and a.slot_mapping.tolist() == [a._pages[s // 4] * 4 + s % 4 for s in range(7)]
    a.commit(range(1))  # 4 committed; p1 given back again
    b.begin(4)  # the other cache takes p1
    a.begin(4)  # tokens 4..7 need a page: another one than p1 now
    assert len(sent) == 1  # its rows
    assert a.slot_mapping.tolist() == [a._pages[s // 4] * 4 + s % 4 for s in range(8)]
    assert a.block_table[: a.pages_in_use].tolist() == a._pages and len(sent) == 2  # read: sent now
    assert a.block_table[: a.pages_in_use].tolist() == a._pages and len(sent) == 2  # read again: nothing new
    assert set(a._pages).isdisjoint(b._pages)


def test_pages_given_back_come_back_in_their_order_and_are_not_sent_again():
    """A tree reaching two pages past the commit gets both back next round, in the same order: the
    slot and block tables already hold them, so the begin copies nothing to the device."""
    a = PagedKVCache(info(), 64, PagedCacheOptions(page_size=4))
    sent = []
    real = a._host
    a._host = lambda values: (sent.append(list(values)), real(values))[1]
    a.begin(11)  # pages p0, p1, p2
    first = list(a._pages)
    a.commit(range(3))  # keeps p0, gives p1 and p2 back
    sent.clear()
    a.begin(9)  # tokens 3..11: p0, p1, p2 again
    assert a._pages == first and sent == []
    a.begin(9)  # a second begin without commit: the same pages again, nothing sent
    assert a._pages == first and sent == []
    assert a.slot_mapping.tolist() == [first[s // 4] * 4 + s % 4 for s in range(12)]
