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
