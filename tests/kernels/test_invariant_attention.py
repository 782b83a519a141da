"""The `triton` backend's position-invariant mode, kernel-level: close to the reference
attention, and a forward whose static inputs are refreshed in place (as a CUDA-graph replay
refreshes them) sees the new tree, not the one of an earlier forward."""

from __future__ import annotations

import torch

from jetspec.core.interfaces import AttentionMeta
from jetspec.core.tree import DraftTree
from jetspec.kernels.reference import tree_attention
from jetspec.kernels.triton_backend import TritonAttention, TritonAttentionOptions
from jetspec.testing.models import TinyDecoder


def cache_with(k: torch.Tensor, v: torch.Tensor, t: int, n: int):
    from jetspec.caches.dense import DenseKVCache

    info = TinyDecoder().info
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
    k, v = torch.randn(t + n, hkv, d), torch.randn(t + n, hkv, d)
    q = torch.randn(n, hq, d)
    cache = cache_with(k, v, t, n)
    backend = TritonAttention(TritonAttentionOptions(split_keys=64), invariant=True)
    positions, sizes = a.position_ids(t).clone(), a.subtree_sizes.to(torch.int32).clone()  # static buffers
    meta = AttentionMeta(t, positions, sizes, prefix_len_t=torch.tensor([t], dtype=torch.int32))
    for tree in (a, b):  # the same meta object, its buffers refreshed in place
        positions.copy_(tree.position_ids(t))
        sizes.copy_(tree.subtree_sizes)
        got = backend.attend(q, cache, 0, meta, d**-0.5)
        want = tree_attention(q, k, v, AttentionMeta.for_tree(tree, t), d**-0.5)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
