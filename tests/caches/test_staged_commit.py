"""A commit staged on the device is the host's commit: for any sequence of rounds, a cache that
runs `stage_commit(keep padded with any pending indices)` then `commit(keep)` reads back exactly
what the same cache reads after a plain `commit(keep)` (dense, and paged in both modes)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.caches.dense import DenseKVCache
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.errors import InputError
from jetspec.core.interfaces import CommitsOnDevice
from jetspec.testing.kv_semantics import small_info

LAYERS, HKV, D = 2, 2, 4
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def caches(kind: str, capacity: int, device: str = "cpu"):
    """Two caches of one kind: one commits on the host, one stages on the device first."""
    info = small_info(LAYERS, HKV, D, device)
    if kind == "dense":
        return DenseKVCache(info, capacity), DenseKVCache(info, capacity)
    mode, page = kind.split("/")
    opts = PagedCacheOptions(page_size=int(page), commit=mode)
    return PagedKVCache(info, capacity, opts), PagedKVCache(info, capacity, opts)


# one round: n tokens verified, the kept ones (a root-down path: ascending, starts at 0), and how
# many pending indices pad the staged index past the path (what a fixed-size device gather reads)
rounds = st.lists(
    st.integers(1, 20).flatmap(lambda n: st.tuples(
        st.just(n), st.sets(st.integers(1, n - 1)) if n > 1 else st.just(set()),
        st.lists(st.integers(0, n - 1), max_size=4))),
    min_size=1, max_size=8,
)


@settings(max_examples=80, deadline=None)
@given(rounds=rounds, kind=st.sampled_from(["dense", "gather/1", "gather/4", "remap/3", "remap/16"]), seed=st.integers(0, 99),
       device=st.sampled_from(DEVICES))
def test_a_staged_commit_reads_back_what_a_host_commit_does(rounds, kind, seed, device):
    host, staged = caches(kind, sum(n for n, _, _ in rounds), device)
    assert isinstance(staged, CommitsOnDevice)
    g = torch.Generator().manual_seed(seed)
    for n, drafts, pad in rounds:
        keep = [0] + sorted(drafts)
        for cache in (host, staged):
            cache.begin(n)
        for layer in range(LAYERS):
            k, v = (torch.randn(n, HKV, D, generator=g).to(device) for _ in range(2))  # [n, Hkv, D] each
            host.write(layer, k, v)
            staged.write(layer, k, v)
        host.commit(keep)
        staged.stage_commit(torch.tensor((keep + pad)[:n], device=device))  # M <= n, as a tree's D + 1 <= N
        staged.commit(keep)
        assert (staged.committed, staged.pending) == (host.committed, host.pending)
        for layer in range(LAYERS):
            for a, b in zip(host.read(layer), staged.read(layer)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["dense", "gather/4", "remap/4"])
def test_a_commit_longer_than_what_was_staged_is_refused(kind):
    cache, _ = caches(kind, 16)
    cache.begin(4)
    cache.stage_commit(torch.tensor([0, 2]))
    with pytest.raises(InputError, match="staged only 2"):
        cache.commit([0, 2, 3])
