"""Paged tree attention in CuTe DSL (nvidia-cutlass-dsl): the warp-MMA kernel, and the launcher of
the `cute` backend (which picks this kernel or the warpgroup-MMA one, `cute_wgmma_attention`).

Compiled for sm_90a on any machine, run and checked on an H200 (tests/kernel_tests/test_cute_attention.py).
Same contract as `triton_tree_attention.paged_tree_attention`:

    q [N, Hq, D] bf16; k_rows, v_rows [R, Hkv, D] bf16 (a layer's pool, rows flattened);
    slots [>= T + N] int32 pool row of each logical key; subtree_sizes [N] int32;
    prefix_len [1] int32 (T, read on the device) -> out [N, Hq, D]

Query token i sees key t iff t < T, or t = T + j with j <= i < j + subtree_sizes[j].

One CTA = one tile of BLOCK_M packed rows (row r = token r // G, head kvh * G + r % G, so the
G query heads of a kv head share every K/V tile) x one kv head x one split of the key blocks.
Per key block of BLOCK_N keys: the slot map and subtree sizes of the block go to shared memory,
K and V rows are gathered through the slot map into swizzled shared memory (with `pipelined=False`
by synchronous vectorised loads: `cute.autovec_copy`, 16-byte row chunks), S = Q K^T and O += P V
run on the tensor cores with warp-level MMA (mma.sync m16n8k16 bf16 -> fp32, ldmatrix from shared memory),
the interval mask is evaluated per element from the shared-memory sizes, and the online softmax
keeps (max, sum, acc) in fp32 registers.

`pipelined=True` (the backend's default; option `pipelined`) gathers with cp.async instead,
FA2-style with one K and one V buffer: V(b) lands while S = Q K(b)^T runs and K(b+1) while the
softmax and O += P V(b) run (commit groups K(b), V(b), K(b+1), ...; three barriers a block, as
before). Measured on the H200 on 2026-12-01 (bench/kernel_bench.py, bench/RESULTS.md): faster than
the synchronous gathers at all nine benchmark shapes at the same tiling (1.07x at 1024 keys with
64 nodes to 2.41x at 16384 keys with one node; 1.83x at 16384 keys with 256); 8 warps a CTA were slower than
4 at every shape.

This kernel uses neither wgmma nor TMA; `choose_tiling` sends trees of >= 64 packed rows per kv
head to the warpgroup-MMA kernel and keeps this one for decode and small trees. Each CTA writes an
fp32 partial output and its log2-sum-exp; `cute_split_merge` merges splits in one launch.

Importing this module imports cutlass; `cute_backend` imports it lazily.
"""

from __future__ import annotations

from typing import NamedTuple

import cutlass
import cutlass.cute as cute  # noqa: PLR0402 (the DSL idiom)
from cutlass.cute.nvgpu import cpasync, warp

from .cute_common import (
    LOG2E,
    SmemAllocator,
    global_views,
    key_blocks,
    load_q_tile,
    mn_view,
    online_softmax,
    ptr,
    store_partial,
)
from .cute_split_merge import SplitMergeKernel
from .cute_wgmma_attention import WgmmaTreeAttentionKernel


class TreeAttentionKernel:
    """One compiled variant per (head_dim, group, kv_heads, warps, block_n, pipelined)."""

    def __init__(self, head_dim: int, group: int, kv_heads: int, num_warps: int = 4, block_n: int = 64,
                 pipelined: bool = True):  # fmt: skip
        assert head_dim in (64, 128), head_dim
        # one copy pass covers 32 * warps / 8 rows (16-byte chunks of 64-column slabs): a block must hold whole passes
        assert block_n % 16 == 0 and block_n % (4 * num_warps) == 0, (block_n, num_warps)
        self.pipelined = pipelined  # cp.async gathers overlapped with the MMAs (else synchronous loads)
        self.d = head_dim
        self.g = group
        self.hkv = kv_heads
        self.hq = group * kv_heads
        self.warps = num_warps
        self.threads = 32 * num_warps
        self.bm = 16 * num_warps  # each warp owns 16 rows of the tile
        self.bn = block_n
        self.dtype = cutlass.BFloat16

    # ------------------------------------------------------------------ host side (traced once)
    @cute.jit
    def __call__(
        self,
        p_q: cute.Pointer, p_k: cute.Pointer, p_v: cute.Pointer, p_slots: cute.Pointer,
        p_sizes: cute.Pointer, p_prefix: cute.Pointer, p_o: cute.Pointer, p_lse: cute.Pointer,
        n_queries: cutlass.Int32, n_rows: cutlass.Int32, n_slots: cutlass.Int32, num_splits: cutlass.Int32,
        scale_log2: cutlass.Float32, stream,
    ):
        d, hq, hkv = self.d, self.hq, self.hkv
        mQ, mK, mV, mSlots, mSizes, mPrefix, mO, mL = global_views(
            p_q, p_k, p_v, p_slots, p_sizes, p_prefix, p_o, p_lse, n_queries, n_rows, n_slots, num_splits, hq, hkv, d)

        # swizzled shared memory (64-element rows of 128 bytes, ldmatrix-friendly)
        k_block = 64 if d % 64 == 0 else 32
        atom = cute.make_composed_layout(
            cute.make_swizzle(3 if k_block == 64 else 2, 3, 3), 0,
            cute.make_layout((8, k_block), stride=(k_block, 1)))
        sQ_layout = cute.tile_to_shape(atom, (self.bm, d), (0, 1))
        sKV_layout = cute.tile_to_shape(atom, (self.bn, d), (0, 1))

        @cute.struct
        class SharedStorage:
            sQ: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024]
            sK: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sKV_layout)], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sKV_layout)], 1024]
            sSlot: cute.struct.Align[cute.struct.MemRange[cutlass.Int32, self.bn], 16]
            sSize: cute.struct.Align[cute.struct.MemRange[cutlass.Int32, self.bn], 16]

        # thread layout of the gmem -> smem gathers: 8 elements (16 bytes) per thread per step
        vec = 8
        cols = k_block // vec
        copy_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), self.dtype, num_bits_per_copy=128)
        cp_atom = cute.make_copy_atom(cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), self.dtype,
                                      num_bits_per_copy=128)  # 16-byte cp.async.cg, bypassing L1
        gather = cute.make_tiled_copy_tv(
            copy_atom,
            cute.make_layout((self.threads // cols, cols), stride=(cols, 1)),
            cute.make_layout((1, vec)))
        tiled_mma = cute.make_tiled_mma(
            warp.MmaF16BF16Op(self.dtype, cutlass.Float32, (16, 8, 16)),
            (self.warps, 1, 1),
            permutation_mnk=(self.warps * 16, 16, 16))

        tiles = cute.ceil_div(n_queries * self.g, self.bm)
        self.kernel(mQ, mK, mV, mSlots, mSizes, mPrefix, mO, mL, scale_log2,
                    sQ_layout, sKV_layout, gather, cp_atom, tiled_mma, SharedStorage).launch(
            grid=(tiles, hkv, num_splits), block=[self.threads, 1, 1], stream=stream)

    # ------------------------------------------------------------------ device side
    @cute.kernel
    def kernel(
        self, mQ: cute.Tensor, mK: cute.Tensor, mV: cute.Tensor, mSlots: cute.Tensor, mSizes: cute.Tensor,
        mPrefix: cute.Tensor, mO: cute.Tensor, mL: cute.Tensor, scale_log2: cutlass.Float32,
        sQ_layout: cute.ComposedLayout, sKV_layout: cute.ComposedLayout, gather: cute.TiledCopy,
        cp_atom: cute.CopyAtom, tiled_mma: cute.TiledMma, SharedStorage: cutlass.Constexpr,
    ):
        bm, bn, d, g = self.bm, self.bn, self.d, self.g
        tidx, _, _ = cute.arch.thread_idx()
        tile, kvh, split = cute.arch.block_idx()
        _, _, num_splits = cute.arch.grid_dim()
        n_queries = mQ.shape[0]

        prefix_len, kv_end, b_lo, b_hi = key_blocks(mPrefix, n_queries, tile, split, num_splits, bm, g, bn)

        smem = SmemAllocator()
        storage = smem.allocate(SharedStorage)
        sQ = storage.sQ.get_tensor(sQ_layout)
        sK = storage.sK.get_tensor(sKV_layout)
        sV = storage.sV.get_tensor(sKV_layout)
        sSlot = storage.sSlot.get_tensor(cute.make_layout((bn,)))
        sSize = storage.sSize.get_tensor(cute.make_layout((bn,)))
        sVt = cute.composition(sV, cute.make_layout((d, bn), stride=(bn, 1)))  # V^T view (D, BLOCK_N)

        load_q_tile(mQ, sQ, gather, tidx, tile, kvh, bm, g)
        thr_gather = gather.get_slice(tidx)
        tKsK = thr_gather.partition_D(sK)
        tVsV = thr_gather.partition_D(sV)
        tKcK = thr_gather.partition_D(cute.make_identity_tensor((bn, d)))

        (thr_mma, acc_O, ld_q, ld_k, ld_v, tSsQ, tSrQ, tSrQ_v, tSsK, tSrK, tSrK_v, tOsVt, tOrVt, tOrVt_v,
         tScS_mn, row_max, row_sum, acc_O_mn, acc_S_shape) = self._mma_state(tiled_mma, sQ, sK, sVt, tidx)

        if cutlass.const_expr(self.pipelined):
            # cp.async, FA2-style: V(b) lands while S = Q K(b)^T runs, K(b+1) while the softmax and
            # O += P V(b) run; one buffer each, commit groups in issue order K(b), V(b), K(b+1), ...
            if b_lo < b_hi:
                self._gather_async(mK, mSlots, tKsK, tKcK, b_lo * bn, kvh, kv_end, cp_atom)
            for b in cutlass.range(b_lo, b_hi, 1):
                start = b * bn
                self._block_sizes(mSizes, sSize, tidx, start, prefix_len, kv_end)
                cute.arch.cp_async_wait_group(0)  # K(b)
                cute.arch.barrier()  # K(b) and the sizes visible; every thread done with V(b - 1)
                self._gather_async(mV, mSlots, tVsV, tKcK, start, kvh, kv_end, cp_atom)
                acc_S = cute.make_rmem_tensor(acc_S_shape, cutlass.Float32)
                self._scores(tiled_mma, acc_S, ld_q, ld_k, tSsQ, tSrQ, tSrQ_v, tSsK, tSrK, tSrK_v)
                cute.arch.barrier()  # every thread done reading K(b)
                if b + 1 < b_hi:
                    self._gather_async(mK, mSlots, tKsK, tKcK, start + bn, kvh, kv_end, cp_atom)
                self._mask_softmax(acc_S, acc_O_mn, row_max, row_sum, tScS_mn, sSize, tile, start, prefix_len, kv_end, scale_log2)
                if b + 1 < b_hi:
                    cute.arch.cp_async_wait_group(1)  # V(b); K(b + 1) may still fly
                else:
                    cute.arch.cp_async_wait_group(0)
                cute.arch.barrier()  # V(b) visible
                self._accumulate(tiled_mma, acc_S, acc_O, ld_v, tOsVt, tOrVt, tOrVt_v)
        else:
            for b in cutlass.range(b_lo, b_hi, 1):
                start = b * bn
                cute.arch.barrier()  # every thread is done with the previous block's smem
                self._block_sizes(mSizes, sSize, tidx, start, prefix_len, kv_end)
                # slot map of this block's keys, to shared memory: one load per key, not per chunk
                for s in cutlass.range_constexpr((bn + self.threads - 1) // self.threads):
                    c = tidx + s * self.threads
                    if c < bn:
                        key = start + c
                        slot = -1
                        if key < kv_end:
                            slot = mSlots[key]
                        sSlot[c] = slot
                cute.arch.barrier()
                # gather K and V rows of the block through the slot map; keys past kv_end are zero
                for i in cutlass.range_constexpr(cute.size(tKsK, mode=[1])):
                    for jj in cutlass.range_constexpr(cute.size(tKsK, mode=[2])):
                        row, col = tKcK[0, i, jj]
                        slot = sSlot[row]
                        if slot >= 0:
                            cute.autovec_copy(cute.local_tile(mK[slot, kvh, None], (8,), (col // 8,)), tKsK[None, i, jj])
                            cute.autovec_copy(cute.local_tile(mV[slot, kvh, None], (8,), (col // 8,)), tVsV[None, i, jj])
                        else:
                            tKsK[None, i, jj].fill(0)
                            tVsV[None, i, jj].fill(0)
                cute.arch.barrier()
                acc_S = cute.make_rmem_tensor(acc_S_shape, cutlass.Float32)
                self._scores(tiled_mma, acc_S, ld_q, ld_k, tSsQ, tSrQ, tSrQ_v, tSsK, tSrK, tSrK_v)
                self._mask_softmax(acc_S, acc_O_mn, row_max, row_sum, tScS_mn, sSize, tile, start, prefix_len, kv_end, scale_log2)
                self._accumulate(tiled_mma, acc_S, acc_O, ld_v, tOsVt, tOrVt, tOrVt_v)

        tOcO_mn = mn_view(thr_mma.partition_C(cute.make_identity_tensor((bm, d))))
        store_partial(acc_O_mn, tOcO_mn, row_max, row_sum, mO, mL, tile, kvh, split, bm, g)

    # ------------------------------------------------------------------ device helpers (inlined)
    def _mma_state(self, tiled_mma: cute.TiledMma, sQ: cute.Tensor, sK: cute.Tensor, sVt: cute.Tensor, tidx):
        """This thread's MMA partitions (smem -> registers by ldmatrix), the O accumulator [BM, D]
        (zero) and the online-softmax state (m = -inf, l = 0) of its rows. Plain Python, traced
        inline into the calling kernel."""
        bm, bn, d = self.bm, self.bn, self.d
        thr_mma = tiled_mma.get_slice(tidx)
        tSrQ = thr_mma.make_fragment_A(thr_mma.partition_A(sQ))
        tSrK = thr_mma.make_fragment_B(thr_mma.partition_B(sK))
        tOrVt = thr_mma.make_fragment_B(thr_mma.partition_B(sVt))
        acc_O = cute.make_rmem_tensor(thr_mma.partition_shape_C((bm, d)), cutlass.Float32)
        acc_O.fill(0.0)

        ld_q = cute.make_tiled_copy_A(cute.make_copy_atom(warp.LdMatrix8x8x16bOp(False, 4), self.dtype), tiled_mma)
        ld_k = cute.make_tiled_copy_B(cute.make_copy_atom(warp.LdMatrix8x8x16bOp(False, 4), self.dtype), tiled_mma)
        ld_v = cute.make_tiled_copy_B(cute.make_copy_atom(warp.LdMatrix8x8x16bOp(True, 4), self.dtype), tiled_mma)
        thr_ld_q, thr_ld_k, thr_ld_v = ld_q.get_slice(tidx), ld_k.get_slice(tidx), ld_v.get_slice(tidx)
        tSsQ, tSrQ_v = thr_ld_q.partition_S(sQ), thr_ld_q.retile(tSrQ)
        tSsK, tSrK_v = thr_ld_k.partition_S(sK), thr_ld_k.retile(tSrK)
        tOsVt, tOrVt_v = thr_ld_v.partition_S(sVt), thr_ld_v.retile(tOrVt)

        # (row, col) of every accumulator element of S, as an (M, N) view
        tScS_mn = mn_view(thr_mma.partition_C(cute.make_identity_tensor((bm, bn))))
        row_max = cute.make_rmem_tensor((cute.size(tScS_mn, mode=[0]),), cutlass.Float32)
        row_sum = cute.make_rmem_tensor((cute.size(tScS_mn, mode=[0]),), cutlass.Float32)
        row_max.fill(-cutlass.Float32.inf)
        row_sum.fill(0.0)
        return (thr_mma, acc_O, ld_q, ld_k, ld_v, tSsQ, tSrQ, tSrQ_v, tSsK, tSrK, tSrK_v, tOsVt, tOrVt, tOrVt_v,
                tScS_mn, row_max, row_sum, mn_view(acc_O), thr_mma.partition_shape_C((bm, bn)))

    @cute.jit
    def _block_sizes(self, mSizes: cute.Tensor, sSize: cute.Tensor, tidx: cutlass.Int32, start: cutlass.Int32,
                     prefix_len: cutlass.Int32, kv_end: cutlass.Int32):
        """Subtree sizes of the block's keys (0 for committed keys and keys past kv_end) to smem."""
        for s in cutlass.range_constexpr((self.bn + self.threads - 1) // self.threads):
            c = tidx + s * self.threads
            if c < self.bn:
                key = start + c
                j = key - prefix_len
                size = 0
                if key < kv_end and j >= 0:
                    size = mSizes[j]
                sSize[c] = size

    @cute.jit
    def _gather_async(self, mX: cute.Tensor, mSlots: cute.Tensor, tXsX: cute.Tensor, tXcX: cute.Tensor,
                      start: cutlass.Int32, kvh: cutlass.Int32, kv_end: cutlass.Int32, cp_atom: cute.CopyAtom):
        """Issue this thread's 16-byte cp.async gathers of the block's K or V rows through the slot
        map (rows past kv_end are zero-filled with plain stores), as one commit group."""
        for i in cutlass.range_constexpr(cute.size(tXsX, mode=[1])):
            row, _ = tXcX[0, i, 0]
            key = start + row
            if key < kv_end:
                slot = mSlots[key]
                for jj in cutlass.range_constexpr(cute.size(tXsX, mode=[2])):
                    col = tXcX[0, i, jj][1]
                    cute.copy(cp_atom, cute.local_tile(mX[slot, kvh, None], (8,), (col // 8,)), tXsX[None, i, jj])
            else:
                for jj in cutlass.range_constexpr(cute.size(tXsX, mode=[2])):
                    tXsX[None, i, jj].fill(0)
        cute.arch.cp_async_commit_group()

    @cute.jit
    def _scores(self, tiled_mma: cute.TiledMma, acc_S: cute.Tensor, ld_q: cute.TiledCopy, ld_k: cute.TiledCopy,
                tSsQ: cute.Tensor, tSrQ: cute.Tensor, tSrQ_v: cute.Tensor, tSsK: cute.Tensor, tSrK: cute.Tensor,
                tSrK_v: cute.Tensor):
        """acc_S = S = Q K^T of this block in fp32 registers (ldmatrix from smem, mma.sync m16n8k16)."""
        acc_S.fill(0.0)
        for k in cutlass.range_constexpr(cute.size(tSsQ.shape[2])):
            cute.copy(ld_q, tSsQ[None, None, k], tSrQ_v[None, None, k])
            cute.copy(ld_k, tSsK[None, None, k], tSrK_v[None, None, k])
            cute.gemm(tiled_mma, acc_S, tSrQ[None, None, k], tSrK[None, None, k], acc_S)

    @cute.jit
    def _mask_softmax(self, acc_S: cute.Tensor, acc_O_mn: cute.Tensor, row_max: cute.Tensor, row_sum: cute.Tensor,
                      tScS_mn: cute.Tensor, sSize: cute.Tensor, tile: cutlass.Int32, start: cutlass.Int32,
                      prefix_len: cutlass.Int32, kv_end: cutlass.Int32, scale_log2: cutlass.Float32):
        """Interval mask (visible: t < kv_end and (t < T, or t = T + j with j <= i < j + size[j])),
        scale, then the online softmax: acc_S becomes P, (row_max, row_sum) and acc_O are updated."""
        acc_S_mn = mn_view(acc_S)
        for r in cutlass.range_constexpr(cute.size(row_max)):
            row_in_tile = tScS_mn[r, 0][0]
            tok = (tile * self.bm + row_in_tile) // self.g
            for c in cutlass.range_constexpr(cute.size(tScS_mn, mode=[1])):
                col = tScS_mn[0, c][1]
                key = start + col
                j = key - prefix_len
                size = sSize[col]
                visible = key < kv_end and (key < prefix_len or (j <= tok and tok < j + size))  # noqa: PLR1716 (DSL: no chained compare)
                acc_S_mn[r, c] = acc_S_mn[r, c] * scale_log2 if visible else -cutlass.Float32.inf
        online_softmax(acc_S_mn, acc_O_mn, row_max, row_sum)

    @cute.jit
    def _accumulate(self, tiled_mma: cute.TiledMma, acc_S: cute.Tensor, acc_O: cute.Tensor, ld_v: cute.TiledCopy,
                    tOsVt: cute.Tensor, tOrVt: cute.Tensor, tOrVt_v: cute.Tensor):
        """O += P V: P rounded to bf16 straight from the S accumulator into MMA A fragments."""
        rP = cute.make_fragment_like(acc_S, self.dtype)
        rP.store(acc_S.load().to(self.dtype))
        div = cute.logical_divide(rP.layout, (None, None, 2))
        tOrP = cute.make_tensor(rP.iterator, cute.make_layout(
            ((div.shape[0], div.shape[2][0]), div.shape[1], div.shape[2][1]),
            stride=((div.stride[0], div.stride[2][0]), div.stride[1], div.stride[2][1])))
        for k in cutlass.range_constexpr(cute.size(tOrP.shape[2])):
            cute.copy(ld_v, tOsVt[None, None, k], tOrVt_v[None, None, k])
            cute.gemm(tiled_mma, acc_O, tOrP[None, None, k], tOrVt[None, None, k], acc_O)


# ---------------------------------------------------------------------------- compile + launch
ARCH = "sm_90a"
_COMPILED: dict[tuple, object] = {}


class Tiling(NamedTuple):
    """How one call runs. mma: "warp" (TreeAttentionKernel, mma.sync, 16 rows per warp) or
    "warpgroup" (WgmmaTreeAttentionKernel, wgmma, 64 rows per warpgroup: num_warps 4 or 8)."""

    mma: str
    num_warps: int
    block_n: int
    num_splits: int


def _fake_args():
    from cutlass.runtime import make_fake_stream

    bf16, i32, f32 = cutlass.BFloat16, cutlass.Int32, cutlass.Float32
    return [ptr(bf16, 0), ptr(bf16, 0), ptr(bf16, 0), ptr(i32, 0), ptr(i32, 0), ptr(i32, 0),
            ptr(f32, 0), ptr(f32, 0), i32(1), i32(1), i32(1), i32(1), f32(1.0), make_fake_stream()]


def compile_kernel(head_dim: int, group: int, kv_heads: int, num_warps: int, block_n: int,
                   arch: str = ARCH, options: str = "", pipelined: bool = True, mma: str = "warp", stages: int = 3,
                   specialized: bool = True, pingpong: bool = True):  # fmt: skip
    """Compile one variant for `arch` (no GPU needed: fake addresses, a fake stream). `pipelined`
    applies to the warp-MMA kernel; `stages` (K/V buffers) and `specialized` (a producer
    warpgroup besides the num_warps // 4 computing ones) and `pingpong` (two computing warpgroups
    take turns on the tensor cores) to the warpgroup one."""
    key = (head_dim, group, kv_heads, num_warps, block_n, arch, options, mma,
           pipelined if mma == "warp" else (stages, specialized, pingpong))
    if key not in _COMPILED:
        if mma == "warpgroup":
            kernel = WgmmaTreeAttentionKernel(head_dim, group, kv_heads, num_warps // 4, block_n, stages, specialized,
                                              pingpong)
        else:
            kernel = TreeAttentionKernel(head_dim, group, kv_heads, num_warps, block_n, pipelined)
        _COMPILED[key] = cute.compile(kernel, *_fake_args(), options=f"--gpu-arch {arch} {options}".strip())
    return _COMPILED[key]


def compile_merge(head_dim: int, arch: str = ARCH, options: str = ""):
    key = ("merge", head_dim, arch, options)
    if key not in _COMPILED:
        from cutlass.runtime import make_fake_stream

        f32, i32 = cutlass.Float32, cutlass.Int32
        args = [ptr(f32, 0), ptr(f32, 0), ptr(cutlass.BFloat16, 0), i32(1), i32(1), make_fake_stream()]
        _COMPILED[key] = cute.compile(SplitMergeKernel(head_dim), *args, options=f"--gpu-arch {arch} {options}".strip())
    return _COMPILED[key]


def choose_tiling(n: int, group: int, kv_heads: int, keys: int, num_sms: int) -> Tiling:
    """Trees of >= 64 packed rows per kv head: warpgroup MMA, two warpgroups (128 rows) a CTA when
    there are >= 128 rows, 128 keys a block. Fewer rows (decode, small trees): the warp-MMA kernel,
    16 packed rows per warp, up to 4 warps, 64 keys a block. Split-K until the (tile, kv head) CTAs
    fill the SMs about once (decode has only Hkv CTAs otherwise); the warp kernel also takes at
    least one split per 4096 keys (up to 4): there, more CTAs per SM hide its gathers (H200,
    2026-12-01, 256 nodes: 16384 keys 391 us with 4 splits vs 556 us with 1)."""
    rows = n * group
    if rows >= 64:
        warps, block_n = (8 if rows >= 128 else 4), 128
        ctas = -(-rows // (16 * warps)) * kv_heads
        splits = max(1, min(num_sms // ctas, -(-keys // block_n), 64))
        return Tiling("warpgroup", warps, block_n, splits)
    warps = 1 if rows <= 16 else 2 if rows <= 32 else 4
    block_n = 64
    ctas = -(-rows // (16 * warps)) * kv_heads
    fill = num_sms // ctas
    splits = max(1, min(max(fill, min(keys // 4096, 4)), -(-keys // block_n), 64))
    return Tiling("warp", warps, block_n, splits)


def paged_tree_attention(q, k_rows, v_rows, slots, subtree_sizes, prefix_len, scale: float, tiling: Tiling,
                         pipelined: bool = True, stages: int = 3, specialized: bool = True,
                         pingpong: bool = True):  # fmt: skip
    """See the module docstring. Launches on torch's current stream; returns [N, Hq, D] in q's dtype.
    Every CTA writes an fp32 partial; one split is converted, several merged by SplitMergeKernel."""
    import torch
    from cuda.bindings import driver as cuda

    n, hq, d = q.shape
    hkv = k_rows.shape[1]
    splits = tiling.num_splits
    compiled = compile_kernel(d, hq // hkv, hkv, tiling.num_warps, tiling.block_n, pipelined=pipelined,
                              mma=tiling.mma, stages=stages, specialized=specialized, pingpong=pingpong)
    o_part = torch.empty(splits, n, hq, d, dtype=torch.float32, device=q.device)  # [S, N, Hq, D]
    lse = torch.empty(splits, n, hq, dtype=torch.float32, device=q.device)  # [S, N, Hq]
    bf16, i32, f32 = cutlass.BFloat16, cutlass.Int32, cutlass.Float32
    stream = cuda.CUstream(torch.cuda.current_stream(q.device).cuda_stream)
    compiled(ptr(bf16, q.data_ptr()), ptr(bf16, k_rows.data_ptr()), ptr(bf16, v_rows.data_ptr()),
             ptr(i32, slots.data_ptr()), ptr(i32, subtree_sizes.data_ptr()), ptr(i32, prefix_len.data_ptr()),
             ptr(f32, o_part.data_ptr()), ptr(f32, lse.data_ptr()),
             i32(n), i32(k_rows.shape[0]), i32(slots.numel()), i32(splits), f32(scale * LOG2E), stream)
    if splits == 1:
        return o_part[0].to(q.dtype)
    out = torch.empty(n, hq, d, dtype=torch.bfloat16, device=q.device)  # [N, Hq, D]
    compile_merge(d)(ptr(f32, o_part.data_ptr()), ptr(f32, lse.data_ptr()), ptr(bf16, out.data_ptr()),
                     i32(n * hq), i32(splits), stream)
    return out


def flops(n: int, num_heads: int, keys: int, head_dim: int) -> int:
    return 4 * n * num_heads * keys * head_dim


__all__ = ["Tiling", "TreeAttentionKernel", "choose_tiling", "compile_kernel", "compile_merge", "flops",
           "paged_tree_attention"]
