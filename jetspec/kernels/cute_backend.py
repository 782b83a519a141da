"""`cute` attention backend: paged tree attention written in CuTe DSL (`pip install 'jetspec[cute]'`),
bf16, head dim 64 or 128, GQA, tree mask from the DFS intervals in-kernel, keys read through the
slot map. Under `exact = true` (`position_invariant`), `cute_invariant_attention`'s kernel: a
query's bits depend on its position alone. Otherwise two kernels: warpgroup MMA (wgmma) for trees of >= 64 packed rows per kv head, warp MMA
(mma.sync) for decode and small trees; `cute_tree_attention.choose_tiling` picks one per call,
option `mma` forces one. Checked on an H200 by tests/kernel_tests/test_cute_attention.py and, end to
end with SmolLM2, tests/targets/test_smollm2_gpu.py; timed by bench/kernel_bench.py (bench/RESULTS.md).

Same inputs as the `triton` backend (capability `kv_rows`: the `paged` and `dense` caches).
Importing this module does not import cutlass; the kernel module loads on the first `attend`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..core.errors import IncompatibleError
from ..core.interfaces import AttentionMeta, KVCache
from .row_inputs import RowKernelInputs


SMEM_LIMIT = 227 * 1024  # bytes of shared memory one CTA may use on sm_90


class CuteAttentionOptions(BaseModel):
    """Tiling; every field left None is chosen per call by `cute_tree_attention.choose_tiling`."""

    model_config = ConfigDict(extra="forbid")

    mma: Literal["warp", "warpgroup"] | None = Field(
        None, description="warp: mma.sync kernel; warpgroup: wgmma kernel (num_warps 4 or 8, block_n 64 or 128)"
    )
    num_warps: Literal[1, 2, 4, 8] | None = Field(None, description="warps per CTA; 16 packed rows each")
    block_n: int | None = Field(None, ge=16, le=128, multiple_of=16, description="keys per inner step")
    num_splits: int | None = Field(None, ge=1, le=256, description="split-K CTAs per tile")
    pipelined: bool = Field(
        True, description="warp kernel: cp.async gathers of K/V overlapped with the MMAs (false: synchronous loads)"
    )
    stages: int = Field(3, ge=2, le=3, description="warpgroup kernel: K/V shared-memory buffers")
    specialized: bool = Field(
        True, description="warpgroup kernel: a producer warpgroup gathers K/V while the others compute (false: all do both)"
    )
    pingpong: bool = Field(
        True, description="specialized warpgroup kernel, 8 warps: the two computing warpgroups take turns on the tensor cores"
    )
    split_keys: int = Field(512, ge=64, le=65536, multiple_of=64,
                            description="position-invariant mode (exact = true): keys per split-K range, fixed")

    @model_validator(mode="after")
    def _warpgroup_shapes(self):
        if self.mma == "warpgroup" and self.num_warps not in (None, 4, 8):
            raise ValueError(f"mma 'warpgroup' runs 4 or 8 warps (one or two warpgroups), not {self.num_warps}")
        if self.mma == "warpgroup" and self.block_n not in (None, 64, 128):
            raise ValueError(f"mma 'warpgroup' takes block_n 64 or 128, not {self.block_n}")
        return self


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

    def __init__(self, options: CuteAttentionOptions | None = None, invariant: bool = False):
        self.options = options or CuteAttentionOptions()
        self.invariant = invariant  # the position-invariant kernel (cute_invariant_attention.py)
        super().__init__()
        self._positions32: tuple[AttentionMeta, torch.Tensor] | None = None  # per forward

    def position_invariant(self) -> "CuteAttention":
        return CuteAttention(self.options, invariant=True)

    def attend(self, q: torch.Tensor, cache: KVCache, layer: int, meta: AttentionMeta, scale: float) -> torch.Tensor:
        q = q.contiguous()  # [N, Hq, D]
        k_rows, v_rows, slots = self._kv_rows(cache, layer)
        self._check(q, k_rows, meta, slots)
        if self.invariant:
            return self._attend_invariant(q, k_rows, v_rows, slots, layer, meta, scale)
        from .cute_tree_attention import (
            paged_tree_attention,  # lazy: cutlass only when used
        )

        sizes, prefix = self._forward_tensors(meta, q.device)
        o = self.options
        return paged_tree_attention(q, k_rows, v_rows, slots, sizes, prefix, scale, self.tiling(q, k_rows, meta),
                                    pipelined=o.pipelined, stages=o.stages, specialized=o.specialized,
                                    pingpong=o.pingpong)

    def _attend_invariant(self, q, k_rows, v_rows, slots, layer: int, meta: AttentionMeta, scale: float) -> torch.Tensor:
        """One warp per (token, kv head, split of `split_keys` keys); the tiling options do not apply."""
        from .cute_invariant_attention import ROWS, invariant_tree_attention

        group = q.shape[1] // k_rows.shape[1]
        if group > ROWS:
            raise IncompatibleError(f"the cute position-invariant kernel takes at most {ROWS} query heads per kv head; "
                                    f"this model has {group}: use attention 'triton' or exact = false")
        positions, ancestors, prefix = self._invariant_tensors(meta, layer, q.device)
        if self._positions32 is None or self._positions32[0] is not meta:
            self._positions32 = (meta, positions.to(torch.int32))  # [N]
        positions = self._positions32[1]
        if meta.chain:  # a chain reads no ancestor table: any int32 [N, 1]
            ancestors = positions.view(-1, 1)
        split = self.options.split_keys
        num_splits = -(-(meta.prefix_len + q.shape[0]) // split)  # >= every row's ceil((p + 1) / split)
        return invariant_tree_attention(q, k_rows, v_rows, slots, positions, ancestors, prefix, scale, split,
                                        num_splits, meta.chain)

    def tiling(self, q: torch.Tensor, k_rows: torch.Tensor, meta: AttentionMeta):
        """The heuristic `Tiling` of this call with the options' fixed fields put in. A forced
        `mma` that the heuristic did not pick gets that kernel's defaults where left unset."""
        from .cute_tree_attention import Tiling, choose_tiling

        n, hq, _ = q.shape
        hkv = k_rows.shape[1]
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 132
        auto = choose_tiling(n, hq // hkv, hkv, meta.prefix_len + n, sms)
        o = self.options
        warp_only = o.num_warps in (1, 2) or o.block_n not in (None, 64, 128)  # fixed fields only the warp kernel takes
        mma = o.mma or ("warp" if warp_only else auto.mma)
        if mma != auto.mma:  # the other kernel's own defaults
            auto = Tiling(mma, 8 if mma == "warpgroup" else 4, 128 if mma == "warpgroup" else 64, auto.num_splits)
        tiling = Tiling(mma, o.num_warps or auto.num_warps, o.block_n or auto.block_n, o.num_splits or auto.num_splits)
        if mma == "warp" and tiling.block_n % (4 * tiling.num_warps):
            raise IncompatibleError(
                f"the cute warp kernel with {tiling.num_warps} warps gathers {4 * tiling.num_warps} key rows per pass: "
                f"block_n must be a multiple of that, not {tiling.block_n}")
        if mma == "warpgroup":
            d = q.shape[2]
            smem = 2 * (16 * tiling.num_warps * d + 2 * o.stages * tiling.block_n * d)  # Q + K, V buffers (bf16)
            if smem > SMEM_LIMIT:
                raise IncompatibleError(
                    f"the cute warpgroup kernel with {tiling.num_warps} warps, block_n {tiling.block_n}, {o.stages} stages "
                    f"and head dim {d} needs {smem // 1024} KiB of shared memory; at most {SMEM_LIMIT // 1024} KiB "
                    "(lower stages or block_n)")
        return tiling


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
