"""How the position-invariant tree attention (`triton_invariant_attention.py`) turns a row's splits
into its output, in an order fixed by the row's position alone:

    a split:  o_s = acc / l,  lse_s = m + log2 l           (empty: o = 0, lse = -inf)
    a fold:   partials taken in order into (M, num, den):
              M' = max(M, lse),  num' = num·2^(M - M') + 2^(lse - M')·o,  den' = den·2^(M - M') + 2^(lse - M')
              result o = num / den,  lse = M + log2 den
    splits fold into groups of SPLIT_GROUP, groups into the output.

Partials (a split's or a group's) and running folds travel between programs in fp32, exactly.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..core.invariant import after_previous_kernel
from .triton_tree_attention import NEG_BIG


@triton.jit
def _split_result(m_i, l_i, acc):
    """A split's (o = acc / l [BLOCK_M, D], lse = m + log2 l [BLOCK_M]); empty: (0, -inf)."""
    l_i = tl.max(l_i, 1)  # [BLOCK_M]: its columns are equal
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    return acc / l_safe[:, None], tl.where(l_i > 0, m_i + tl.math.log2(l_safe), float("-inf"))


@triton.jit
def _fold(big_m, num, den, o, lse):
    """Partial (o, lse) into the running fold (M, num, den), partials taken in order:
        M' = max(M, lse),  num' = num·2^(M - M') + 2^(lse - M')·o,  den' = den·2^(M - M') + 2^(lse - M')
    (2^(x - M') read as 0 while M' = -inf). An empty partial (0, -inf) leaves the fold as it was,
    selected rather than computed (num·1 + 0 would turn a -0 into +0), so folding a row's trailing
    empty splits, however many, changes no bit: a launch may stop at the last split any row of its
    tile reaches."""
    m_new = tl.maximum(big_m, lse)
    ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    c = tl.math.exp2(big_m - ref)
    w = tl.math.exp2(lse - ref)
    empty = lse == float("-inf")
    return m_new, tl.where(empty[:, None], num, num * c[:, None] + w[:, None] * o), tl.where(empty, den, den * c + w)


@triton.jit
def _fold_result(big_m, num, den):
    """A fold's (o = num / den, lse = M + log2 den); empty: (0, -inf)."""
    den_safe = tl.where(den > 0, den, 1.0)
    return num / den_safe[:, None], tl.where(den > 0, big_m + tl.math.log2(den_safe), float("-inf"))


@triton.jit
def _close_group(t_m, t_num, t_den, big_m, num, den):
    """A group's fold into the total fold."""
    o_g, lse_g = _fold_result(big_m, num, den)
    return _fold(t_m, t_num, t_den, o_g, lse_g)


@triton.jit
def _store_part(O_PART, LSE_PART, idx, o, lse, tok, head, row_ok, n_queries, hq, HEAD_DIM: tl.constexpr):
    """Partial `idx` (a split's or a group's) of the tile's rows: o [I, N, Hq, D], lse [I, N, Hq]."""
    flat = (idx * n_queries + tok) * hq + head
    tl.store(O_PART + flat[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], o, mask=row_ok[:, None])
    tl.store(LSE_PART + flat, lse, mask=row_ok)


@triton.jit
def _load_part(O_PART, LSE_PART, idx, tok, head, row_ok, n_queries, hq, HEAD_DIM: tl.constexpr):
    flat = (idx * n_queries + tok) * hq + head
    o = tl.load(O_PART + flat[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], mask=row_ok[:, None], other=0.0,
                cache_modifier=".cg")
    return o, tl.load(LSE_PART + flat, mask=row_ok, other=float("-inf"), cache_modifier=".cg")


@triton.jit
def _store_out(O, out, tok, head, row_ok, stride_on, stride_oh, HEAD_DIM: tl.constexpr):
    tl.store(O + tok[:, None] * stride_on + head[:, None] * stride_oh + tl.arange(0, HEAD_DIM)[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _empty_fold(BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    return (tl.full([BLOCK_M], float("-inf"), tl.float32), tl.zeros([BLOCK_M, HEAD_DIM], tl.float32),
            tl.zeros([BLOCK_M], tl.float32))


@triton.jit
def _empty_split(BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    return (tl.full([BLOCK_M], NEG_BIG, tl.float32), tl.zeros([BLOCK_M, 16], tl.float32),  # l: 16 equal columns
            tl.zeros([BLOCK_M, HEAD_DIM], tl.float32))


@triton.jit
def _fold_parts(O_PART, LSE_PART, lo, hi, tok, head, row_ok, n_queries, hq, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Partials lo, lo+1, ..., hi-1 folded in order into a fresh fold."""
    f_m, f_num, f_den = _empty_fold(BLOCK_M, HEAD_DIM)
    for s in range(lo, hi):
        o, lse = _load_part(O_PART, LSE_PART, s, tok, head, row_ok, n_queries, hq, HEAD_DIM)
        f_m, f_num, f_den = _fold(f_m, f_num, f_den, o, lse)
    return f_m, f_num, f_den


@triton.jit
def _merge_splits(O_PART, LSE_PART, O, tok, head, row_ok, n_queries, hq, num_splits, stride_on, stride_oh,
                  BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, SPLIT_GROUP: tl.constexpr):
    """Splits folded in order into groups of SPLIT_GROUP, groups in order into the output (`_fold`)."""
    t_m, t_num, t_den = _empty_fold(BLOCK_M, HEAD_DIM)
    for g in range(0, tl.cdiv(num_splits, SPLIT_GROUP)):
        f_m, f_num, f_den = _fold_parts(O_PART, LSE_PART, g * SPLIT_GROUP, tl.minimum((g + 1) * SPLIT_GROUP, num_splits),
                                        tok, head, row_ok, n_queries, hq, BLOCK_M, HEAD_DIM)
        t_m, t_num, t_den = _close_group(t_m, t_num, t_den, f_m, f_num, f_den)
    out, _ = _fold_result(t_m, t_num, t_den)
    _store_out(O, out, tok, head, row_ok, stride_on, stride_oh, HEAD_DIM)


@triton.jit
def _merge_kernel(O_PART, LSE_PART, O, n_queries, num_splits, stride_on, stride_oh,
                  GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, SPLIT_GROUP: tl.constexpr,
                  PDL: tl.constexpr):
    """The split merge as its own launch (when no arrival counters could be had)."""
    after_previous_kernel(PDL)
    tile, kvh = tl.program_id(0), tl.program_id(1)
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = offs_m // GROUP
    head = kvh * GROUP + offs_m % GROUP
    _merge_splits(O_PART, LSE_PART, O, tok, head, tok < n_queries, n_queries, tl.num_programs(1) * GROUP, num_splits,
                  stride_on, stride_oh, BLOCK_M, HEAD_DIM, SPLIT_GROUP)
