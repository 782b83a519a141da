"""Paged tree attention on Hopper warpgroup MMA (wgmma), the `cute` backend's kernel for trees.

Same contract as `cute_tree_attention.TreeAttentionKernel` (see there):

    q [N, Hq, D] bf16; k_rows, v_rows [R, Hkv, D] bf16; slots [>= T + N] int32; subtree_sizes [N]
    int32; prefix_len [1] int32 (T) -> per split: O [S, N, Hq, D] fp32 and lse [S, N, Hq] fp32

One CTA = one tile of 64 * W packed rows (W warpgroups, each owning 64 rows; row r = token r // G,
head kvh * G + r % G) x one kv head x one split of the key blocks. Per key block of BLOCK_N keys:

    S   = Q K^T          wgmma m64nBLOCK_Nk16, A = Q and B = K from swizzled shared memory
    P   = 2^(S * scale * log2(e) - m')    online softmax in fp32 registers (interval mask first,
                                           only in blocks that reach past the committed prefix)
    O  += P V            wgmma m64nDk16, A = P from registers (bf16), B = V^T, an MN-major view
                         of the same shared-memory tile

K and V rows are gathered through the slot map with 16-byte cp.async into a ring of STAGES
buffers (one commit group per block, STAGES - 1 blocks in flight). The gathers of block
b + STAGES - 1 are issued right after the S = Q K^T wgmmas of block b are launched, so the slot
lookups and their latency overlap the tensor cores. Every thread copies; there is no producer
warp and no TMA (a paged gather would need one TMA box per 16-row page).

Per block, all threads: wait for block b's group, fence the async proxy (cp.async writes by the
generic proxy become visible to wgmma), barrier (also: every warpgroup is done with the buffer
the next gathers overwrite), then S, softmax, PV, each wgmma group waited before its result is used.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute  # noqa: PLR0402 (the DSL idiom)
import cutlass.utils.hopper_helpers as sm90
from cutlass.cute.nvgpu import OperandMajorMode, cpasync, warpgroup

try:  # cutlass >= 4.8 moved it
    from cutlass.tensor_utils import LayoutEnum
except ImportError:  # pragma: no cover
    from cutlass.utils import LayoutEnum

from .cute_common import SmemAllocator, load_q_tile, mn_view, online_softmax, store_partial


class WgmmaTreeAttentionKernel:
    """One compiled variant per (head_dim, group, kv_heads, warpgroups, block_n, stages)."""

    def __init__(self, head_dim: int, group: int, kv_heads: int, warpgroups: int = 2, block_n: int = 128,
                 stages: int = 2):  # fmt: skip
        assert head_dim in (64, 128), head_dim
        assert warpgroups in (1, 2) and block_n in (64, 128) and stages >= 2
        self.d, self.g, self.hkv, self.hq = head_dim, group, kv_heads, group * kv_heads
        self.wg = warpgroups
        self.threads = 128 * warpgroups
        self.bm = 64 * warpgroups
        self.bn = block_n
        self.stages = stages
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
        d, hq, hkv, bf16 = self.d, self.hq, self.hkv, self.dtype
        mQ = cute.make_tensor(p_q, cute.make_layout((n_queries, hq, d), stride=(hq * d, d, 1)))
        mK = cute.make_tensor(p_k, cute.make_layout((n_rows, hkv, d), stride=(hkv * d, d, 1)))
        mV = cute.make_tensor(p_v, cute.make_layout((n_rows, hkv, d), stride=(hkv * d, d, 1)))
        mSlots = cute.make_tensor(p_slots, cute.make_layout((n_slots,)))
        mSizes = cute.make_tensor(p_sizes, cute.make_layout((n_queries,)))
        mPrefix = cute.make_tensor(p_prefix, cute.make_layout((1,)))
        mO = cute.make_tensor(p_o, cute.make_layout((num_splits, n_queries, hq, d),
                                                    stride=(n_queries * hq * d, hq * d, d, 1)))
        mL = cute.make_tensor(p_lse, cute.make_layout((num_splits, n_queries, hq), stride=(n_queries * hq, hq, 1)))

        # wgmma-compatible swizzled smem: rows of D elements, K-major (128-byte swizzle for D = 64, 128)
        atom = warpgroup.make_smem_layout_atom(sm90.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, bf16, d), bf16)
        sQ_layout = cute.tile_to_shape(atom, (self.bm, d), (0, 1))  # (BLOCK_M, D)
        sKV_layout = cute.tile_to_shape(atom, (self.bn, d, self.stages), (0, 1, 2))  # (BLOCK_N, D, STAGES)

        @cute.struct
        class SharedStorage:
            sQ: cute.struct.Align[cute.struct.MemRange[bf16, cute.cosize(sQ_layout)], 1024]
            sK: cute.struct.Align[cute.struct.MemRange[bf16, cute.cosize(sKV_layout)], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[bf16, cute.cosize(sKV_layout)], 1024]

        # gathers: 8 elements (16 bytes) per thread per copy, threads laid out over 64-column slabs
        cols = 64 // 8
        thr_layout = cute.make_layout((self.threads // cols, cols), stride=(cols, 1))
        q_copy = cute.make_tiled_copy_tv(
            cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), bf16, num_bits_per_copy=128), thr_layout,
            cute.make_layout((1, 8)))
        cp_atom = cute.make_copy_atom(cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), bf16,
                                      num_bits_per_copy=128)  # 16-byte cp.async.cg, bypassing L1
        kv_copy = cute.make_tiled_copy_tv(cp_atom, thr_layout, cute.make_layout((1, 8)))
        # S = Q K^T: both K-major; O += P V: P from registers, V^T is MN-major (D contiguous)
        mma_qk = sm90.make_trivial_tiled_mma(bf16, bf16, OperandMajorMode.K, OperandMajorMode.K, cutlass.Float32,
                                             (self.wg, 1, 1), (64, self.bn))
        mma_pv = sm90.make_trivial_tiled_mma(bf16, bf16, OperandMajorMode.K, OperandMajorMode.MN, cutlass.Float32,
                                             (self.wg, 1, 1), (64, d), a_source=warpgroup.OperandSource.RMEM)

        tiles = cute.ceil_div(n_queries * self.g, self.bm)
        self.kernel(mQ, mK, mV, mSlots, mSizes, mPrefix, mO, mL, scale_log2, sQ_layout, sKV_layout,
                    q_copy, kv_copy, cp_atom, mma_qk, mma_pv, SharedStorage).launch(
            grid=(tiles, hkv, num_splits), block=[self.threads, 1, 1], stream=stream)

    # ------------------------------------------------------------------ device side
    @cute.kernel
    def kernel(
        self, mQ: cute.Tensor, mK: cute.Tensor, mV: cute.Tensor, mSlots: cute.Tensor, mSizes: cute.Tensor,
        mPrefix: cute.Tensor, mO: cute.Tensor, mL: cute.Tensor, scale_log2: cutlass.Float32,
        sQ_layout: cute.ComposedLayout, sKV_layout: cute.ComposedLayout, q_copy: cute.TiledCopy,
        kv_copy: cute.TiledCopy, cp_atom: cute.CopyAtom, mma_qk: cute.TiledMma, mma_pv: cute.TiledMma,
        SharedStorage: cutlass.Constexpr,
    ):
        bm, bn, d, g, stages = self.bm, self.bn, self.d, self.g, self.stages
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

        storage = SmemAllocator().allocate(SharedStorage)
        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)  # (BLOCK_M, D)
        sK = storage.sK.get_tensor(sKV_layout.outer, swizzle=sKV_layout.inner)  # (BLOCK_N, D, STAGES)
        sV = storage.sV.get_tensor(sKV_layout.outer, swizzle=sKV_layout.inner)
        sVt = cute.composition(sV, cute.make_ordered_layout((d, bn, stages), order=(1, 0, 2)))  # (D, BLOCK_N, STAGES)

        load_q_tile(mQ, sQ, q_copy, tidx, tile, kvh, bm, g)

        # ---- wgmma operands: smem descriptors per warpgroup; accumulators and coordinates per thread
        wg_idx = cute.arch.make_warp_uniform(tidx // 128)
        wg_qk = mma_qk.get_slice(wg_idx * 128)
        wg_pv = mma_pv.get_slice(wg_idx * 128)
        tSrQ = wg_qk.make_fragment_A(wg_qk.partition_A(sQ))
        tSrK = wg_qk.make_fragment_B(wg_qk.partition_B(sK))  # (..., MMA_N, MMA_K, STAGES)
        tOrVt = wg_pv.make_fragment_B(wg_pv.partition_B(sVt))
        tOrP = wg_pv.make_fragment_A(wg_pv.partition_shape_A((bm, bn)))  # bf16 P, registers
        thr_qk = mma_qk.get_slice(tidx)
        thr_pv = mma_pv.get_slice(tidx)
        acc_S_shape = thr_qk.partition_shape_C((bm, bn))
        acc_O = cute.make_rmem_tensor(thr_pv.partition_shape_C((bm, d)), cutlass.Float32)
        acc_O.fill(0.0)
        acc_O_mn = mn_view(acc_O)
        tScS_mn = mn_view(thr_qk.partition_C(cute.make_identity_tensor((bm, bn))))
        row_max = cute.make_rmem_tensor((cute.size(tScS_mn, mode=[0]),), cutlass.Float32)
        row_sum = cute.make_rmem_tensor((cute.size(tScS_mn, mode=[0]),), cutlass.Float32)
        row_max.fill(-cutlass.Float32.inf)
        row_sum.fill(0.0)

        thr_kv = kv_copy.get_slice(tidx)
        tKVcKV = thr_kv.partition_D(cute.make_identity_tensor((bn, d)))

        # ---- prologue: blocks b_lo .. b_lo + STAGES - 2 in flight, one commit group each (maybe empty)
        for s in cutlass.range_constexpr(stages - 1):
            if b_lo + s < b_hi:
                self._gather(mK, mV, mSlots, sK, sV, cp_atom, thr_kv, tKVcKV, (b_lo + s) * bn, s, kvh, kv_end)
            cute.arch.cp_async_commit_group()

        for b in cutlass.range(b_lo, b_hi, 1, unroll=1):
            stage = (b - b_lo) % stages
            start = b * bn
            cute.arch.cp_async_wait_group(stages - 2)  # block b's K and V (this thread's part) landed
            cute.arch.fence_view_async_shared()  # ... and are visible to the async proxy (wgmma)
            cute.arch.barrier()  # everyone's part; and everyone is done with block b - 1's buffer

            # S = Q K(b)^T, launched asynchronously
            acc_S = cute.make_rmem_tensor(acc_S_shape, cutlass.Float32)
            warpgroup.fence()
            atom_qk = cute.make_mma_atom(mma_qk.op)
            atom_qk.set(warpgroup.Field.ACCUMULATE, False)
            for k in cutlass.range_constexpr(cute.size(tSrQ.shape[2])):
                cute.gemm(atom_qk, acc_S, tSrQ[None, None, k], tSrK[None, None, k, stage], acc_S)
                atom_qk.set(warpgroup.Field.ACCUMULATE, True)
            warpgroup.commit_group()

            # while the tensor cores run: gathers of block b + STAGES - 1 into block b - 1's buffer
            nb = b + stages - 1
            if nb < b_hi:
                self._gather(mK, mV, mSlots, sK, sV, cp_atom, thr_kv, tKVcKV, nb * bn, (nb - b_lo) % stages, kvh, kv_end)
            cute.arch.cp_async_commit_group()

            warpgroup.wait_group(0)
            acc_S_mn = mn_view(acc_S)
            if start + bn > prefix_len:  # the block reaches the tree (or past kv_end): interval mask
                self._mask_scale(acc_S_mn, tScS_mn, mSizes, tile, start, prefix_len, kv_end, scale_log2)
            else:
                acc_S_mn.store(acc_S_mn.load() * scale_log2)
            online_softmax(acc_S_mn, acc_O_mn, row_max, row_sum)

            # O += P V(b): P rounded to bf16 into the register A operand
            tOrP.store(_acc_as_frg_a(acc_S).load().to(self.dtype))
            warpgroup.fence()
            atom_pv = cute.make_mma_atom(mma_pv.op)
            atom_pv.set(warpgroup.Field.ACCUMULATE, True)
            for k in cutlass.range_constexpr(cute.size(tOrP.shape[2])):
                cute.gemm(atom_pv, acc_O, tOrP[None, None, k], tOrVt[None, None, k, stage], acc_O)
            warpgroup.commit_group()
            warpgroup.wait_group(0)

        cute.arch.cp_async_wait_group(0)  # no copy may outlive the CTA
        tOcO_mn = mn_view(thr_pv.partition_C(cute.make_identity_tensor((bm, d))))
        store_partial(acc_O_mn, tOcO_mn, row_max, row_sum, mO, mL, tile, kvh, split, bm, g)

    # ------------------------------------------------------------------ device helpers (inlined)
    @cute.jit
    def _gather(self, mK: cute.Tensor, mV: cute.Tensor, mSlots: cute.Tensor, sK: cute.Tensor, sV: cute.Tensor,
                cp_atom: cute.CopyAtom, thr_kv: cute.ThrCopy, tKVcKV: cute.Tensor, start: cutlass.Int32, stage: cutlass.Int32,
                kvh: cutlass.Int32, kv_end: cutlass.Int32):
        """This thread's 16-byte cp.async gathers of the K and V rows of keys [start, start + BLOCK_N)
        through the slot map into buffer `stage`; rows past kv_end are zero-filled with plain stores."""
        tKsK = thr_kv.partition_D(sK[None, None, stage])
        tVsV = thr_kv.partition_D(sV[None, None, stage])
        for i in cutlass.range_constexpr(cute.size(tKsK, mode=[1])):
            key = start + tKVcKV[0, i, 0][0]
            if key < kv_end:
                slot = mSlots[key]
                for j in cutlass.range_constexpr(cute.size(tKsK, mode=[2])):
                    chunk = tKVcKV[0, i, j][1] // 8
                    cute.copy(cp_atom, cute.local_tile(mK[slot, kvh, None], (8,), (chunk,)), tKsK[None, i, j])
                    cute.copy(cp_atom, cute.local_tile(mV[slot, kvh, None], (8,), (chunk,)), tVsV[None, i, j])
            else:
                for j in cutlass.range_constexpr(cute.size(tKsK, mode=[2])):
                    tKsK[None, i, j].fill(0)
                    tVsV[None, i, j].fill(0)

    @cute.jit
    def _mask_scale(self, acc_S_mn: cute.Tensor, tScS_mn: cute.Tensor, mSizes: cute.Tensor, tile: cutlass.Int32,
                    start: cutlass.Int32, prefix_len: cutlass.Int32, kv_end: cutlass.Int32,
                    scale_log2: cutlass.Float32):
        """S * scale * log2(e) where token i may see key t, -inf elsewhere. Visible: t < kv_end and
        (t < T, or t = T + j with j <= i < j + subtree_sizes[j])."""
        for c in cutlass.range_constexpr(cute.size(tScS_mn, mode=[1])):
            key = start + tScS_mn[0, c][1]
            j = key - prefix_len
            size = 0
            if key < kv_end and j >= 0:  # noqa: PLR1716 (DSL: no chained compare)
                size = mSizes[j]
            for r in cutlass.range_constexpr(cute.size(tScS_mn, mode=[0])):
                tok = (tile * self.bm + tScS_mn[r, 0][0]) // self.g
                visible = key < kv_end and (key < prefix_len or (j <= tok and tok < j + size))  # noqa: PLR1716
                acc_S_mn[r, c] = acc_S_mn[r, c] * scale_log2 if visible else -cutlass.Float32.inf


def _acc_as_frg_a(acc: cute.Tensor) -> cute.Tensor:
    """The S accumulator ((2, 2, BLOCK_N / 8), MMA_M, MMA_N) seen as the A operand of the next
    wgmma: ((2, 2, 2), MMA_M, (BLOCK_N / 16, MMA_N)), k-blocks of 16 keys in mode 2."""
    div = cute.logical_divide(acc.layout, ((None, None, 2), None, None))
    return cute.make_tensor(acc.iterator, cute.make_layout(
        ((div.shape[0][0], div.shape[0][1], div.shape[0][2][0]), div.shape[1], (div.shape[0][2][1], div.shape[2])),
        stride=((div.stride[0][0], div.stride[0][1], div.stride[0][2][0]), div.stride[1],
                (div.stride[0][2][1], div.stride[2]))))
