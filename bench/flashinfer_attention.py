"""FlashInfer as a `bench/kernel_bench.py` backend: what SGLang and vLLM verify draft trees with.

    flashinfer                  N > 1: BatchPrefillWithPagedKVCacheWrapper over our paged pool with
                                the tree as a packed custom mask; N = 1: BatchDecodeWithPagedKVCacheWrapper
    flashinfer:key=value,...    a variant: `backend` (auto, fa2, fa3) and `use_tensor_cores` (decode)

Both read the very pages `PagedKVCache` filled (layout NHD: one layer's pool is
[num_pages, page_size, Hkv, D], FlashInfer's own), through a page table of one request: the
sequence's pages in order (`block_table`, gather commit), and how full the last one is.
`plan()` (page table, mask upload, scheduling) runs once outside the timing, as a serving engine
plans once per forward for all its layers; `run()` is what is timed, like one layer of ours.

The mask is FlashInfer's custom-mask layout for one request: the [N, T + N] bool attention mask
(query row i sees every committed key, and key T + j iff j <= i < j + subtree_sizes[j], the
interval rule of `jetspec.core.tree`) flattened row-major and packed eight bits to a byte, bit b
of byte k being element 8k + b (`flashinfer.packbits(x, bitorder="little")`, numpy's packbits;
the kernel reads bit offset % 8 of byte offset / 8, offset = q * kv_len + kv, in 0.7.4's
include/flashinfer/attention/variants.cuh).
It is built here, on the device of `subtree_sizes`, without FlashInfer, so that a CPU test can
check it bit for bit against the rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from jetspec.core.tree import tree_mask

WORKSPACE_BYTES = 128 << 20  # FlashInfer's recommended float workspace


def pack_bits_little(bits: torch.Tensor) -> torch.Tensor:
    """[M] bool -> [ceil(M / 8)] uint8; bit b of byte k is bits[8k + b], padding bits are 0."""
    x = F.pad(bits.to(torch.uint8), (0, -bits.numel() % 8)).view(-1, 8)  # [ceil(M / 8), 8]
    weights = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8, device=bits.device)  # [8]
    return (x * weights).sum(1, dtype=torch.uint8)


def packed_tree_mask(subtree_sizes: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """subtree_sizes [N] of a DFS pre-order tree, T committed keys -> the packed custom mask of one
    FlashInfer request, uint8 [ceil(N * (T + N) / 8)], on the device of `subtree_sizes`."""
    return pack_bits_little(tree_mask(subtree_sizes, prefix_len).flatten())


def page_table(cache: Any, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kv_indptr [2], kv_indices [pages], kv_last_page_len [1]), int32 on the cache's device: one
    request whose `length` logical tokens (committed + pending) fill the cache's pages in order."""
    if getattr(cache.options, "commit", None) != "gather":
        raise ValueError("FlashInfer reads logical token t at page block_table[t // P]: needs commit = 'gather'")
    p = cache.page_size
    pages = -(-length // p)
    device = cache.block_table.device
    indices = cache.block_table[:pages].to(torch.int32)  # [pages]
    indptr = torch.tensor([0, pages], dtype=torch.int32, device=device)  # [2]
    last = torch.tensor([length - (pages - 1) * p], dtype=torch.int32, device=device)  # [1], in 1..P
    return indptr, indices, last


def flashinfer_fn(p: Any, opts: dict) -> tuple[Callable[[], torch.Tensor], dict]:
    """(one layer's attention of kernel_bench Problem `p` through FlashInfer, the config to record);
    `opts` from the backend name (`flashinfer:backend=fa2` -> {"backend": "fa2"}). Raises
    ImportError (kernel_bench records it as the row's error) where flashinfer is not installed."""
    unknown = set(opts) - {"backend", "use_tensor_cores"}
    if unknown:
        raise ValueError(f"unknown flashinfer option(s) {', '.join(sorted(unknown))}; known: backend, use_tensor_cores")
    import flashinfer

    n, t = p.nodes, p.context
    hq, d = p.q.shape[1], p.q.shape[2]
    hkv, page = p.cache.k.shape[3], p.cache.page_size
    pool = (p.cache.k[0], p.cache.v[0])  # layer 0: [num_pages, P, Hkv, D] x 2, NHD
    indptr, indices, last = page_table(p.cache, t + n)
    workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=p.q.device)
    backend = opts.get("backend", "auto")
    config = {"kernel": "decode" if n == 1 else "prefill+packed mask", "flashinfer": flashinfer.__version__, **opts}
    if n == 1:  # one query sees every key: no mask
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            workspace, "NHD", use_tensor_cores=bool(opts.get("use_tensor_cores", False)), backend=backend)
        wrapper.plan(indptr, indices, last, hq, hkv, d, page, q_data_type=p.q.dtype, kv_data_type=p.q.dtype,
                     sm_scale=p.scale)
    else:
        mask = packed_tree_mask(p.meta.subtree_sizes.to(p.q.device), t)  # [ceil(N (T + N) / 8)] uint8
        qo_indptr = torch.tensor([0, n], dtype=torch.int32, device=p.q.device)  # [2]
        wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend=backend)
        wrapper.plan(qo_indptr, indptr, indices, last, hq, hkv, d, page, packed_custom_mask=mask,
                     q_data_type=p.q.dtype, kv_data_type=p.q.dtype, sm_scale=p.scale)
    config["resolved_backend"] = getattr(wrapper, "_backend", None)
    return lambda: wrapper.run(p.q, pool), config
