"""`dense` KV cache: one contiguous [capacity, Hkv, D] buffer per layer.

Commit is compaction: the kept pending entries are gathered to sit right after the committed
ones, so logical order == physical order and attention reads a plain prefix slice. The gather can
be staged on the device from a device index (`stage_commit`, `CommitsOnDevice`) before the host
knows the path; `commit` then only moves the end.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import BaseModel, ConfigDict

from ..core import on_device
from ..core.errors import CapacityError, InputError
from ..core.interfaces import TargetInfo
from ..core.memory import check_fits


class DenseCacheOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DenseKVCache:
    def __init__(self, info: TargetInfo, capacity: int):
        self.capacity = capacity
        shape = (info.num_layers, capacity, info.kv_heads_here, info.head_dim)
        elem = torch.empty((), dtype=info.dtype).element_size()
        check_fits(2 * elem * shape[0] * shape[1] * shape[2] * shape[3], info.device, f"a KV cache of {capacity} tokens")
        self.k = torch.zeros(shape, dtype=info.dtype, device=info.device)  # [L, C, Hkv, D]
        self.v = torch.zeros(shape, dtype=info.dtype, device=info.device)  # [L, C, Hkv, D]
        self._committed = 0
        self._pending = 0
        self._staged = 0  # entries moved into place by stage_commit since begin
        # rows the pending tokens are written to, in a persistent buffer so that a CUDA graph
        # captured over `write` stays valid as `committed` moves (set eagerly by `begin`)
        self._all_rows = torch.arange(capacity, device=info.device)  # [C] int64
        self._write_rows = torch.zeros(capacity, dtype=torch.int64, device=info.device)  # [C]

    graph_safe = True  # `GraphSafe`
    slot_table = None  # `RowKVCache`: rows are in logical order

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def pending(self) -> int:
        return self._pending

    def reset(self) -> None:
        self._committed = self._pending = self._staged = 0

    def begin(self, n: int) -> None:
        if self._committed + n > self.capacity:
            raise CapacityError(
                f"KV cache full: {self._committed} committed + {n} new tokens exceed its capacity of {self.capacity}"
            )
        self._pending, self._staged = n, 0
        self._write_rows[:n].copy_(self._all_rows[self._committed : self._committed + n])

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        rows = self._write_rows[: self._pending]  # [n]
        self.k[layer].index_copy_(0, rows, k)  # k: [n, Hkv, D]
        self.v[layer].index_copy_(0, rows, v)

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._committed + self._pending
        return self.k[layer, :end], self.v[layer, :end]

    def stage_commit(self, keep: torch.Tensor) -> None:
        """`CommitsOnDevice`: rows t + j <- rows t + keep[j], j < M (keep [M] int64 on the device;
        the right side is gathered first, so overlap is safe): one launch on CUDA (`triton_rows.py`)."""
        t, m = self._committed, keep.numel()
        if on_device.fused(keep):
            from .triton_rows import move_rows

            move_rows(self.k, self.v, keep, t)
        else:
            src = keep + t  # [M]
            self.k[:, t : t + m] = self.k[:, src]
            self.v[:, t : t + m] = self.v[:, src]
        self._staged = m

    def commit(self, keep: Sequence[int]) -> None:
        t = self._committed
        n = len(keep)
        if self._staged:  # stage_commit moved them already
            if n > self._staged:
                raise InputError(f"commit keeps {n} entries; stage_commit staged only {self._staged}")
        elif list(keep) != list(range(n)):  # compaction: gather kept entries into place
            src = torch.as_tensor(list(keep), device=self.k.device) + t  # [n]
            self.k[:, t : t + n] = self.k[:, src]
            self.v[:, t : t + n] = self.v[:, src]
        self._committed = t + n
        self._pending = self._staged = 0
