"""The paged cache sends the device only what changed: in gather mode a logical slot's row is fixed
by its page, so the slot map goes over once per page, not once per decoding step (a copy per
sequence per step is a launch per sequence per step in a batch)."""

from unittest.mock import patch

import torch

from jetspec.caches.dense import DenseKVCache
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.interfaces import TargetInfo


def tiny_info() -> TargetInfo:
    return TargetInfo(name="t", architecture="llama", vocab_size=10, hidden_size=16, num_layers=2, num_kv_heads=2,
                      head_dim=4, max_positions=128, dtype=torch.float32, device=torch.device("cpu"))


def test_gather_mode_sends_the_slot_map_once_per_page_and_reads_like_a_dense_cache():
    info = tiny_info()
    paged = PagedKVCache(info, 80, PagedCacheOptions(page_size=16, commit="gather"))
    dense = DenseKVCache(info, 80)
    made = []
    real = torch.tensor
    with patch.object(torch, "tensor", side_effect=lambda *a, **k: made.append(k.get("dtype")) or real(*a, **k)):
        for step in range(40):  # plain decoding: one pending token a step, kept
            for cache in (paged, dense):
                cache.begin(1)
                k = torch.full((1, info.num_kv_heads, info.head_dim), float(step))
                for layer in range(info.num_layers):
                    cache.write(layer, k, -k)
                cache.commit([0])
    int32_copies = sum(d == torch.int32 for d in made)
    assert int32_copies <= 2 * 3, f"{int32_copies} slot-map / page-table uploads for 40 steps over 3 pages"
    for layer in range(info.num_layers):
        assert all(torch.equal(a, b) for a, b in zip(paged.read(layer), dense.read(layer)))


def test_sequences_of_a_batch_get_their_own_pages_back_so_a_steady_step_uploads_nothing():
    """A batched step begins every sequence's tree, then commits every sequence's accepted path: the
    pages a commit gives back are buried under the later sequences' by the time that sequence begins
    again. It gets its own back (`PageAllocator.allocate(prefer=...)`), so its tables stay valid:
    uploads come only with pages it never held, and every sequence reads what a dense cache holds."""
    info = tiny_info()
    caches = PagedKVCache(info, 160, PagedCacheOptions(page_size=4, commit="gather")).sequences(4)
    dense = [DenseKVCache(info, 160) for _ in caches]
    made = []
    real = torch.tensor
    with patch.object(torch, "tensor", side_effect=lambda *a, **k: made.append(k.get("dtype")) or real(*a, **k)):
        for step in range(24):  # each sequence: a 9-token tree a step (three pages pending), 2 tokens kept
            for cache in caches + dense:
                cache.begin(9)
            for s, cache in enumerate(caches + dense):
                k = torch.arange(9.0).view(9, 1, 1).expand(9, info.num_kv_heads, info.head_dim) + 100 * step + s % 4
                for layer in range(info.num_layers):
                    cache.write(layer, k, -k)
            for cache in caches + dense:
                cache.commit([0, 3])
    uploads = sum(d == torch.int32 for d in made)
    # 48 kept tokens per sequence = 12 pages, each sent at most twice (slot rows, page table), plus the
    # first begin's two pages of pending rows: without the preference, 2 uploads per sequence per step (192)
    assert uploads <= 4 * 2 * (12 + 3), f"{uploads} slot-map / page-table uploads in 24 steps of 4 sequences"
    for cache, ref in zip(caches, dense):
        assert cache.committed == ref.committed == 48
        for layer in range(info.num_layers):
            assert all(torch.equal(a, b) for a, b in zip(cache.read(layer), ref.read(layer)))


def test_the_allocator_hands_out_preferred_pages_still_free_then_the_most_recently_freed():
    from jetspec.caches.page_pool import PageAllocator

    pool = PageAllocator(8)
    a = pool.allocate(3)  # [0, 1, 2]
    b = pool.allocate(2)  # [3, 4]
    pool.release(a[1:])  # 1, 2 free again
    pool.release(b)  # 3, 4 on top
    assert pool.allocate(2, prefer=[1, 2]) == [1, 2]
    assert pool.allocate(1, prefer=[1]) == [3]  # 1 is taken: the most recently freed instead
    assert pool.free == 8 - 3 - 2 + 2 + 2 - 2 - 1
    for _ in range(100):  # a page taken through `prefer` and given back, again and again: the list stays bounded
        pool.release([1])
        assert pool.allocate(1, prefer=[1]) == [1]
    assert len(pool._free) <= 2 * 8
    rest = pool.allocate(pool.free)
    assert sorted(rest) == [4, 5, 6, 7] and pool.free == 0
