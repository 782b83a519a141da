"""What the row-gathering kernels (`triton`, `cute`) read, taken from a KV cache and an
`AttentionMeta` once per forward and shared by every layer.

A cache qualifies when it is a `RowKVCache` (`core/interfaces.py`): `k`, `v` [L, ..., Hkv, D]
with token rows in between (paged: [L, pages, P, Hkv, D]; dense: [L, C, Hkv, D]) and an int32
`slot_table` (logical token -> row), or None where rows are in logical order (the identity map).
"""

from __future__ import annotations

import weakref
from typing import ClassVar

import torch

from ..core.errors import IncompatibleError
from ..core.interfaces import AttentionMeta, KVCache, RowKVCache


class RowKernelInputs:
    backend_name: ClassVar[str]

    def __init__(self) -> None:
        self._meta: AttentionMeta | None = None  # the forward whose device tensors are cached
        self._meta_tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self._identity: torch.Tensor | None = None  # dense caches: slot t = row t
        self._checked: weakref.WeakValueDictionary[int, KVCache] = weakref.WeakValueDictionary()  # caches `_kv_rows` checked
        self._ancestors: tuple[AttentionMeta, torch.Tensor] | None = None  # position-invariant mode, per forward

    def _kv_rows(self, cache: KVCache, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> k_rows, v_rows [R, Hkv, D] (the layer's pool, rows flattened), slots [>= T + N] int32."""
        if self._checked.get(id(cache)) is not cache:  # once per cache object, not per layer: a Protocol check is slow
            k, v = (cache.k, cache.v) if isinstance(cache, RowKVCache) else (None, None)
            if not (isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor) and k.dim() >= 4 and k.is_contiguous()):
                raise IncompatibleError(
                    f"the {self.backend_name} attention backend needs a paged or dense KV cache, not {type(cache).__name__}"
                )
            try:
                self._checked[id(cache)] = cache
            except TypeError:  # not weak-referenceable (__slots__): checked at every call
                pass
        k, v = cache.k, cache.v
        k_rows = k[layer].view(-1, *k.shape[-2:])  # [R, Hkv, D]
        v_rows = v[layer].view(-1, *v.shape[-2:])
        slots = cache.slot_table
        if slots is None:  # logical order == physical order
            if self._identity is None or self._identity.numel() != k_rows.shape[0] or self._identity.device != k.device:
                self._identity = torch.arange(k_rows.shape[0], dtype=torch.int32, device=k.device)
            slots = self._identity
        return k_rows, v_rows, slots

    def _forward_tensors(self, meta: AttentionMeta, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Device copies of the interval encoding [N] int32 and T [1] int32, made once per forward."""
        if meta.prefix_len_t is not None:  # graph replay: the caller owns static device buffers
            return meta.subtree_sizes, meta.prefix_len_t
        if self._meta is not meta or self._meta_tensors is None or self._meta_tensors[0].device != device:
            sizes = meta.subtree_sizes.to(device=device, dtype=torch.int32).contiguous()  # [N]
            prefix = torch.full((1,), meta.prefix_len, dtype=torch.int32, device=device)  # [1]: a fill, no copy to wait for
            self._meta, self._meta_tensors = meta, (sizes, prefix)
        return self._meta_tensors

    def _invariant_tensors(self, meta: AttentionMeta, layer: int, device: torch.device):
        """What the position-invariant kernels read: positions [N] int64 (T + depth), ancestors
        [N, N] int32 (a chain's: unused, [N, 1]) and T [1] int32. The ancestor table is built once
        per forward, at its first layer (a CUDA graph's static meta serves every replay)."""
        _, prefix = self._forward_tensors(meta, device)
        positions = meta.positions.to(device)  # [N] int64
        if meta.chain:
            return positions, positions.view(-1, 1), prefix
        if layer == 0 or self._ancestors is None or self._ancestors[0] is not meta:
            self._ancestors = (meta, ancestor_table(positions, prefix))
        return positions, self._ancestors[1], prefix


def ancestor_table(positions: torch.Tensor, prefix_len: torch.Tensor, first_row: torch.Tensor | None = None,
                   width: int | None = None) -> torch.Tensor:
    """positions [N] int64 (T + depth, DFS pre-order), prefix_len [1] -> ancestors [N, N] int32:
    ancestors[i, k] = the index of node i's ancestor at depth k, for k <= depth(i).

    In pre-order that ancestor is the last node of depth k at or before i (a later one would lie
    inside the ancestor's subtree, where every other node is deeper): a running max over i of
    "j if depth(j) == k". Device ops only, no host sync (CUDA graphs capture it).

    Packed trees of several sequences, end to end (`core/batch.py`): prefix_len [N] (each row's
    T_s), first_row [N] (the first row of its tree), width = the largest tree -> [N, width], each
    index within the row's own tree. The running max runs over all rows: a node's ancestors lie in
    its own tree, at or before it, so no earlier tree's node can be the last of its depth there."""
    n = positions.numel()
    width = n if width is None else width
    depth = positions - prefix_len.to(positions.dtype)  # [N]
    ar = torch.arange(n, device=positions.device)
    last = torch.where(depth[:, None] == ar[None, :width], ar[:, None], -1)  # [N (node j), width (depth k)]
    table = torch.cummax(last, dim=0).values  # [N, width]
    if first_row is not None:
        table = table - first_row[:, None]  # entries past a row's depth are never read
    return table.to(torch.int32)
