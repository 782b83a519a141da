"""The `triton` backend's position-invariant mode, kernel-level: close to the reference
attention, and a forward whose static inputs are refreshed in place (as a CUDA-graph replay
refreshes them) sees the new tree, not the one of an earlier forward. On a CUDA machine they run
the compiled kernels (DEVICE), elsewhere Triton's interpreter (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.core.interfaces import AttentionMeta
from jetspec.core.tree import DraftTree
from jetspec.kernels.reference import tree_attention
from jetspec.kernels.triton_backend import TritonAttention, TritonAttentionOptions
from jetspec.testing.models import TinyDecoder

from .cases import DEVICE


def cache_with(k: torch.Tensor, v: torch.Tensor, t: int, n: int):
    from jetspec.caches.dense import DenseKVCache

    info = TinyDecoder(device=DEVICE).info
    cache = DenseKVCache(info, 256)
    cache.begin(t + n)
    for layer in range(info.num_layers):
        cache.write(layer, k, v)
    cache.commit(range(t))
    cache.begin(n)
    for layer in range(info.num_layers):
        cache.write(layer, k[t:], v[t:])
    return cache


def test_a_refreshed_static_meta_is_read_anew_at_the_first_layer():
    torch.manual_seed(0)
    t, hq, hkv, d = 70, 4, 2, 16
    a = DraftTree.from_parents([1, 2, 3, 4, 5], [-1, 0, 1, 0, 3])
    b = DraftTree.from_parents([1, 2, 3, 4, 5], [-1, 0, 0, 0, 0])
    n = a.size
    k, v = torch.randn(t + n, hkv, d, device=DEVICE), torch.randn(t + n, hkv, d, device=DEVICE)  # [T+N, Hkv, D]
    q = torch.randn(n, hq, d, device=DEVICE)  # [N, Hq, D]
    cache = cache_with(k, v, t, n)
    backend = TritonAttention(TritonAttentionOptions(split_keys=64), invariant=True)
    positions, sizes = a.position_ids(t).to(DEVICE), a.subtree_sizes.to(DEVICE, torch.int32).clone()  # static buffers
    meta = AttentionMeta(t, positions, sizes, prefix_len_t=torch.tensor([t], dtype=torch.int32, device=DEVICE))
    for tree in (a, b):  # the same meta object, its buffers refreshed in place
        positions.copy_(tree.position_ids(t))
        sizes.copy_(tree.subtree_sizes)
        got = backend.attend(q, cache, 0, meta, d**-0.5)
        want = tree_attention(q, k, v, AttentionMeta.for_tree(tree, t, DEVICE), d**-0.5)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def one_step(q_u, k_rows, v_rows, slots, path_rows, prefix_len, split_blocks):
    """The one-token step of the node whose path (root first, itself last) has pool rows
    `path_rows`: its prefix is the committed one plus its ancestors, its key itself."""
    from jetspec.kernels.triton_invariant_attention import invariant_tree_attention

    t = prefix_len + len(path_rows) - 1  # the node's position = the step's prefix length
    step_slots = slots.clone()
    step_slots[prefix_len:t + 1] = path_rows
    dev = k_rows.device
    return invariant_tree_attention(q_u[None], k_rows, v_rows, step_slots, torch.tensor([t], device=dev),
                                    torch.zeros(1, 1, dtype=torch.int32, device=dev), torch.tensor([t], dtype=torch.int32, device=dev),
                                    0.125, split_blocks, False)[0]


@settings(max_examples=10, deadline=None)
@given(nodes=st.integers(2, 40), prefix_len=st.integers(1, 250), group=st.sampled_from([1, 3, 4]),
       split_blocks=st.sampled_from([1, 2, 8]), split_group=st.sampled_from([2, 8]), per_split=st.sampled_from([0, 1]),
       one_launch=st.sampled_from([-1, 0, 1]), dtype=st.sampled_from([torch.float32, torch.bfloat16]), data=st.data())
def test_trees_in_one_or_two_launches_give_every_node_the_bits_of_its_one_token_step(
        nodes, prefix_len, group, split_blocks, split_group, per_split, one_launch, dtype, data):
    """A tree runs as two launches (shared blocks in large tiles, a program per split or per group of
    splits, then the per-token blocks and the folds) or as one, a program per split in TAIL_ROWS tiles
    (`one_launch` 0 / 1; -1: one only for trees of one tile, as one-token steps). Each node's row must still be
    bitwise its step's, whether the tree stays in one key block or crosses blocks, splits and groups of splits."""
    from jetspec.kernels import triton_invariant_attention as inv
    from jetspec.kernels.row_inputs import ancestor_table
    from jetspec.kernels.triton_invariant_attention import invariant_tree_attention

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inv, "SPLIT_GROUP", split_group)
        torch.manual_seed(data.draw(st.integers(0, 2**16)))
        parents = [-1] + [data.draw(st.integers(0, i - 1)) for i in range(1, nodes)]
        tree = DraftTree.from_parents(list(range(nodes)), parents)
        hkv, d, capacity = 2, 16, 320
        k_rows, v_rows = (torch.randn(capacity, hkv, d).to(DEVICE, dtype) for _ in range(2))  # [R, Hkv, D]
        slots = torch.randperm(capacity).to(DEVICE, torch.int32)  # [C] logical -> pool row, any page order
        q = torch.randn(nodes, hkv * group, d).to(DEVICE, dtype)  # [N, Hq, D]
        positions = tree.position_ids(prefix_len).to(DEVICE)
        prefix = torch.tensor([prefix_len], dtype=torch.int32, device=DEVICE)
        got = invariant_tree_attention(q, k_rows, v_rows, slots, positions, ancestor_table(positions, prefix), prefix, 0.125,
                                       split_blocks, False, per_split=per_split, one_launch=one_launch)
        for u in range(nodes):
            path_rows = slots[prefix_len + torch.tensor(tree.path_to(u), device=DEVICE)]
            assert torch.equal(got[u], one_step(q[u], k_rows, v_rows, slots, path_rows, prefix_len, split_blocks)), u


@settings(max_examples=8, deadline=None)
@given(t=st.integers(0, 300), spare=st.integers(1, 700), group=st.sampled_from([1, 3]),
       split_blocks=st.sampled_from([1, 2, 4]), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       seed=st.integers(0, 2**16))
def test_a_step_sees_every_key_up_to_its_own_and_its_bits_depend_neither_on_the_caches_capacity_nor_on_the_chain_form(
        t, spare, group, split_blocks, dtype, seed):
    """The one-launch grid has a program per split of the cache's capacity C, most of them past the
    step's keys: those leave nothing and the merge folds only the splits the tile reaches. The step
    at position t must read all of keys 0..t (close to the reference softmax) and give the same bits
    in a cache of t + 1 slots as in one with `spare` more — and as a chain (a CUDA graph's one-token
    bucket), which reads its keys without the ancestor table."""
    from jetspec.kernels.triton_invariant_attention import invariant_tree_attention

    torch.manual_seed(seed)
    hkv, d = 2, 16
    rows = t + 1 + spare
    k_rows, v_rows = (torch.randn(rows, hkv, d).to(DEVICE, dtype) for _ in range(2))  # [R, Hkv, D]
    q = torch.randn(1, hkv * group, d).to(DEVICE, dtype)  # [1, Hq, D]
    slots = torch.randperm(rows).to(DEVICE, torch.int32)  # [C] logical -> pool row
    pos = torch.tensor([t], device=DEVICE)
    prefix = torch.tensor([t], dtype=torch.int32, device=DEVICE)
    anc = torch.zeros(1, 1, dtype=torch.int32, device=DEVICE)

    def step(capacity: int, chain: bool = False) -> torch.Tensor:
        return invariant_tree_attention(q, k_rows, v_rows, slots[:capacity].contiguous(), pos, anc, prefix, 0.25,
                                        split_blocks, chain)

    tight, roomy = step(t + 1), step(rows)
    assert torch.equal(tight, roomy)
    assert torch.equal(step(rows, chain=True), roomy)
    keys = slots[: t + 1].long()
    k, v = k_rows[keys].double(), v_rows[keys].double()  # [t+1, Hkv, D]
    scores = torch.einsum("hgd,khd->hgk", q[0].double().view(hkv, group, d), k) * 0.25  # [Hkv, G, t+1]
    want = torch.einsum("hgk,khd->hgd", scores.softmax(-1), v).reshape(hkv * group, d)
    torch.testing.assert_close(roomy[0].double(), want, atol=2e-2 if dtype == torch.bfloat16 else 1e-4, rtol=2e-2)
