"""The split-K merge of the `cute` kernels, in CuTe DSL: one launch, graph-capturable.

For each flat row r = (token, query head) and column c, over the S splits' partial outputs
o_s [S, N, Hq, D] fp32 and log2-sum-exps lse_s [S, N, Hq] fp32:

    out[r, c] = sum_s 2^(lse_s - M) o_s[r, c] / sum_s 2^(lse_s - M),    M = max_s lse_s

A split that saw no key of the row has lse -inf and weight 0. One thread per (row, column):
a CTA is ROWS rows x D columns, so the reads of a split are coalesced rows of D fp32.
"""

from __future__ import annotations

import cutlass
import cutlass.cute as cute  # noqa: PLR0402 (the DSL idiom)

ROWS = 4  # rows per CTA


class SplitMergeKernel:
    def __init__(self, head_dim: int):
        self.d = head_dim

    @cute.jit
    def __call__(self, p_part: cute.Pointer, p_lse: cute.Pointer, p_out: cute.Pointer, n_rows: cutlass.Int32,
                 num_splits: cutlass.Int32, stream):  # fmt: skip
        d = self.d
        mPart = cute.make_tensor(p_part, cute.make_layout((num_splits, n_rows, d), stride=(n_rows * d, d, 1)))
        mLse = cute.make_tensor(p_lse, cute.make_layout((num_splits, n_rows), stride=(n_rows, 1)))
        mOut = cute.make_tensor(p_out, cute.make_layout((n_rows, d), stride=(d, 1)))
        self.kernel(mPart, mLse, mOut).launch(grid=(cute.ceil_div(n_rows, ROWS), 1, 1), block=[d, ROWS, 1],
                                              stream=stream)

    @cute.kernel
    def kernel(self, mPart: cute.Tensor, mLse: cute.Tensor, mOut: cute.Tensor):
        col, ry, _ = cute.arch.thread_idx()
        bid, _, _ = cute.arch.block_idx()
        num_splits, n_rows = mLse.shape
        r = bid * ROWS + ry
        if r < n_rows:
            acc = cute.make_rmem_tensor((3,), cutlass.Float32)  # M, numerator, denominator
            acc[0] = -cutlass.Float32.inf
            acc[1] = 0.0
            acc[2] = 0.0
            for s in cutlass.range(num_splits, unroll=1):
                acc[0] = cute.arch.fmax(acc[0], mLse[s, r])
            m = acc[0]
            m_use = 0.0 if m == -cutlass.Float32.inf else m
            for s in cutlass.range(num_splits, unroll=1):
                w = cute.math.exp2(mLse[s, r] - m_use, fastmath=True)
                acc[1] = acc[1] + w * mPart[s, r, col]
                acc[2] = acc[2] + w
            out = 0.0 if acc[2] == 0.0 else acc[1] / acc[2]
            mOut[r, col] = cutlass.BFloat16(out)
