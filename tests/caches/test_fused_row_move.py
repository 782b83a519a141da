"""The fused staged commit is the staged commit: for any rounds, a cache whose `stage_commit` takes the
one-launch path (`caches/triton_rows.py`, what CUDA runs) leaves its K, V and slot table equal, bit for
bit and everywhere (padding rows included), to the same cache's torch ops (dense, paged gather and
remap). On a CPU the kernel runs in Triton's interpreter (conftest.py); on a GPU machine, compiled,
on CUDA tensors."""

from __future__ import annotations

from dataclasses import replace
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from jetspec.caches.dense import DenseKVCache  # noqa: E402
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache  # noqa: E402
from jetspec.core import on_device  # noqa: E402
from jetspec.testing.kv_semantics import small_info  # noqa: E402
from jetspec.testing.on_device import ROUNDS  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"  # where the kernel runs: compiled on a GPU machine, else the interpreter


def new_cache(kind: str, info, capacity: int):
    if kind == "dense":
        return DenseKVCache(info, capacity)
    mode, page = kind.split("/")
    return PagedKVCache(info, capacity, PagedCacheOptions(page_size=int(page), commit=mode))


def fused_here():
    """The kernel path on any device: what `stage_commit` runs on CUDA."""
    return patch.object(on_device, "fused", lambda x: True)


def state(cache) -> list[torch.Tensor]:
    return [cache.k, cache.v] + ([cache.slot_table] if isinstance(cache, PagedKVCache) else [])


@settings(max_examples=25, deadline=None)
@given(rounds=ROUNDS, kind=st.sampled_from(["dense", "gather/1", "gather/4", "remap/3", "remap/16"]),
       layers=st.integers(1, 3), kv_heads=st.integers(1, 2), head_dim=st.sampled_from([4, 96]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 99))
def test_the_kernel_moves_what_the_torch_ops_move(rounds, kind, layers, kv_heads, head_dim, dtype, seed):
    # head dim 96 x 2 heads: rows wider than one program's column block, a masked second block
    info = replace(small_info(layers, kv_heads, head_dim), dtype=dtype)
    capacity = sum(n for n, _, _ in rounds)
    ops, fused = new_cache(kind, info, capacity), new_cache(kind, replace(info, device=torch.device(DEVICE)), capacity)
    g = torch.Generator().manual_seed(seed)
    for n, drafts, pad in rounds:
        keep = [0] + sorted(drafts)
        staged = torch.tensor((keep + pad)[:n])  # [M <= n]: the path, then any pending indices
        for cache in (ops, fused):
            cache.begin(n)
        for layer in range(layers):
            k, v = (torch.randn(n, kv_heads, head_dim, generator=g).to(dtype) for _ in range(2))  # [n, Hkv, D]
            ops.write(layer, k, v)
            fused.write(layer, k.to(DEVICE), v.to(DEVICE))
        ops.stage_commit(staged)
        with fused_here():
            fused.stage_commit(staged.to(DEVICE))
        for a, b in zip(state(ops), state(fused)):
            assert torch.equal(a, b.cpu())
        ops.commit(keep)
        fused.commit(keep)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU: stage_commit launches the compiled kernel on CUDA tensors only")
@pytest.mark.parametrize("kind", ["dense", "gather/4", "remap/4"])
def test_on_cuda_the_staged_commit_is_the_kernel_and_moves_what_the_torch_ops_move(kind):
    assert on_device.fused(torch.zeros(1, device="cuda"))
    g = torch.Generator().manual_seed(0)
    caches = {d: new_cache(kind, small_info(3, 2, 64, d), 96) for d in ("cpu", "cuda")}
    for n, keep, pad in ((9, [0, 2, 5], [1, 3]), (17, [0, 1, 2, 3], [16]), (40, [0, 39], [1, 2, 38]), (1, [0], [])):
        for cache in caches.values():
            cache.begin(n)
        for layer in range(3):
            k, v = (torch.randn(n, 2, 64, generator=g) for _ in range(2))
            for d, cache in caches.items():
                cache.write(layer, k.to(d), v.to(d))
        for d, cache in caches.items():
            cache.stage_commit(torch.tensor(keep + pad, device=d))
        for a, b in zip(state(caches["cpu"]), state(caches["cuda"])):
            assert torch.equal(a, b.cpu())
        for cache in caches.values():
            cache.commit(keep)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU: the kit's device check runs the compiled row move on CUDA only")
@pytest.mark.parametrize("name, options", [("dense", None), ("paged", {"page_size": 4}), ("paged", {"commit": "remap"})])
def test_the_kit_finds_the_built_in_caches_staged_commit_on_cuda_equal_to_their_commit(name, options):
    import jetspec
    from jetspec.testing.on_device import check_commits_on_device
    from jetspec.testing.protocol import build
    from jetspec.testing.subject import resolve

    s = resolve("kv_cache", name, options, jetspec.default_registry())
    check_commits_on_device(s, lambda info, capacity: build(s, info, capacity), examples=40, seed=0, device="cuda")


@settings(max_examples=25, deadline=None)
@given(mode=st.sampled_from(["gather", "remap"]), page=st.sampled_from([1, 4]), seed=st.integers(0, 99),
       steps=st.lists(st.lists(st.integers(1, 9), min_size=3, max_size=3), min_size=1, max_size=3), data=st.data())
def test_a_steps_staged_commits_in_one_launch_equal_each_caches_own(mode, page, seed, steps, data):
    """`stage_commit_many` over the caches of one pool (`sequences`): the one-launch path (what CUDA
    runs) leaves K, V and the slot-map table bit for bit as each cache's own torch `stage_commit`
    does, steps after steps of 3 sequences' trees of N_s nodes with paths padded past their end
    (clamped into the tree) and K/V offsets anywhere in the step's results."""
    info = small_info(2, 2, 4, DEVICE)
    opts = PagedCacheOptions(page_size=page, commit=mode)
    capacity = sum(max(s) for s in steps) + 1
    fused, torch_ops = (PagedKVCache(info, capacity, opts).sequences(3) for _ in range(2))
    g = torch.Generator().manual_seed(seed)
    for sizes in steps:
        moves, keeps, offset = [], [], 0
        for n in sizes:
            kept = [0] + sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=n - 1) if n > 1 else st.just(set())))
            path = (kept + data.draw(st.lists(st.integers(-2, n + 2), max_size=3)))[:n]  # padding past k, clamped; M <= N
            junk = data.draw(st.integers(0, 2))  # results of other kinds sit between the paths
            keeps += [7] * junk + path
            moves.append((offset + junk, len(path), n))
            offset += junk + len(path)
        for pool in (fused, torch_ops):
            for c, n in zip(pool, sizes):
                c.begin(n)
        for layer in range(2):
            for c_f, c_t, n in zip(fused, torch_ops, sizes):
                k, v = (torch.randn(n, 2, 4, generator=g).to(DEVICE) for _ in range(2))  # [n, Hkv, D]
                c_f.write(layer, k, v)
                c_t.write(layer, k, v)
        flat = torch.tensor(keeps, device=DEVICE)  # [K]
        with fused_here():
            assert fused[0].stage_commit_many(fused, flat, moves)
        with patch.object(on_device, "fused", lambda x: False):
            assert torch_ops[0].stage_commit_many(torch_ops, flat, moves)
        assert torch.equal(fused[0].k, torch_ops[0].k) and torch.equal(fused[0].v, torch_ops[0].v)
        assert torch.equal(fused[0].slot_tables, torch_ops[0].slot_tables)
        for pool in (fused, torch_ops):
            for c, (o, m, n) in zip(pool, moves):
                first = flat[o : o + m].clamp(0, n - 1).tolist()
                k = next((i for i in range(1, len(first)) if first[i] <= first[i - 1]), len(first))
                c.commit(first[:k])  # the ascending head of the staged path: what acceptance commits


def test_caches_of_different_pools_are_not_staged_together():
    info = small_info(2, 2, 4, "cpu")
    a, b = PagedKVCache(info, 8).sequences(1)[0], PagedKVCache(info, 8).sequences(1)[0]
    assert not a.stage_commit_many([a, b], torch.zeros(4, dtype=torch.int64), [(0, 1, 1), (1, 1, 1)])
