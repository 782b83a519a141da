"""What the row-gathering kernels (`triton`, `cute`) read, taken from a KV cache and an
`AttentionMeta` once per forward and shared by every layer.

A cache qualifies when it is a `RowKVCache` (`core/interfaces.py`): `k`, `v` [L, ..., Hkv, D]
with token rows in between (paged: [L, pages, P, Hkv, D]; dense: [L, C, Hkv, D]) and an int32
`slot_table` (logical token -> row), or None where rows are in logical order (the identity map).
"""

from __future__ import annotations

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

    def _kv_rows(self, cache: KVCache, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> k_rows, v_rows [R, Hkv, D] (the layer's pool, rows flattened), slots [>= T + N] int32."""
        k, v = (cache.k, cache.v) if isinstance(cache, RowKVCache) else (None, None)
        if not (isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor) and k.dim() >= 4 and k.is_contiguous()):
            raise IncompatibleError(
                f"the {self.backend_name} attention backend needs a paged or dense KV cache, not {type(cache).__name__}"
            )
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
            prefix = torch.tensor([meta.prefix_len], dtype=torch.int32).to(device)  # [1]
            self._meta, self._meta_tensors = meta, (sizes, prefix)
        return self._meta_tensors
