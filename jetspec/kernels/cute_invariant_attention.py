"""Position-invariant paged tree attention in CuTe DSL: the `cute` backend's kernel under `exact = true`.

The rule (`jetspec/core/invariant.py`): a query at absolute position p reduces over its keys in an
order fixed by p alone. Token i of a forward sits at p_i = T + depth_i and sees the virtual keys

    v = 0 .. p_i:   v < T  -> the committed key v
                    v >= T -> its ancestor at depth v - T, the forward's key T + anc[i, v - T]
                              (a chain — a prefill chunk or a one-token step — has anc[i, k] = k)

One CTA = one token x one kv head x one split: a single warp, whose 16 MMA rows are the G query
heads of that kv head for that token (rows G..15 are zero), over the virtual keys
[s * SPLIT, min((s + 1) * SPLIT, p_i + 1)) in blocks of 64 at absolute multiples of 64:

    S = q K^T (mma.sync m16n8k16, fp32), keys past p_i -> -inf, then the online softmax
    m' = max(m, max S), P = 2^(S - m'), l' = l 2^(m - m') + sum P, O' = O 2^(m - m') + P V
    partial O_s = O / l, lse_s = m + log2 l            (a split past p_i: O_s = 0, lse_s = -inf)
    out = sum_s 2^(lse_s - M) O_s / sum_s 2^(lse_s - M), M = max_s lse_s, in split order

So a row runs the same instructions on the same data — same tile row, same key columns, same
block and split boundaries — whether it is a one-token step, any node of any tree, or a row of a
prefill chunk; splits past its own ceil((p + 1) / SPLIT) add exact zeros in the merge, which
always runs (one split too). Its bits are a function of p and the keys alone.

Cost: every token reads its whole prefix (the tokens of one tree share it only through L2, their
CTAs being adjacent in the grid); the `triton` backend's invariant kernel shares prefix blocks
across tokens in large tiles and is the default. K/V blocks are gathered with cp.async, FA2-style,
as in `cute_tree_attention` (whose S, softmax and P V steps this kernel reuses).

    q [N, Hq, D] bf16; k_rows, v_rows [R, Hkv, D] bf16; slots [>= T + N] int32;
    positions [N] int32 (T + depth); ancestors [N, A] int32; prefix_len [1] int32 -> out [N, Hq, D]

Importing this module imports cutlass; `cute_backend` imports it lazily.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute  # noqa: PLR0402 (the DSL idiom)
from cutlass.cute.nvgpu import cpasync, warp

from .cute_common import LOG2E, SmemAllocator, global_views, mn_view, online_softmax, ptr, quad_sum
from .cute_tree_attention import ARCH, TreeAttentionKernel, _COMPILED, compile_merge

BLOCK_N = 64  # keys per block, at absolute multiples of 64
ROWS = 16  # MMA rows of the one warp: the G <= 16 query heads of a kv head for one token


class InvariantAttentionKernel(TreeAttentionKernel):
    """One compiled variant per (head_dim, group, kv_heads); the split size is a launch argument."""

    def __init__(self, head_dim: int, group: int, kv_heads: int):
        assert group <= ROWS, group
        super().__init__(head_dim, group, kv_heads, num_warps=1, block_n=BLOCK_N, pipelined=True)

    # ------------------------------------------------------------------ host side (traced once)
    @cute.jit
    def __call__(
        self,
        p_q: cute.Pointer, p_k: cute.Pointer, p_v: cute.Pointer, p_slots: cute.Pointer,
        p_pos: cute.Pointer, p_anc: cute.Pointer, p_prefix: cute.Pointer, p_o: cute.Pointer, p_lse: cute.Pointer,
        n_queries: cutlass.Int32, n_rows: cutlass.Int32, n_slots: cutlass.Int32, num_splits: cutlass.Int32,
        anc_cols: cutlass.Int32, split_keys: cutlass.Int32, chain: cutlass.Int32, scale_log2: cutlass.Float32, stream,
    ):
        d, hq, hkv = self.d, self.hq, self.hkv
        mQ, mK, mV, mSlots, mPos, mPrefix, mO, mL = global_views(
            p_q, p_k, p_v, p_slots, p_pos, p_prefix, p_o, p_lse, n_queries, n_rows, n_slots, num_splits, hq, hkv, d)
        mAnc = cute.make_tensor(p_anc, cute.make_layout((n_queries, anc_cols), stride=(anc_cols, 1)))

        atom = cute.make_composed_layout(cute.make_swizzle(3, 3, 3), 0, cute.make_layout((8, 64), stride=(64, 1)))
        sQ_layout = cute.tile_to_shape(atom, (self.bm, d), (0, 1))
        sKV_layout = cute.tile_to_shape(atom, (self.bn, d), (0, 1))

        @cute.struct
        class SharedStorage:
            sQ: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sQ_layout)], 1024]
            sK: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sKV_layout)], 1024]
            sV: cute.struct.Align[cute.struct.MemRange[self.dtype, cute.cosize(sKV_layout)], 1024]
            sSlot: cute.struct.Align[cute.struct.MemRange[cutlass.Int32, self.bn], 16]

        vec, cols = 8, 64 // 8  # 16-byte chunks of 64-column slabs
        copy_atom = cute.make_copy_atom(cute.nvgpu.CopyUniversalOp(), self.dtype, num_bits_per_copy=128)
        cp_atom = cute.make_copy_atom(cpasync.CopyG2SOp(cache_mode=cpasync.LoadCacheMode.GLOBAL), self.dtype,
                                      num_bits_per_copy=128)
        gather = cute.make_tiled_copy_tv(copy_atom, cute.make_layout((self.threads // cols, cols), stride=(cols, 1)),
                                         cute.make_layout((1, vec)))
        tiled_mma = cute.make_tiled_mma(warp.MmaF16BF16Op(self.dtype, cutlass.Float32, (16, 8, 16)), (1, 1, 1),
                                        permutation_mnk=(16, 16, 16))
        self.kernel(mQ, mK, mV, mSlots, mPos, mAnc, mPrefix, mO, mL, split_keys, chain, scale_log2,
                    sQ_layout, sKV_layout, gather, cp_atom, tiled_mma, SharedStorage).launch(
            grid=(n_queries, hkv, num_splits), block=[self.threads, 1, 1], stream=stream)

    # ------------------------------------------------------------------ device side
    @cute.kernel
    def kernel(
        self, mQ: cute.Tensor, mK: cute.Tensor, mV: cute.Tensor, mSlots: cute.Tensor, mPos: cute.Tensor,
        mAnc: cute.Tensor, mPrefix: cute.Tensor, mO: cute.Tensor, mL: cute.Tensor, split_keys: cutlass.Int32,
        chain: cutlass.Int32, scale_log2: cutlass.Float32, sQ_layout: cute.ComposedLayout,
        sKV_layout: cute.ComposedLayout, gather: cute.TiledCopy, cp_atom: cute.CopyAtom, tiled_mma: cute.TiledMma,
        SharedStorage: cutlass.Constexpr,
    ):
        bm, bn, d = self.bm, self.bn, self.d
        tidx, _, _ = cute.arch.thread_idx()
        tok, kvh, split = cute.arch.block_idx()
        prefix_len = mPrefix[0]
        kv_end = mPos[tok] + 1  # virtual keys 0 .. p
        lo = split * split_keys
        hi = cutlass.min(lo + split_keys, kv_end)
        b_lo = lo // bn
        b_hi = b_lo
        if hi > lo:
            b_hi = (hi + bn - 1) // bn

        smem = SmemAllocator()
        storage = smem.allocate(SharedStorage)
        sQ = storage.sQ.get_tensor(sQ_layout)
        sK = storage.sK.get_tensor(sKV_layout)
        sV = storage.sV.get_tensor(sKV_layout)
        sSlot = storage.sSlot.get_tensor(cute.make_layout((bn,)))
        sVt = cute.composition(sV, cute.make_layout((d, bn), stride=(bn, 1)))  # V^T view (D, BLOCK_N)

        self._load_token_q(mQ, sQ, gather, tidx, tok, kvh)
        thr_gather = gather.get_slice(tidx)
        tKsK = thr_gather.partition_D(sK)
        tVsV = thr_gather.partition_D(sV)
        tKcK = thr_gather.partition_D(cute.make_identity_tensor((bn, d)))

        (thr_mma, acc_O, ld_q, ld_k, ld_v, tSsQ, tSrQ, tSrQ_v, tSsK, tSrK, tSrK_v, tOsVt, tOrVt, tOrVt_v,
         tScS_mn, row_max, row_sum, acc_O_mn, acc_S_shape) = self._mma_state(tiled_mma, sQ, sK, sVt, tidx)

        # cp.async, FA2-style (as cute_tree_attention): V(b) lands while S = q K(b)^T runs, K(b+1)
        # while the softmax and O += P V(b) run. The slot map of block b is resolved into sSlot first.
        if b_lo < b_hi:
            self._virtual_slots(mSlots, mAnc, sSlot, tidx, tok, b_lo * bn, prefix_len, kv_end, chain)
            cute.arch.barrier()
            self._gather_rows(mK, sSlot, tKsK, tKcK, kvh, cp_atom)
        for b in cutlass.range(b_lo, b_hi, 1):
            start = b * bn
            cute.arch.cp_async_wait_group(0)  # K(b)
            cute.arch.barrier()  # K(b) visible; every thread done with V(b - 1)
            self._gather_rows(mV, sSlot, tVsV, tKcK, kvh, cp_atom)
            acc_S = cute.make_rmem_tensor(acc_S_shape, cutlass.Float32)
            self._scores(tiled_mma, acc_S, ld_q, ld_k, tSsQ, tSrQ, tSrQ_v, tSsK, tSrK, tSrK_v)
            cute.arch.barrier()  # every thread done reading K(b) and block b's slots
            if b + 1 < b_hi:
                self._virtual_slots(mSlots, mAnc, sSlot, tidx, tok, start + bn, prefix_len, kv_end, chain)
                cute.arch.barrier()
                self._gather_rows(mK, sSlot, tKsK, tKcK, kvh, cp_atom)
            self._mask_causal(acc_S, tScS_mn, start, kv_end, scale_log2)
            online_softmax(mn_view(acc_S), acc_O_mn, row_max, row_sum)
            if b + 1 < b_hi:
                cute.arch.cp_async_wait_group(1)  # V(b); K(b + 1) may still fly
            else:
                cute.arch.cp_async_wait_group(0)
            cute.arch.barrier()  # V(b) visible
            self._accumulate(tiled_mma, acc_S, acc_O, ld_v, tOsVt, tOrVt, tOrVt_v)

        tOcO_mn = mn_view(thr_mma.partition_C(cute.make_identity_tensor((bm, d))))
        self._store_token_partial(acc_O_mn, tOcO_mn, row_max, row_sum, mO, mL, tok, kvh, split)

    # ------------------------------------------------------------------ device helpers (inlined)
    @cute.jit
    def _load_token_q(self, mQ: cute.Tensor, sQ: cute.Tensor, gather: cute.TiledCopy, tidx: cutlass.Int32,
                      tok: cutlass.Int32, kvh: cutlass.Int32):
        """Row r < G of the tile = query head kvh * G + r of token `tok`; rows G..15 are zero."""
        thr = gather.get_slice(tidx)
        tQsQ = thr.partition_D(sQ)
        tQcQ = thr.partition_D(cute.make_identity_tensor((self.bm, self.d)))
        for i in cutlass.range_constexpr(cute.size(tQsQ, mode=[1])):
            for j in cutlass.range_constexpr(cute.size(tQsQ, mode=[2])):
                row, col = tQcQ[0, i, j]
                if row < self.g:
                    cute.autovec_copy(cute.local_tile(mQ[tok, kvh * self.g + row, None], (8,), (col // 8,)), tQsQ[None, i, j])
                else:
                    tQsQ[None, i, j].fill(0)

    @cute.jit
    def _virtual_slots(self, mSlots: cute.Tensor, mAnc: cute.Tensor, sSlot: cute.Tensor, tidx: cutlass.Int32,
                       tok: cutlass.Int32, start: cutlass.Int32, prefix_len: cutlass.Int32, kv_end: cutlass.Int32,
                       chain: cutlass.Int32):
        """sSlot[c] = pool row of virtual key start + c of token `tok` (-1 past p)."""
        for s in cutlass.range_constexpr(self.bn // self.threads):
            c = tidx + s * self.threads
            v = start + c
            slot = -1
            if v < kv_end:
                key = v
                if v >= prefix_len and chain == 0:
                    key = prefix_len + mAnc[tok, v - prefix_len]
                slot = mSlots[key]
            sSlot[c] = slot

    @cute.jit
    def _gather_rows(self, mX: cute.Tensor, sSlot: cute.Tensor, tXsX: cute.Tensor, tXcX: cute.Tensor,
                     kvh: cutlass.Int32, cp_atom: cute.CopyAtom):
        """This thread's 16-byte cp.async gathers of the block's K or V rows (rows of slot -1 are
        zero-filled with plain stores), as one commit group."""
        for i in cutlass.range_constexpr(cute.size(tXsX, mode=[1])):
            row, _ = tXcX[0, i, 0]
            slot = sSlot[row]
            if slot >= 0:
                for jj in cutlass.range_constexpr(cute.size(tXsX, mode=[2])):
                    col = tXcX[0, i, jj][1]
                    cute.copy(cp_atom, cute.local_tile(mX[slot, kvh, None], (8,), (col // 8,)), tXsX[None, i, jj])
            else:
                for jj in cutlass.range_constexpr(cute.size(tXsX, mode=[2])):
                    tXsX[None, i, jj].fill(0)
        cute.arch.cp_async_commit_group()

    @cute.jit
    def _mask_causal(self, acc_S: cute.Tensor, tScS_mn: cute.Tensor, start: cutlass.Int32, kv_end: cutlass.Int32,
                     scale_log2: cutlass.Float32):
        """Scale S into the log2 domain; virtual keys past p (start + col >= kv_end) -> -inf."""
        acc_S_mn = mn_view(acc_S)
        for r in cutlass.range_constexpr(cute.size(tScS_mn, mode=[0])):
            for c in cutlass.range_constexpr(cute.size(tScS_mn, mode=[1])):
                visible = start + tScS_mn[0, c][1] < kv_end
                acc_S_mn[r, c] = acc_S_mn[r, c] * scale_log2 if visible else -cutlass.Float32.inf

    @cute.jit
    def _store_token_partial(self, acc_O_mn: cute.Tensor, tOcO_mn: cute.Tensor, row_max: cute.Tensor,
                             row_sum: cute.Tensor, mO: cute.Tensor, mL: cute.Tensor, tok: cutlass.Int32,
                             kvh: cutlass.Int32, split: cutlass.Int32):
        """O_s = acc / l and lse_s = m + log2(l) of rows r < G (fp32); an empty split: 0 and -inf."""
        for r in cutlass.range_constexpr(cute.size(row_sum)):
            total = quad_sum(row_sum[r])
            inv = 1.0 if total == 0.0 else 1.0 / total
            row = tOcO_mn[r, 0][0]
            if row < self.g:
                head = kvh * self.g + row
                for c in cutlass.range_constexpr(cute.size(tOcO_mn, mode=[1])):
                    mO[split, tok, head, tOcO_mn[0, c][1]] = acc_O_mn[r, c] * inv
                lse = -cutlass.Float32.inf if total == 0.0 else row_max[r] + cute.math.log2(total, fastmath=False)
                mL[split, tok, head] = lse


# ---------------------------------------------------------------------------- compile + launch
def _fake_args():
    from cutlass.runtime import make_fake_stream

    bf16, i32, f32 = cutlass.BFloat16, cutlass.Int32, cutlass.Float32
    return [ptr(bf16, 0), ptr(bf16, 0), ptr(bf16, 0), ptr(i32, 0), ptr(i32, 0), ptr(i32, 0), ptr(i32, 0),
            ptr(f32, 0), ptr(f32, 0), i32(1), i32(1), i32(1), i32(1), i32(1), i32(512), i32(0), f32(1.0),
            make_fake_stream()]


def compile_invariant(head_dim: int, group: int, kv_heads: int, arch: str = ARCH, options: str = ""):
    """Compile the kernel for `arch` (no GPU needed: fake addresses, a fake stream)."""
    key = ("invariant", head_dim, group, kv_heads, arch, options)
    if key not in _COMPILED:
        kernel = InvariantAttentionKernel(head_dim, group, kv_heads)
        _COMPILED[key] = cute.compile(kernel, *_fake_args(), options=f"--gpu-arch {arch} {options}".strip())
    return _COMPILED[key]


def invariant_tree_attention(q, k_rows, v_rows, slots, positions, ancestors, prefix_len, scale: float,
                             split_keys: int, num_splits: int, chain: bool):  # fmt: skip
    """See the module docstring (positions, ancestors int32). `num_splits` >= the largest
    ceil((p_i + 1) / split_keys) of the call (more add exact zeros). Launches on torch's current
    stream; returns [N, Hq, D] bf16."""
    import torch
    from cuda.bindings import driver as cuda

    n, hq, d = q.shape
    hkv = k_rows.shape[1]
    assert split_keys % BLOCK_N == 0, split_keys
    assert positions.dtype == ancestors.dtype == torch.int32 and ancestors.is_contiguous()
    compiled = compile_invariant(d, hq // hkv, hkv)
    o_part = torch.empty(num_splits, n, hq, d, dtype=torch.float32, device=q.device)  # [S, N, Hq, D]
    lse = torch.empty(num_splits, n, hq, dtype=torch.float32, device=q.device)  # [S, N, Hq]
    out = torch.empty(n, hq, d, dtype=torch.bfloat16, device=q.device)  # [N, Hq, D]
    bf16, i32, f32 = cutlass.BFloat16, cutlass.Int32, cutlass.Float32
    stream = cuda.CUstream(torch.cuda.current_stream(q.device).cuda_stream)
    compiled(ptr(bf16, q.data_ptr()), ptr(bf16, k_rows.data_ptr()), ptr(bf16, v_rows.data_ptr()),
             ptr(i32, slots.data_ptr()), ptr(i32, positions.data_ptr()), ptr(i32, ancestors.data_ptr()),
             ptr(i32, prefix_len.data_ptr()), ptr(f32, o_part.data_ptr()), ptr(f32, lse.data_ptr()),
             i32(n), i32(k_rows.shape[0]), i32(slots.numel()), i32(num_splits), i32(ancestors.shape[1]),
             i32(split_keys), i32(1 if chain else 0), f32(scale * LOG2E), stream)
    compile_merge(d)(ptr(f32, o_part.data_ptr()), ptr(f32, lse.data_ptr()), ptr(bf16, out.data_ptr()),
                     i32(n * hq), i32(num_splits), stream)
    return out


__all__ = ["BLOCK_N", "InvariantAttentionKernel", "compile_invariant", "invariant_tree_attention"]
