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
buffers; keys past kv_end read the row of key kv_end - 1 (finite, and masked), so no row is
ever left stale. No TMA: a paged gather would need one TMA box per 16-row page. Two schedules:

* specialized (the default): warpgroup 0 is a producer that only gathers, one block per ring
  slot, through an mbarrier pipeline (cutlass.pipeline.PipelineCpAsync: the slot is "full" when
  the producer's cp.asyncs land, "empty" when every consumer thread is done with it); the W
  consumer warpgroups only compute, each at its own pace, so one warpgroup's softmax overlaps the
  other's wgmmas. setmaxnreg moves registers from the producer to the consumers.
* shared (specialized=False): every thread gathers and computes. The gathers of block
  b + STAGES - 1 are issued right after the S = Q K^T wgmmas of block b are launched; per block:
  wait for block b's copies, fence, a CTA barrier, then S, softmax, PV.

Either way the consumer of a slot fences the async proxy (cp.async writes go through the generic
proxy, wgmma reads through the async one) before its first wgmma on it.

Measured on the H200, 2026-12-02 (bench/kernel_bench.py, bench/RESULTS.md), 16384 keys, 256 nodes,
Qwen3-8B heads: 140.6 us with the defaults (specialized, ping-pong, 3 slots, 2 consumer
warpgroups) vs Triton's 184.6 us; without ping-pong 150.6, shared schedule 158.5, 2 slots 195.4
(ping-pong frees a slot one turn late, so it needs the third), 1 consumer warpgroup 197.1.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute  # noqa: PLR0402 (the DSL idiom)
import cutlass.utils.hopper_helpers as sm90
from cutlass import pipeline
from cutlass.cute.nvgpu import OperandMajorMode, cpasync, warpgroup

try:  # cutlass >= 4.8 moved it
    from cutlass.tensor_utils import LayoutEnum
except ImportError:  # pragma: no cover
    from cutlass.utils import LayoutEnum

from .cute_common import (
    SmemAllocator,
    global_views,
    key_blocks,
    load_q_tile,
    mn_view,
    online_softmax,
    store_partial,
)


class WgmmaTreeAttentionKernel:
    """One compiled variant per (head_dim, group, kv_heads, warpgroups, block_n, stages, specialized,
    pingpong); `warpgroups` counts the computing (consumer) warpgroups, 64 rows each."""

    def __init__(self, head_dim: int, group: int, kv_heads: int, warpgroups: int = 2, block_n: int = 128,
                 stages: int = 3, specialized: bool = True, pingpong: bool = True):  # fmt: skip
        assert head_dim in (64, 128), head_dim
        assert warpgroups in (1, 2) and block_n in (64, 128) and stages >= 2
        self.d, self.g, self.hkv, self.hq = head_dim, group, kv_heads, group * kv_heads
        self.wg = warpgroups
        self.specialized = specialized
        self.pingpong = pingpong and specialized and warpgroups == 2  # consumers take turns on the tensor cores
        self.mma_threads = 128 * warpgroups
        self.threads = self.mma_threads + (128 if specialized else 0)
        self.load_threads = 128 if specialized else self.mma_threads
        # registers per thread after setmaxnreg (producer, consumers): 64K a CTA, 1 CTA an SM
        self.regs = (56, 256) if warpgroups == 1 else (56, 216)
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
        mQ, mK, mV, mSlots, mSizes, mPrefix, mO, mL = global_views(
            p_q, p_k, p_v, p_slots, p_sizes, p_prefix, p_o, p_lse, n_queries, n_rows, n_slots, num_splits, hq, hkv, d)

        # wgmma-compatible swizzled smem: rows of D elements, K-major (128-byte swizzle for D = 64, 128)
        atom = warpgroup.make_smem_layout_atom(sm90.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, bf16, d), bf16)
        sQ_layout = cute.tile_to_shape(atom, (self.bm, d), (0, 1))  # (BLOCK_M, D)
        sKV_layout = cute.tile_to_shape(atom, (self.bn, d, self.stages), (0, 1, 2))  # (BLOCK_N, D, STAGES)

        @cute.struct
        class SharedStorage:
            full_empty: cute.struct.MemRange[cutlass.Int64, 2 * self.stages]  # the pipeline's mbarriers
            sQ: cute.struct.Align[cute.struct.MemRange[bf16, cute.cosize(sQ_layout)], 1024]
            sK: cute.struct.Align[cute.struct.MemRange[bf16, cute.cosize(sKV_layout)], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[bf16, cute.cosize(sKV_layout)], 1024]

        # copies: 8 elements (16 bytes) per thread per copy, threads laid out over 64-column slabs
        cols = 64 // 8
        q_copy = cute.make_tiled_copy_tv(
            cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), bf16, num_bits_per_copy=128),
            cute.make_layout((self.mma_threads // cols, cols), stride=(cols, 1)), cute.make_layout((1, 8)))
        cp_atom = cute.make_copy_atom(cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), bf16,
                                      num_bits_per_copy=128)  # 16-byte cp.async.cg, bypassing L1
        kv_copy = cute.make_tiled_copy_tv(cp_atom, cute.make_layout((self.load_threads // cols, cols), stride=(cols, 1)),
                                          cute.make_layout((1, 8)))
        # S = Q K^T: both K-major; O += P V: P from registers, V^T is MN-major (D contiguous)
        mma_qk = sm90.make_trivial_tiled_mma(bf16, bf16, OperandMajorMode.K, OperandMajorMode.K, cutlass.Float32,
                                             (self.wg, 1, 1), (64, self.bn))
        mma_pv = sm90.make_trivial_tiled_mma(bf16, bf16, OperandMajorMode.K, OperandMajorMode.MN, cutlass.Float32,
                                             (self.wg, 1, 1), (64, d), a_source=warpgroup.OperandSource.RMEM)

        tiles = cute.ceil_div(n_queries * self.g, self.bm)
        self.kernel(mQ, mK, mV, mSlots, mSizes, mPrefix, mO, mL, scale_log2, sQ_layout, sKV_layout,
                    q_copy, kv_copy, cp_atom, mma_qk, mma_pv, SharedStorage).launch(
            grid=(tiles, hkv, num_splits), block=[self.threads, 1, 1], stream=stream, min_blocks_per_mp=1)

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

        prefix_len, kv_end, b_lo, b_hi = key_blocks(mPrefix, n_queries, tile, split, num_splits, bm, g, bn)

        storage = SmemAllocator().allocate(SharedStorage)
        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)  # (BLOCK_M, D)
        sK = storage.sK.get_tensor(sKV_layout.outer, swizzle=sKV_layout.inner)  # (BLOCK_N, D, STAGES)
        sV = storage.sV.get_tensor(sKV_layout.outer, swizzle=sKV_layout.inner)
        sVt = cute.composition(sV, cute.make_ordered_layout((d, bn, stages), order=(1, 0, 2)))  # (D, BLOCK_N, STAGES)
        tKVcKV = cute.make_identity_tensor((bn, d))

        if cutlass.const_expr(self.specialized):
            ring = pipeline.PipelineCpAsync.create(
                barrier_storage=storage.full_empty.data_ptr(), num_stages=stages,
                producer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, 128),
                consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, self.mma_threads))  # inits, syncs the CTA
            warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
            if warp_idx < 4:  # ---- producer warpgroup: gathers only
                cute.arch.setmaxregister_decrease(self.regs[0])
                thr_kv = kv_copy.get_slice(tidx)
                tKVcKV_t = thr_kv.partition_D(tKVcKV)
                state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, stages)
                for b in cutlass.range(b_lo, b_hi, 1, unroll=1):
                    ring.producer_acquire(state)  # every consumer is done with this slot's last block
                    self._gather(mK, mV, mSlots, sK, sV, cp_atom, thr_kv, tKVcKV_t, b * bn, state.index, kvh, kv_end)
                    cute.arch.cp_async_commit_group()
                    ring.producer_commit(state)  # the slot turns full when this thread's copies land
                    state.advance()
                cute.arch.cp_async_wait_group(0)  # no copy may outlive the CTA
            else:  # ---- consumer warpgroups: compute only
                cute.arch.setmaxregister_increase(self.regs[1])
                ctx = tidx - 128
                load_q_tile(mQ, sQ, q_copy, ctx, tile, kvh, bm, g)
                cute.arch.fence_view_async_shared()
                cute.arch.barrier(barrier_id=1, number_of_threads=self.mma_threads)  # Q in place (consumers only)
                ops = self._operands(mma_qk, mma_pv, sQ, sK, sVt, ctx)
                acc_O, row_max, row_sum = self._accumulators(mma_qk, mma_pv, ctx)
                state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, stages)
                if cutlass.const_expr(self.pingpong):
                    self._consume_pingpong(ring, state, ops, acc_O, row_max, row_sum, mma_qk, mma_pv, mSizes, ctx,
                                           tile, b_lo, b_hi, prefix_len, kv_end, scale_log2)
                else:
                    for b in cutlass.range(b_lo, b_hi, 1, unroll=1):
                        ring.consumer_wait(state)
                        cute.arch.fence_view_async_shared()
                        acc_S = self._scores_launch(mma_qk, ops, state.index, ctx)
                        warpgroup.wait_group(0)
                        self._softmax(acc_S, acc_O, row_max, row_sum, mma_qk, mSizes, ctx, tile, b * bn, prefix_len,
                                      kv_end, scale_log2)
                        self._accumulate(mma_pv, acc_S, acc_O, ops, state.index)
                        warpgroup.wait_group(0)
                        ring.consumer_release(state)
                        state.advance()
                self._epilogue(mma_pv, acc_O, row_max, row_sum, mO, mL, ctx, tile, kvh, split)
        else:
            load_q_tile(mQ, sQ, q_copy, tidx, tile, kvh, bm, g)
            ops = self._operands(mma_qk, mma_pv, sQ, sK, sVt, tidx)
            acc_O, row_max, row_sum = self._accumulators(mma_qk, mma_pv, tidx)
            thr_kv = kv_copy.get_slice(tidx)
            tKVcKV_t = thr_kv.partition_D(tKVcKV)
            # prologue: blocks b_lo .. b_lo + STAGES - 2 in flight, one commit group each (maybe empty)
            for s in cutlass.range_constexpr(stages - 1):
                if b_lo + s < b_hi:
                    self._gather(mK, mV, mSlots, sK, sV, cp_atom, thr_kv, tKVcKV_t, (b_lo + s) * bn, s, kvh, kv_end)
                cute.arch.cp_async_commit_group()
            for b in cutlass.range(b_lo, b_hi, 1, unroll=1):
                stage = (b - b_lo) % stages
                cute.arch.cp_async_wait_group(stages - 2)  # block b's K and V (this thread's part) landed
                cute.arch.fence_view_async_shared()  # ... and are visible to the async proxy (wgmma)
                cute.arch.barrier()  # everyone's part; and everyone is done with block b - 1's buffer
                acc_S = self._scores_launch(mma_qk, ops, stage, tidx)
                # while the tensor cores run: gathers of block b + STAGES - 1 into block b - 1's buffer
                nb = b + stages - 1
                if nb < b_hi:
                    self._gather(mK, mV, mSlots, sK, sV, cp_atom, thr_kv, tKVcKV_t, nb * bn, (nb - b_lo) % stages,
                                 kvh, kv_end)
                cute.arch.cp_async_commit_group()
                warpgroup.wait_group(0)
                self._softmax(acc_S, acc_O, row_max, row_sum, mma_qk, mSizes, tidx, tile, b * bn, prefix_len,
                              kv_end, scale_log2)
                self._accumulate(mma_pv, acc_S, acc_O, ops, stage)
                warpgroup.wait_group(0)
            cute.arch.cp_async_wait_group(0)  # no copy may outlive the CTA
            self._epilogue(mma_pv, acc_O, row_max, row_sum, mO, mL, tidx, tile, kvh, split)

    # ------------------------------------------------------------------ device helpers (inlined)
    @cute.jit
    def _operands(self, mma_qk: cute.TiledMma, mma_pv: cute.TiledMma, sQ: cute.Tensor, sK: cute.Tensor,
                  sVt: cute.Tensor, ctx: cutlass.Int32):
        """wgmma operands of this thread's warpgroup: smem descriptors for Q, K, V^T; registers for P."""
        wg_idx = cute.arch.make_warp_uniform(ctx // 128)
        wg_qk = mma_qk.get_slice(wg_idx * 128)
        wg_pv = mma_pv.get_slice(wg_idx * 128)
        tSrQ = wg_qk.make_fragment_A(wg_qk.partition_A(sQ))
        tSrK = wg_qk.make_fragment_B(wg_qk.partition_B(sK))  # (..., MMA_N, MMA_K, STAGES)
        tOrVt = wg_pv.make_fragment_B(wg_pv.partition_B(sVt))
        tOrP = wg_pv.make_fragment_A(wg_pv.partition_shape_A((self.bm, self.bn)))  # bf16 P, registers
        return tSrQ, tSrK, tOrVt, tOrP

    @cute.jit
    def _accumulators(self, mma_qk: cute.TiledMma, mma_pv: cute.TiledMma, ctx: cutlass.Int32):
        """O = 0 (fp32 registers) and the online-softmax state (max -inf, sum 0) of this thread's rows."""
        acc_O = cute.make_rmem_tensor(mma_pv.get_slice(ctx).partition_shape_C((self.bm, self.d)), cutlass.Float32)
        acc_O.fill(0.0)
        rows = cute.size(mn_view(acc_O), mode=[0])
        row_max = cute.make_rmem_tensor((rows,), cutlass.Float32)
        row_sum = cute.make_rmem_tensor((rows,), cutlass.Float32)
        row_max.fill(-cutlass.Float32.inf)
        row_sum.fill(0.0)
        return acc_O, row_max, row_sum

    @cute.jit
    def _scores_launch(self, mma_qk: cute.TiledMma, ops, stage: cutlass.Int32, ctx: cutlass.Int32) -> cute.Tensor:
        """Launch S = Q K(stage)^T asynchronously (one wgmma group); the caller waits on it."""
        tSrQ, tSrK, _, _ = ops
        acc_S = cute.make_rmem_tensor(mma_qk.get_slice(ctx).partition_shape_C((self.bm, self.bn)), cutlass.Float32)
        warpgroup.fence()
        atom = cute.make_mma_atom(mma_qk.op)
        atom.set(warpgroup.Field.ACCUMULATE, False)
        for k in cutlass.range_constexpr(cute.size(tSrQ.shape[2])):
            cute.gemm(atom, acc_S, tSrQ[None, None, k], tSrK[None, None, k, stage], acc_S)
            atom.set(warpgroup.Field.ACCUMULATE, True)
        warpgroup.commit_group()
        return acc_S

    @cute.jit
    def _softmax(self, acc_S: cute.Tensor, acc_O: cute.Tensor, row_max: cute.Tensor, row_sum: cute.Tensor,
                 mma_qk: cute.TiledMma, mSizes: cute.Tensor, ctx: cutlass.Int32, tile: cutlass.Int32,
                 start: cutlass.Int32, prefix_len: cutlass.Int32, kv_end: cutlass.Int32, scale_log2: cutlass.Float32):
        """Scale S (and mask it where the block reaches the tree or past kv_end), then one step of
        the online softmax: acc_S becomes P, acc_O is rescaled."""
        acc_S_mn = mn_view(acc_S)
        if start + self.bn > prefix_len:
            tScS_mn = mn_view(mma_qk.get_slice(ctx).partition_C(cute.make_identity_tensor((self.bm, self.bn))))
            self._mask_scale(acc_S_mn, tScS_mn, mSizes, tile, start, prefix_len, kv_end, scale_log2)
        else:
            acc_S_mn.store(acc_S_mn.load() * scale_log2)
        online_softmax(acc_S_mn, mn_view(acc_O), row_max, row_sum)

    @cute.jit
    def _accumulate(self, mma_pv: cute.TiledMma, acc_S: cute.Tensor, acc_O: cute.Tensor, ops, stage: cutlass.Int32):
        """Round P to bf16 into the register A operand, then launch O += P V(stage) (one wgmma
        group; the caller waits on it)."""
        self._to_operand(acc_S, ops)
        self._pv_launch(mma_pv, acc_O, ops, stage)

    @cute.jit
    def _to_operand(self, acc_S: cute.Tensor, ops):
        _, _, _, tOrP = ops
        tOrP.store(_acc_as_frg_a(acc_S).load().to(self.dtype))

    @cute.jit
    def _pv_launch(self, mma_pv: cute.TiledMma, acc_O: cute.Tensor, ops, stage: cutlass.Int32):
        _, _, tOrVt, tOrP = ops
        warpgroup.fence()
        atom = cute.make_mma_atom(mma_pv.op)
        atom.set(warpgroup.Field.ACCUMULATE, True)
        for k in cutlass.range_constexpr(cute.size(tOrP.shape[2])):
            cute.gemm(atom, acc_O, tOrP[None, None, k], tOrVt[None, None, k, stage], acc_O)
        warpgroup.commit_group()

    @cute.jit
    def _consume_pingpong(self, ring, state, ops, acc_O: cute.Tensor, row_max: cute.Tensor, row_sum: cute.Tensor,
                          mma_qk: cute.TiledMma, mma_pv: cute.TiledMma, mSizes: cute.Tensor, ctx: cutlass.Int32,
                          tile: cutlass.Int32, b_lo: cutlass.Int32, b_hi: cutlass.Int32, prefix_len: cutlass.Int32,
                          kv_end: cutlass.Int32, scale_log2: cutlass.Float32):
        """Two consumer warpgroups take turns on the tensor cores (FA3's ping-pong): a turn is
        [O += P V(b - 1), S = Q K(b)^T], and the other warpgroup's turn runs during this one's
        softmax. Turns pass through named barriers 2 + wg (count 256): sync on one's own, arrive
        on the other's. Warpgroup 0 goes first (warpgroup 1 arrives once up front); warpgroup 1
        skips the last hand-over, so every barrier phase completes."""
        wg = cute.arch.make_warp_uniform(ctx // 128)
        mine, other = 2 + wg, 3 - wg
        if wg == 1:
            cute.arch.barrier_arrive(barrier_id=2, number_of_threads=256)
        if b_lo < b_hi:
            # block b_lo: its turn is S alone
            ring.consumer_wait(state)
            cute.arch.fence_view_async_shared()
            cute.arch.barrier(barrier_id=mine, number_of_threads=256)
            acc_S = self._scores_launch(mma_qk, ops, state.index, ctx)
            cute.arch.barrier_arrive(barrier_id=other, number_of_threads=256)
            warpgroup.wait_group(0)
            self._softmax(acc_S, acc_O, row_max, row_sum, mma_qk, mSizes, ctx, tile, b_lo * self.bn, prefix_len,
                          kv_end, scale_log2)
            self._to_operand(acc_S, ops)
            prev = state.clone()  # the slot of block b - 1
            state.advance()
            for b in cutlass.range(b_lo + 1, b_hi, 1, unroll=1):
                ring.consumer_wait(state)
                cute.arch.fence_view_async_shared()
                cute.arch.barrier(barrier_id=mine, number_of_threads=256)
                self._pv_launch(mma_pv, acc_O, ops, prev.index)
                acc_S = self._scores_launch(mma_qk, ops, state.index, ctx)
                cute.arch.barrier_arrive(barrier_id=other, number_of_threads=256)
                warpgroup.wait_group(0)
                ring.consumer_release(prev)
                prev.advance()
                self._softmax(acc_S, acc_O, row_max, row_sum, mma_qk, mSizes, ctx, tile, b * self.bn, prefix_len,
                              kv_end, scale_log2)
                self._to_operand(acc_S, ops)
                state.advance()
            cute.arch.barrier(barrier_id=mine, number_of_threads=256)  # the last turn: O += P V(b_hi - 1)
            self._pv_launch(mma_pv, acc_O, ops, prev.index)
            warpgroup.wait_group(0)
            ring.consumer_release(prev)
        else:
            cute.arch.barrier(barrier_id=mine, number_of_threads=256)
        if wg == 0:
            cute.arch.barrier_arrive(barrier_id=other, number_of_threads=256)


    @cute.jit
    def _epilogue(self, mma_pv: cute.TiledMma, acc_O: cute.Tensor, row_max: cute.Tensor, row_sum: cute.Tensor,
                  mO: cute.Tensor, mL: cute.Tensor, ctx: cutlass.Int32, tile: cutlass.Int32, kvh: cutlass.Int32,
                  split: cutlass.Int32):
        tOcO_mn = mn_view(mma_pv.get_slice(ctx).partition_C(cute.make_identity_tensor((self.bm, self.d))))
        store_partial(mn_view(acc_O), tOcO_mn, row_max, row_sum, mO, mL, tile, kvh, split, self.bm, self.g)

    @cute.jit
    def _gather(self, mK: cute.Tensor, mV: cute.Tensor, mSlots: cute.Tensor, sK: cute.Tensor, sV: cute.Tensor,
                cp_atom: cute.CopyAtom, thr_kv: cute.ThrCopy, tKVcKV: cute.Tensor, start: cutlass.Int32,
                stage: cutlass.Int32, kvh: cutlass.Int32, kv_end: cutlass.Int32):
        """This thread's 16-byte cp.async gathers of the K and V rows of keys [start, start + BLOCK_N)
        through the slot map into buffer `stage` (the caller commits the group). A key at or past
        kv_end reads key kv_end - 1's row (a real, finite row; the mask hides it)."""
        tKsK = thr_kv.partition_D(sK[None, None, stage])
        tVsV = thr_kv.partition_D(sV[None, None, stage])
        slots = cute.make_rmem_tensor((cute.size(tKsK, mode=[1]),), cutlass.Int32)
        for i in cutlass.range_constexpr(cute.size(tKsK, mode=[1])):  # all slot loads first: one latency
            slots[i] = mSlots[cutlass.min(start + tKVcKV[0, i, 0][0], kv_end - 1)]
        for i in cutlass.range_constexpr(cute.size(tKsK, mode=[1])):
            for j in cutlass.range_constexpr(cute.size(tKsK, mode=[2])):
                chunk = tKVcKV[0, i, j][1] // 8
                cute.copy(cp_atom, cute.local_tile(mK[slots[i], kvh, None], (8,), (chunk,)), tKsK[None, i, j])
                cute.copy(cp_atom, cute.local_tile(mV[slots[i], kvh, None], (8,), (chunk,)), tVsV[None, i, j])

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
