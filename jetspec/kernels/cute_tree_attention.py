"""Paged tree attention in CuTe DSL (nvidia-cutlass-dsl), the kernel behind the `cute` backend.

Compiled for sm_90a on any machine, run and checked on an H200 (tests/kernels/test_cute_attention.py).
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

What is NOT used (yet): warpgroup MMA (wgmma), TMA, multi-stage buffers, warp specialisation.
Each CTA writes an fp32 partial output and its log2-sum-exp; the caller merges splits (a few
torch ops, graph-capturable).

Importing this module imports cutlass; `cute_backend` imports it lazily.
"""

from __future__ import annotations

from collections.abc import Callable

import cutlass
import cutlass.cute as cute  # noqa: PLR0402 (the DSL idiom)
from cutlass.cute.nvgpu import cpasync, warp
from cutlass.cute.runtime import make_ptr

LOG2E = 1.4426950408889634

try:  # cutlass >= 4.5 moved it; the old name still works there (deprecated)
    from cutlass.memory import SmemAllocator as _SmemAllocator
except ImportError:  # pragma: no cover
    from cutlass.utils import SmemAllocator as _SmemAllocator


class TreeAttentionKernel:
    """One compiled variant per (head_dim, group, kv_heads, warps, block_n, pipelined)."""

    def __init__(self, head_dim: int, group: int, kv_heads: int, num_warps: int = 4, block_n: int = 64,
                 pipelined: bool = True):  # fmt: skip
        assert head_dim in (64, 128), head_dim
        assert block_n % 16 == 0
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
        mQ = cute.make_tensor(p_q, cute.make_layout((n_queries, hq, d), stride=(hq * d, d, 1)))
        mK = cute.make_tensor(p_k, cute.make_layout((n_rows, hkv, d), stride=(hkv * d, d, 1)))
        mV = cute.make_tensor(p_v, cute.make_layout((n_rows, hkv, d), stride=(hkv * d, d, 1)))
        mSlots = cute.make_tensor(p_slots, cute.make_layout((n_slots,)))
        mSizes = cute.make_tensor(p_sizes, cute.make_layout((n_queries,)))
        mPrefix = cute.make_tensor(p_prefix, cute.make_layout((1,)))
        mO = cute.make_tensor(p_o, cute.make_layout((num_splits, n_queries, hq, d),
                                                    stride=(n_queries * hq * d, hq * d, d, 1)))
        mL = cute.make_tensor(p_lse, cute.make_layout((num_splits, n_queries, hq),
                                                      stride=(n_queries * hq, hq, 1)))

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

        prefix_len = mPrefix[0]
        last_tok = cutlass.min((tile * bm + bm - 1) // g, n_queries - 1)
        kv_end = prefix_len + last_tok + 1  # keys at or past this are invisible to the whole tile
        n_blocks = (kv_end + bn - 1) // bn
        per_split = (n_blocks + num_splits - 1) // num_splits
        b_lo = split * per_split
        b_hi = cutlass.min(b_lo + per_split, n_blocks)

        smem = _SmemAllocator()
        storage = smem.allocate(SharedStorage)
        sQ = storage.sQ.get_tensor(sQ_layout)
        sK = storage.sK.get_tensor(sKV_layout)
        sV = storage.sV.get_tensor(sKV_layout)
        sSlot = storage.sSlot.get_tensor(cute.make_layout((bn,)))
        sSize = storage.sSize.get_tensor(cute.make_layout((bn,)))
        sVt = cute.composition(sV, cute.make_layout((d, bn), stride=(bn, 1)))  # V^T view (D, BLOCK_N)

        # ---- Q tile: packed rows gathered from [N, Hq, D]; rows past the last token are zero
        thr_gather = gather.get_slice(tidx)
        tQsQ = thr_gather.partition_D(sQ)
        tQcQ = thr_gather.partition_D(cute.make_identity_tensor((bm, d)))
        for i in cutlass.range_constexpr(cute.size(tQsQ, mode=[1])):
            for j in cutlass.range_constexpr(cute.size(tQsQ, mode=[2])):
                row, col = tQcQ[0, i, j]
                r = tile * bm + row
                tok = r // g
                if tok < n_queries:
                    src = cute.local_tile(mQ[tok, kvh * g + r % g, None], (8,), (col // 8,))
                    cute.autovec_copy(src, tQsQ[None, i, j])
                else:
                    tQsQ[None, i, j].fill(0)

        tKsK = thr_gather.partition_D(sK)
        tVsV = thr_gather.partition_D(sV)
        tKcK = thr_gather.partition_D(cute.make_identity_tensor((bn, d)))

        # ---- MMA partitions (smem -> registers by ldmatrix)
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
        tScS_mn = _mn_view(thr_mma.partition_C(cute.make_identity_tensor((bm, bn))))
        row_max = cute.make_rmem_tensor((cute.size(tScS_mn, mode=[0]),), cutlass.Float32)
        row_sum = cute.make_rmem_tensor((cute.size(tScS_mn, mode=[0]),), cutlass.Float32)
        row_max.fill(-cutlass.Float32.inf)
        row_sum.fill(0.0)
        acc_O_mn = _mn_view(acc_O)
        acc_S_shape = thr_mma.partition_shape_C((bm, bn))

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

        # ---- epilogue: partial output acc / l and lse = max + log2(l), fp32, straight from registers
        tOcO_mn = _mn_view(thr_mma.partition_C(cute.make_identity_tensor((bm, d))))
        for r in cutlass.range_constexpr(cute.size(row_sum)):
            total = _quad_sum(row_sum[r])
            inv = 1.0 if total == 0.0 else 1.0 / total
            row_in_tile = tOcO_mn[r, 0][0]
            rr = tile * bm + row_in_tile
            tok = rr // g
            head = kvh * g + rr % g
            if tok < n_queries:
                for c in cutlass.range_constexpr(cute.size(tOcO_mn, mode=[1])):
                    mO[split, tok, head, tOcO_mn[0, c][1]] = acc_O_mn[r, c] * inv
                lse = -cutlass.Float32.inf if total == 0.0 else row_max[r] + cute.math.log2(total, fastmath=False)
                mL[split, tok, head] = lse


    # ------------------------------------------------------------------ device helpers (inlined)
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
        """Interval mask and online softmax in the log2 domain: acc_S becomes P (unnormalised),
        (row_max, row_sum) are updated and acc_O is rescaled by exp2(old max - new max)."""
        acc_S_mn = _mn_view(acc_S)
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
            s_row = acc_S_mn[r, None].load()
            m_cur = _quad_max(s_row.reduce(cute.ReductionOp.MAX, -cutlass.Float32.inf, 0))
            m_new = cute.arch.fmax(row_max[r], m_cur)
            m_use = 0.0 if m_new == -cutlass.Float32.inf else m_new  # an all-masked row stays NaN-free
            p_row = cute.math.exp2(s_row - m_use, fastmath=True)
            alpha = cute.math.exp2(row_max[r] - m_use, fastmath=True)
            row_sum[r] = row_sum[r] * alpha + p_row.reduce(cute.ReductionOp.ADD, cutlass.Float32.zero, 0)
            row_max[r] = m_new
            acc_O_mn[r, None] = acc_O_mn[r, None].load() * alpha
            acc_S_mn[r, None] = p_row

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


def _mn_view(acc: cute.Tensor) -> cute.Tensor:
    """An mma.sync accumulator partition ((2, 2), MMA_M, MMA_N) seen as (rows, cols) of this thread."""
    cm = cute.make_layout(acc.layout.shape)
    mn = cute.make_layout(
        ((cm.shape[0][1], cm.shape[1]), (cm.shape[0][0], cm.shape[2])),
        stride=((cm.stride[0][1], cm.stride[1]), (cm.stride[0][0], cm.stride[2])))
    return cute.make_tensor(acc.iterator, cute.composition(acc.layout, mn))


def _quad(val, op: Callable):
    """Reduce over the 4 threads of an mma quad that share a row."""
    val = op(val, cute.arch.shuffle_sync_bfly(val, offset=2, mask=-1, mask_and_clamp=31))
    return op(val, cute.arch.shuffle_sync_bfly(val, offset=1, mask=-1, mask_and_clamp=31))


def _quad_max(val):
    return _quad(val, lambda x, y: cute.arch.fmax(x, y))


def _quad_sum(val):
    return _quad(val, lambda x, y: x + y)


# ---------------------------------------------------------------------------- compile + launch
ARCH = "sm_90a"
_COMPILED: dict[tuple, object] = {}


def _ptr(dtype, address: int):
    return make_ptr(dtype, address, cute.AddressSpace.gmem, assumed_align=16)


def compile_kernel(head_dim: int, group: int, kv_heads: int, num_warps: int, block_n: int,
                   arch: str = ARCH, options: str = "", pipelined: bool = True):
    """Compile one variant for `arch` (no GPU needed: fake addresses, a fake stream)."""
    key = (head_dim, group, kv_heads, num_warps, block_n, arch, options, pipelined)
    if key not in _COMPILED:
        from cutlass.runtime import make_fake_stream

        kernel = TreeAttentionKernel(head_dim, group, kv_heads, num_warps, block_n, pipelined)
        bf16, i32, f32 = cutlass.BFloat16, cutlass.Int32, cutlass.Float32
        args = [_ptr(bf16, 0), _ptr(bf16, 0), _ptr(bf16, 0), _ptr(i32, 0), _ptr(i32, 0), _ptr(i32, 0),
                _ptr(f32, 0), _ptr(f32, 0), i32(1), i32(1), i32(1), i32(1), f32(1.0), make_fake_stream()]
        _COMPILED[key] = cute.compile(kernel, *args, options=f"--gpu-arch {arch} {options}".strip())
    return _COMPILED[key]


def choose_tiling(n: int, group: int, kv_heads: int, keys: int, num_sms: int) -> tuple[int, int, int]:
    """(num_warps, block_n, num_splits): 16 packed rows per warp, up to 4 warps; split-K until the
    (tile, kv head) CTAs fill the SMs about once (decode has only Hkv CTAs otherwise), and at least
    one split per 4096 keys (up to 4): a big tree at a long context fills the SMs once with one CTA
    each, and more CTAs per SM hide the gathers (H200, 2026-12-01, 256 nodes, pipelined: 16384 keys
    391 us with 4 splits vs 556 us with 1; at 1024 and 4096 keys 1 split was faster)."""
    rows = n * group
    warps = 1 if rows <= 16 else 2 if rows <= 32 else 4
    block_n = 64
    ctas = -(-rows // (16 * warps)) * kv_heads
    fill = num_sms // ctas
    splits = max(1, min(max(fill, min(keys // 4096, 4)), -(-keys // block_n), 64))
    return warps, block_n, splits


def paged_tree_attention(q, k_rows, v_rows, slots, subtree_sizes, prefix_len, scale: float,
                         num_warps: int, block_n: int, num_splits: int, pipelined: bool = True):
    """See the module docstring. Launches on torch's current stream; returns [N, Hq, D] in q's dtype."""
    import torch
    from cuda.bindings import driver as cuda

    n, hq, d = q.shape
    hkv = k_rows.shape[1]
    compiled = compile_kernel(d, hq // hkv, hkv, num_warps, block_n, pipelined=pipelined)
    o_part = torch.empty(num_splits, n, hq, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(num_splits, n, hq, dtype=torch.float32, device=q.device)
    bf16, i32, f32 = cutlass.BFloat16, cutlass.Int32, cutlass.Float32
    stream = cuda.CUstream(torch.cuda.current_stream(q.device).cuda_stream)
    compiled(_ptr(bf16, q.data_ptr()), _ptr(bf16, k_rows.data_ptr()), _ptr(bf16, v_rows.data_ptr()),
             _ptr(i32, slots.data_ptr()), _ptr(i32, subtree_sizes.data_ptr()), _ptr(i32, prefix_len.data_ptr()),
             _ptr(f32, o_part.data_ptr()), _ptr(f32, lse.data_ptr()),
             i32(n), i32(k_rows.shape[0]), i32(slots.numel()), i32(num_splits), f32(scale * LOG2E), stream)
    if num_splits == 1:
        return o_part[0].to(q.dtype)
    m = lse.amax(0)  # [N, Hq]
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp2(lse - m)  # [S, N, Hq]; a split that saw no key has lse -inf -> weight 0
    out = (w[..., None] * o_part).sum(0) / w.sum(0).clamp_min(1e-30)[..., None]
    return out.to(q.dtype)


def flops(n: int, num_heads: int, keys: int, head_dim: int) -> int:
    return 4 * n * num_heads * keys * head_dim


__all__ = ["TreeAttentionKernel", "choose_tiling", "compile_kernel", "flops", "paged_tree_attention"]
