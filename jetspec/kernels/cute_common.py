"""Device helpers shared by the CuTe DSL kernels of the `cute` backend (imports cutlass)."""

from __future__ import annotations

from collections.abc import Callable

import cutlass
import cutlass.cute as cute  # noqa: PLR0402 (the DSL idiom)
from cutlass.cute.runtime import make_ptr

LOG2E = 1.4426950408889634

try:  # cutlass >= 4.5 moved it; the old name still works there (deprecated)
    from cutlass.memory import SmemAllocator
except ImportError:  # pragma: no cover
    from cutlass.utils import SmemAllocator


def ptr(dtype, address: int):
    """A 16-byte aligned global-memory pointer for a kernel argument."""
    return make_ptr(dtype, address, cute.AddressSpace.gmem, assumed_align=16)


def mn_view(acc: cute.Tensor) -> cute.Tensor:
    """An MMA accumulator partition seen as (rows, cols) of this thread.

    warp MMA (mma.sync m16n8):   ((2, 2), MMA_M, MMA_N)     -> ((2, MMA_M), (2, MMA_N))
    warpgroup MMA (wgmma m64nN): ((2, 2, V), MMA_M, MMA_N)  -> ((2, MMA_M), (2, V, MMA_N))
    In both, mode 0 of the atom is (column pair, row +8[, next 8 columns])."""
    cm = cute.make_layout(acc.layout.shape)
    if cutlass.const_expr(cute.rank(cm.shape[0]) == 3):
        mn = cute.make_layout(
            ((cm.shape[0][1], cm.shape[1]), (cm.shape[0][0], cm.shape[0][2], cm.shape[2])),
            stride=((cm.stride[0][1], cm.stride[1]), (cm.stride[0][0], cm.stride[0][2], cm.stride[2])))
    else:
        mn = cute.make_layout(
            ((cm.shape[0][1], cm.shape[1]), (cm.shape[0][0], cm.shape[2])),
            stride=((cm.stride[0][1], cm.stride[1]), (cm.stride[0][0], cm.stride[2])))
    return cute.make_tensor(acc.iterator, cute.composition(acc.layout, mn))


def _quad(val, op: Callable):
    """Reduce over the 4 threads of an MMA quad that share a row."""
    val = op(val, cute.arch.shuffle_sync_bfly(val, offset=2, mask=-1, mask_and_clamp=31))
    return op(val, cute.arch.shuffle_sync_bfly(val, offset=1, mask=-1, mask_and_clamp=31))


def quad_max(val):
    return _quad(val, lambda x, y: cute.arch.fmax(x, y))


def quad_sum(val):
    return _quad(val, lambda x, y: x + y)


@cute.jit
def global_views(p_q: cute.Pointer, p_k: cute.Pointer, p_v: cute.Pointer, p_slots: cute.Pointer,
                 p_sizes: cute.Pointer, p_prefix: cute.Pointer, p_o: cute.Pointer, p_lse: cute.Pointer,
                 n_queries: cutlass.Int32, n_rows: cutlass.Int32, n_slots: cutlass.Int32, num_splits: cutlass.Int32,
                 hq: cutlass.Constexpr, hkv: cutlass.Constexpr, d: cutlass.Constexpr):
    """The kernels' global tensors: Q [N, Hq, D], K and V rows [R, Hkv, D], slots [>= T + N],
    subtree sizes [N], T [1], partial O [S, N, Hq, D] and lse [S, N, Hq]."""
    return (
        cute.make_tensor(p_q, cute.make_layout((n_queries, hq, d), stride=(hq * d, d, 1))),
        cute.make_tensor(p_k, cute.make_layout((n_rows, hkv, d), stride=(hkv * d, d, 1))),
        cute.make_tensor(p_v, cute.make_layout((n_rows, hkv, d), stride=(hkv * d, d, 1))),
        cute.make_tensor(p_slots, cute.make_layout((n_slots,))),
        cute.make_tensor(p_sizes, cute.make_layout((n_queries,))),
        cute.make_tensor(p_prefix, cute.make_layout((1,))),
        cute.make_tensor(p_o, cute.make_layout((num_splits, n_queries, hq, d), stride=(n_queries * hq * d, hq * d, d, 1))),
        cute.make_tensor(p_lse, cute.make_layout((num_splits, n_queries, hq), stride=(n_queries * hq, hq, 1))),
    )


@cute.jit
def key_blocks(mPrefix: cute.Tensor, n_queries: cutlass.Int32, tile: cutlass.Int32, split: cutlass.Int32,
               num_splits: cutlass.Int32, rows: cutlass.Constexpr, group: cutlass.Constexpr, block_n: cutlass.Constexpr):
    """(T, kv_end, b_lo, b_hi): the key blocks [b_lo, b_hi) of BLOCK_N keys this CTA's split covers.
    Causal skip: keys at or past kv_end = T + (last token of the tile) + 1 are invisible to the
    whole tile; the remaining ceil(kv_end / BLOCK_N) blocks are cut into num_splits ranges."""
    prefix_len = mPrefix[0]
    last_tok = cutlass.min((tile * rows + rows - 1) // group, n_queries - 1)
    kv_end = prefix_len + last_tok + 1
    n_blocks = (kv_end + block_n - 1) // block_n
    per_split = (n_blocks + num_splits - 1) // num_splits
    b_lo = split * per_split
    return prefix_len, kv_end, b_lo, cutlass.min(b_lo + per_split, n_blocks)


@cute.jit
def load_q_tile(mQ: cute.Tensor, sQ: cute.Tensor, gather: cute.TiledCopy, tidx: cutlass.Int32, tile: cutlass.Int32,
                kvh: cutlass.Int32, rows: cutlass.Constexpr, group: cutlass.Constexpr):
    """The tile's packed Q rows (row r = token r // G, head kvh * G + r % G) from [N, Hq, D] into
    shared memory with 16-byte loads; rows past the last token are zero."""
    n_queries = mQ.shape[0]
    d = mQ.shape[2]
    thr = gather.get_slice(tidx)
    tQsQ = thr.partition_D(sQ)
    tQcQ = thr.partition_D(cute.make_identity_tensor((rows, d)))
    for i in cutlass.range_constexpr(cute.size(tQsQ, mode=[1])):
        for j in cutlass.range_constexpr(cute.size(tQsQ, mode=[2])):
            row, col = tQcQ[0, i, j]
            r = tile * rows + row
            tok = r // group
            if tok < n_queries:
                cute.autovec_copy(cute.local_tile(mQ[tok, kvh * group + r % group, None], (8,), (col // 8,)), tQsQ[None, i, j])
            else:
                tQsQ[None, i, j].fill(0)


@cute.jit
def online_softmax(acc_S_mn: cute.Tensor, acc_O_mn: cute.Tensor, row_max: cute.Tensor, row_sum: cute.Tensor):
    """One block of the online softmax, log2 domain, on scaled scores S (already masked to -inf):

        m' = max(m, max_c S[r, c]),  P = 2^(S - m'),  l' = l 2^(m - m') + sum_c P,  O *= 2^(m - m')

    acc_S becomes P (unnormalised); a row with no visible key yet keeps m = -inf and stays NaN-free."""
    for r in cutlass.range_constexpr(cute.size(row_max)):
        s_row = acc_S_mn[r, None].load()
        m_cur = quad_max(s_row.reduce(cute.ReductionOp.MAX, -cutlass.Float32.inf, 0))
        m_new = cute.arch.fmax(row_max[r], m_cur)
        m_use = 0.0 if m_new == -cutlass.Float32.inf else m_new
        p_row = cute.math.exp2(s_row - m_use, fastmath=True)
        alpha = cute.math.exp2(row_max[r] - m_use, fastmath=True)
        row_sum[r] = row_sum[r] * alpha + p_row.reduce(cute.ReductionOp.ADD, cutlass.Float32.zero, 0)
        row_max[r] = m_new
        acc_O_mn[r, None] = acc_O_mn[r, None].load() * alpha
        acc_S_mn[r, None] = p_row


@cute.jit
def store_partial(acc_O_mn: cute.Tensor, tOcO_mn: cute.Tensor, row_max: cute.Tensor, row_sum: cute.Tensor,
                  mO: cute.Tensor, mL: cute.Tensor, tile: cutlass.Int32, kvh: cutlass.Int32, split: cutlass.Int32,
                  rows: cutlass.Constexpr, group: cutlass.Constexpr):
    """Epilogue: this split's O = acc / l and lse = m + log2(l) (fp32) straight from registers."""
    n_queries = mO.shape[1]
    for r in cutlass.range_constexpr(cute.size(row_sum)):
        total = quad_sum(row_sum[r])
        inv = 1.0 if total == 0.0 else 1.0 / total
        rr = tile * rows + tOcO_mn[r, 0][0]
        tok = rr // group
        head = kvh * group + rr % group
        if tok < n_queries:
            for c in cutlass.range_constexpr(cute.size(tOcO_mn, mode=[1])):
                mO[split, tok, head, tOcO_mn[0, c][1]] = acc_O_mn[r, c] * inv
            lse = -cutlass.Float32.inf if total == 0.0 else row_max[r] + cute.math.log2(total, fastmath=False)
            mL[split, tok, head] = lse
