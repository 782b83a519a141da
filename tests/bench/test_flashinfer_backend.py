"""The FlashInfer backend of `bench/kernel_bench.py`, on the CPU: its packed custom mask is the tree's
interval rule bit for bit in FlashInfer's layout, its page table reaches the tokens the paged cache
holds, and where flashinfer is not installed a row records why instead of a time."""

import importlib.util
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.flashinfer_attention import flashinfer_fn, pack_bits_little, packed_tree_mask, page_table
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.interfaces import TargetInfo
from jetspec.testing.strategies import draft_trees


@settings(max_examples=60, deadline=None)
@given(tree=draft_trees(max_nodes=40), prefix=st.integers(0, 50))
def test_packed_mask_is_the_interval_rule_in_flashinfers_bit_layout(tree, prefix):
    n = tree.size
    packed = packed_tree_mask(tree.subtree_sizes, prefix)
    keys = prefix + n
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n * keys // 8)
    for k, byte in enumerate(packed.tolist()):
        for b in range(8):
            i, key = divmod(8 * k + b, keys)  # row-major [N, T + N]: element 8k + b is bit b of byte k
            if i >= n:
                expected = False  # padding after the last row
            else:
                expected = key < prefix or tree.is_ancestor(key - prefix, i)
            assert bool(byte >> b & 1) == expected, (i, key)


@settings(max_examples=100, deadline=None)
@given(bits=st.lists(st.booleans(), max_size=70))
def test_bit_packing_is_numpys_little_endian_packbits(bits):
    x = torch.tensor(bits, dtype=torch.bool)
    expected = np.packbits(np.array(bits, dtype=bool), bitorder="little")
    assert pack_bits_little(x).tolist() == expected.tolist()


def _filled_cache(context: int, nodes: int, page: int, seed: int) -> PagedKVCache:
    info = TargetInfo("t", "llama", 16, 8, 1, 2, 4, 4096, torch.float32, torch.device("cpu"))
    cache = PagedKVCache(info, context + nodes + 3 * page, PagedCacheOptions(page_size=page))
    random.Random(seed).shuffle(cache.allocator._free)  # pages out of order, as kernel_bench's pool
    g = torch.Generator().manual_seed(seed)
    cache.begin(context)
    cache.write(0, torch.randn(context, 2, 4, generator=g), torch.randn(context, 2, 4, generator=g))
    cache.commit(range(context))
    cache.begin(nodes)
    cache.write(0, torch.randn(nodes, 2, 4, generator=g), torch.randn(nodes, 2, 4, generator=g))
    return cache


@pytest.mark.parametrize("context,nodes,page", [(0, 1, 4), (5, 3, 4), (16, 16, 16), (33, 7, 16), (31, 1, 16)])
def test_page_table_reaches_every_live_token_in_logical_order(context, nodes, page):
    cache = _filled_cache(context, nodes, page, seed=context + nodes)
    indptr, indices, last = page_table(cache, context + nodes)
    assert indptr.tolist() == [0, indices.numel()] and 1 <= int(last) <= page
    for pool, logical in zip((cache.k[0], cache.v[0]), cache.read(0)):  # pool [pages, P, Hkv, D]
        rows = pool[indices.long()].flatten(0, 1)  # what FlashInfer reads: the pages in table order
        length = (indices.numel() - 1) * page + int(last)
        assert length == context + nodes
        assert torch.equal(rows[:length], logical)


def test_page_table_refuses_a_remapped_cache():
    info = TargetInfo("t", "llama", 16, 8, 1, 2, 4, 4096, torch.float32, torch.device("cpu"))
    cache = PagedKVCache(info, 32, PagedCacheOptions(page_size=4, commit="remap"))
    with pytest.raises(ValueError, match="gather"):
        page_table(cache, 1)


def test_unknown_option_and_missing_module_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown flashinfer option.*splits"):
        flashinfer_fn(object(), {"splits": 4})
    if importlib.util.find_spec("flashinfer") is None:
        with pytest.raises(ImportError, match="flashinfer"):
            flashinfer_fn(object(), {})
