"""An attention backend's position-invariant mode (`PositionInvariantAttention`), checked bit for bit.

A target with `exact = true` runs attention in `backend.position_invariant()`'s mode and relies
on (`jetspec.core.invariant` states the rule):

    for any geometry, committed prefix of T keys and DFS tree of N pending tokens, every node u:
        mode.attend(q, cache, layer, tree meta)[u]
            == mode.attend(q[u:u+1], step cache, layer, one-token meta at T + depth(u))[0]   (torch.equal)

where the step cache holds the same prefix, then u's ancestors committed root first, one plain
step each (so they sit at the absolute positions T .. T + depth(u) - 1 they have in the tree),
then u's own K/V pending: the cache a plain decoding step at u's position would see.

A mode that is also `BatchedAttention` must give each sequence's rows of a packed batch (several
sequences over caches from one factory, a `BatchedKVCache`'s shared storage when it has one)
the bits that sequence's `attend` alone gives:

    mode.attend_batch(q, caches, layer, BatchMeta.pack(metas))[rows(s)]
        == mode.attend(q[rows(s)], caches[s], layer, metas[s])                        (torch.equal)

Tolerance-based numerics (`attention.py`) cannot see either: a reduction whose order follows the
number of queries is close to the reference but breaks `exact = true`.
"""

from __future__ import annotations

from typing import Callable

import torch
from hypothesis import given
from hypothesis import strategies as st

from ..core.batch import BatchMeta
from ..core.interfaces import (
    AttentionBackend, AttentionMeta, BatchedAttention, BatchedKVCache, KVCache, PositionInvariantAttention, TargetInfo,
)
from ..core.tree import DraftTree
from .kv_semantics import small_info
from .subject import Subject, run_property

LAYERS = 2  # the kit's caches hold two layers; one is attended, both are written


def _parents(data: st.DataObject, n: int, label: str) -> list[int]:
    return [-1] + [data.draw(st.integers(0, i - 1), label=f"{label}parent of {i}") for i in range(1, n)]


def _differ(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"max |diff| {float((a.float() - b.float()).abs().max()):.3g}"


class _Writer:
    """Random K/V [count, Hkv, D] of a fixed geometry, written to every layer of a cache."""

    def __init__(self, kv_heads: int, head_dim: int, device: str, dtype: torch.dtype, seed: int):
        self.kv_heads, self.head_dim, self.device, self.dtype = kv_heads, head_dim, device, dtype
        self.gen = torch.Generator().manual_seed(seed)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen).to(device=self.device, dtype=self.dtype)

    def kv(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[layer] -> (k, v), each [count, Hkv, D]."""
        return [(self.rand(count, self.kv_heads, self.head_dim), self.rand(count, self.kv_heads, self.head_dim))
                for _ in range(LAYERS)]


def write(cache: KVCache, kv: list[tuple[torch.Tensor, torch.Tensor]], rows: slice | list[int] = slice(None)) -> None:
    """begin, then write rows `rows` of every layer's (k, v) as pending entries."""
    count = kv[0][0][rows].shape[0]
    cache.begin(count)
    for layer, (k, v) in enumerate(kv):
        cache.write(layer, k[rows], v[rows])


def check_tree_equals_steps(
    s: Subject, mode: AttentionBackend, new_cache: Callable[[TargetInfo, int], KVCache], examples: int,
    seed: int | None, device: str, dtype: torch.dtype, head_dims: tuple[int, ...], shrink: bool = True,
) -> None:
    """Every node of a random tree over a random prefix: bitwise its one-token step (module docstring)."""

    @given(kv_heads=st.integers(1, 2), group=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from(head_dims),
           prefix=st.integers(0, 80), n=st.integers(1, 10), layer=st.integers(0, LAYERS - 1), data=st.data())
    def every_node_is_its_one_token_step(kv_heads, group, head_dim, prefix, n, layer, data):
        parents = _parents(data, n, "")
        tree = DraftTree.from_parents(list(range(n)), parents)
        info = TargetInfo(**{**small_info(LAYERS, kv_heads, head_dim, device).__dict__, "dtype": dtype})
        w = _Writer(kv_heads, head_dim, device, dtype, prefix * 1000 + n * 10 + head_dim)
        committed, pending = w.kv(prefix), w.kv(n)  # [layer] -> (k, v) [T, Hkv, D] and [N, Hkv, D]
        q = w.rand(n, kv_heads * group, head_dim)  # [N, Hq, D]
        scale = head_dim**-0.5
        where = f"prefix {prefix}, tree parents {parents}, Hq {kv_heads * group}, Hkv {kv_heads}, head dim {head_dim}, layer {layer}"

        def cache_with_prefix(capacity: int) -> KVCache:
            cache = new_cache(info, capacity)
            if prefix:
                write(cache, committed)
                cache.commit(range(prefix))
            return cache

        cache = cache_with_prefix(prefix + n)
        write(cache, pending)
        with s.calling("position invariance", f"; tree forward; {where}"):
            got = mode.attend(q, cache, layer, AttentionMeta.for_tree(tree, prefix, device), scale)  # [N, Hq, D]
        for u in range(n):
            path = tree.path_to(u)  # root .. u
            step_cache = cache_with_prefix(prefix + len(path))
            for a in path[:-1]:  # the ancestors, one committed plain step each
                write(step_cache, pending, [a])
                step_cache.commit([0])
            write(step_cache, pending, [u])
            step_meta = AttentionMeta.for_tree(DraftTree.root_only(u), prefix + len(path) - 1, device)
            with s.calling("position invariance", f"; one-token step of node {u}; {where}"):
                want = mode.attend(q[u:u + 1], step_cache, layer, step_meta, scale)[0]  # [Hq, D]
            if not torch.equal(got[u], want):
                s.fail("position invariance", f"node {u} (depth {len(path) - 1}) of the tree differs from its one-token "
                                              f"step ({_differ(got[u], want)}); {where}")

    run_property(every_node_is_its_one_token_step, examples, seed, shrink)


def check_packed_equals_alone(
    s: Subject, mode: BatchedAttention, new_caches: Callable[[TargetInfo, int, int], list[KVCache]], examples: int,
    seed: int | None, device: str, dtype: torch.dtype, head_dims: tuple[int, ...], shrink: bool = True,
) -> None:
    """Each sequence's rows of a packed batch: bitwise that sequence's `attend` alone (module docstring)."""

    @given(shapes=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 8)), min_size=2, max_size=3),
           kv_heads=st.integers(1, 2), group=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from(head_dims),
           layer=st.integers(0, LAYERS - 1), data=st.data())
    def packed_rows_are_each_sequence_alone(shapes, kv_heads, group, head_dim, layer, data):
        parents = [_parents(data, n, f"sequence {i}: ") for i, (_, n) in enumerate(shapes)]
        trees = [DraftTree.from_parents(list(range(len(p))), p) for p in parents]
        prefixes = [prefix for prefix, _ in shapes]
        info = TargetInfo(**{**small_info(LAYERS, kv_heads, head_dim, device).__dict__, "dtype": dtype})
        w = _Writer(kv_heads, head_dim, device, dtype, sum(prefixes) * 1000 + len(shapes) * 10 + head_dim)
        capacity = max(p + t.size for p, t in zip(prefixes, trees))
        caches = new_caches(info, capacity, len(shapes))
        while any(c.committed < p for c, p in zip(caches, prefixes)):  # in turns of up to 7, so pages interleave
            for c, p in zip(caches, prefixes):
                if c.committed < p:
                    count = min(7, p - c.committed)
                    write(c, w.kv(count))
                    c.commit(range(count))
        for c, t in zip(caches, trees):
            write(c, w.kv(t.size))
        metas = [AttentionMeta.for_tree(t, p, device) for t, p in zip(trees, prefixes)]
        meta = BatchMeta.pack(metas)
        q = w.rand(meta.num_queries, kv_heads * group, head_dim)  # [R, Hq, D]
        scale = head_dim**-0.5
        where = (f"prefixes {prefixes}, tree parents {parents}, Hq {kv_heads * group}, Hkv {kv_heads}, "
                 f"head dim {head_dim}, layer {layer}")
        with s.calling("packed invariance", f"; packed forward; {where}"):
            packed = mode.attend_batch(q, caches, layer, meta, scale)  # [R, Hq, D]
        for i, cache in enumerate(caches):
            rows = meta.rows(i)
            with s.calling("packed invariance", f"; sequence {i} alone; {where}"):
                alone = mode.attend(q[rows], cache, layer, metas[i], scale)  # [N_i, Hq, D]
            if not torch.equal(packed[rows], alone):
                node = next(u for u in range(alone.shape[0]) if not torch.equal(packed[rows][u], alone[u]))
                s.fail("packed invariance", f"sequence {i}'s node {node} in the packed batch differs from the sequence "
                                            f"alone ({_differ(packed[rows], alone)}); {where}")

    run_property(packed_rows_are_each_sequence_alone, examples, seed, shrink)


def batch_caches(new_cache: Callable[[TargetInfo, int], KVCache]) -> Callable[[TargetInfo, int, int], list[KVCache]]:
    """(info, capacity, count) -> `count` caches as a batch gets them: over one storage where the
    factory's cache is a `BatchedKVCache` (its `sequences`), else one cache each."""

    def make(info: TargetInfo, capacity: int, count: int) -> list[KVCache]:
        template = new_cache(info, capacity)
        if isinstance(template, BatchedKVCache):
            return template.sequences(count)
        return [template] + [new_cache(info, capacity) for _ in range(count - 1)]

    return make


def check_position_invariance(
    s: Subject, backend: AttentionBackend, new_cache: Callable[[TargetInfo, int], KVCache],
    new_batch_cache: Callable[[TargetInfo, int], KVCache], examples: int, seed: int | None, device: str,
    dtype: torch.dtype, head_dims: tuple[int, ...], shrink: bool = True,
) -> None:
    """For a backend with `PositionInvariantAttention`: its mode's tree nodes equal their one-token
    steps over `new_cache` caches; a mode with `attend_batch` also gives packed rows the bits of
    each sequence alone, over caches from `new_batch_cache`. A backend without it: nothing."""
    if not isinstance(backend, PositionInvariantAttention):
        return
    with s.calling("position invariance", "; position_invariant()"):
        mode = backend.position_invariant()
    if not isinstance(mode, AttentionBackend):
        s.fail("position invariance", f"position_invariant() returned a {type(mode).__name__}, not an AttentionBackend")
    check_tree_equals_steps(s, mode, new_cache, examples, seed, device, dtype, head_dims, shrink)
    if isinstance(mode, BatchedAttention):
        check_packed_equals_alone(s, mode, batch_caches(new_batch_cache), examples, seed, device, dtype, head_dims, shrink)
