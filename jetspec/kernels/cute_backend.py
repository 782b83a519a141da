"""`cute` attention backend: paged tree attention written in CuTe DSL (`pip install 'jetspec[cute]'`),
bf16, head dim 64 or 128, GQA, tree mask from the DFS intervals in-kernel, keys read through the
slot map. Correct on an H200 (tests/kernels/test_cute_attention.py, SmolLM2 end to end in
tests/targets/test_smollm2_gpu.py, 2026-11-28) but about 5x slower than `triton` at 16k context
and 256 nodes (bench/RESULTS.md): a reference for CuTe DSL work, not the fast path.

Same inputs as the `triton` backend (capability `kv_rows`: the `paged` and `dense` caches).
Importing this module does not import cutlass; the kernel module loads on the first `attend`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..core.errors import IncompatibleError
from ..core.interfaces import AttentionMeta, KVCache
from .row_inputs import RowKernelInputs


class CuteAttentionOptions(BaseModel):
    """Tiling; every field left None is chosen per call by `cute_tree_attention.choose_tiling`."""

    model_config = ConfigDict(extra="forbid")

    num_warps: Literal[1, 2, 4, 8] | None = Field(None, description="warps per CTA; 16 packed rows each")
    block_n: int | None = Field(None, ge=16, le=128, multiple_of=16, description="keys per inner step")
    num_splits: int | None = Field(None, ge=1, le=256, description="split-K CTAs per tile")
    pipelined: bool = Field(
        True, description="cp.async gathers of K/V overlapped with the MMAs (false: synchronous vectorised loads)"
    )


def unavailable() -> str | None:
    """Why the cute backend cannot run here (one line), or None."""
    import importlib.util

    if importlib.util.find_spec("cutlass") is None or importlib.util.find_spec("cutlass.cute") is None:
        return ("attention 'cute' needs the nvidia-cutlass-dsl package (pip install 'jetspec[cute]'; with "
                "pip --target, also put <site>/nvidia_cutlass_dsl/dsl_packages on PYTHONPATH)")
    if not torch.cuda.is_available():
        return "attention 'cute' needs a CUDA GPU (Hopper, sm_90); none is available"
    major, minor = torch.cuda.get_device_capability()
    if major != 9:
        return f"attention 'cute' needs a Hopper GPU (sm_90); this is {torch.cuda.get_device_name()} (sm_{major}{minor})"
    return None


class CuteAttention(RowKernelInputs):
    """Tree attention of N queries over a paged (or dense) KV cache, in CuTe DSL."""

    backend_name: ClassVar[str] = "cute"
    graph_safe: ClassVar[bool] = False  # never run under CUDA graph capture yet: targets run it eagerly

    def __init__(self, options: CuteAttentionOptions | None = None):
        self.options = options or CuteAttentionOptions()
        super().__init__()

    def attend(self, q: torch.Tensor, cache: KVCache, layer: int, meta: AttentionMeta, scale: float) -> torch.Tensor:
        q = q.contiguous()  # [N, Hq, D]
        k_rows, v_rows, slots = self._kv_rows(cache, layer)
        self._check(q, k_rows, meta, slots)
        from .cute_tree_attention import (
            paged_tree_attention,  # lazy: cutlass only when used
        )

        sizes, prefix = self._forward_tensors(meta, q.device)
        warps, block_n, splits = self.tiling(q, k_rows, meta)
        return paged_tree_attention(q, k_rows, v_rows, slots, sizes, prefix, scale, warps, block_n, splits,
                                    pipelined=self.options.pipelined)

    def tiling(self, q: torch.Tensor, k_rows: torch.Tensor, meta: AttentionMeta) -> tuple[int, int, int]:
        from .cute_tree_attention import choose_tiling

        n, hq, _ = q.shape
        hkv = k_rows.shape[1]
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 132
        warps, block_n, splits = choose_tiling(n, hq // hkv, hkv, meta.prefix_len + n, sms)
        o = self.options
        return o.num_warps or warps, o.block_n or block_n, o.num_splits or splits


    @staticmethod
    def _check(q: torch.Tensor, k_rows: torch.Tensor, meta: AttentionMeta, slots: torch.Tensor) -> None:
        n, hq, d = q.shape
        hkv = k_rows.shape[1]
        if not q.is_cuda:
            raise IncompatibleError("the cute attention backend needs CUDA tensors (a Hopper GPU)")
        if q.dtype != torch.bfloat16 or k_rows.dtype != torch.bfloat16:
            raise IncompatibleError(f"the cute attention backend supports bf16 only; got q {q.dtype}, cache {k_rows.dtype}")
        if d != k_rows.shape[2] or d not in (64, 128):
            raise IncompatibleError(f"the cute attention backend supports head dims 64 and 128; got q {d}, cache {k_rows.shape[2]}")
        if hq % hkv:
            raise IncompatibleError(f"{hq} query heads cannot share {hkv} kv heads evenly")
        if q.device != k_rows.device or slots.dtype != torch.int32:
            raise IncompatibleError(f"queries on {q.device}, KV cache on {k_rows.device}, slot map {slots.dtype}: need one device, int32 slots")
        if meta.num_queries != n or meta.prefix_len + n > slots.numel():
            raise IncompatibleError(
                f"{n} queries after {meta.prefix_len} committed keys do not match the attention meta "
                f"({meta.num_queries} queries) or the cache ({slots.numel()} slots)")
