"""The blocks of one split, for the position-invariant tree attention (`triton_invariant_attention.py`):
a tile's rows, the keys they share (one load, one dot), the keys that differ per token (a dot per
token with its own gathered keys), and the online softmax both feed, in an order fixed per row:

    s = q·k^T · scale, masked past p;  m' = max(m, max s);  P = 2^(s - m') in V's dtype
    l' = l·2^(m - m') + P·1;           acc' = (acc·2^(m - m')) + P·V
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..core.invariant import mm


@triton.jit
def _online_softmax(s, m_i, l_i, ones, BY_SUM: tl.constexpr):
    """One block of scores s [BLOCK_M, BLOCK_N] (log2 units, -inf where masked) into the running
    max m [BLOCK_M] and sums l [BLOCK_M, 16] -> (P in V's dtype, rescale factor, m', l').

    The row sum of P goes through the same matrix unit as P·V (l' = P·1 + l·2^(m - m'), every
    column of l the same), not a register reduction whose order follows the tile's thread layout;
    the max is exact in any order. So no step of a row depends on BLOCK_M or the warp count."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None]).to(ones.dtype)
    l_new = mm(p, ones, l_i * alpha[:, None], BY_SUM)
    return p, alpha, m_new, l_new


@triton.jit
def _virtual_rows(SLOTS, ANC, u, offs_n, prefix_len, pos_u, stride_anc, CHAIN: tl.constexpr):
    """Pool rows of token u's virtual keys offs_n [BLOCK_N] and which of them exist (<= pos_u)."""
    ok = offs_n <= pos_u
    if CHAIN:
        logical = offs_n
    else:
        depth = offs_n - prefix_len
        anc = tl.load(ANC + u * stride_anc + depth, mask=ok & (depth >= 0), other=0)
        logical = tl.where(depth >= 0, prefix_len + anc, offs_n)
    rows = tl.load(SLOTS + logical, mask=ok, other=0).to(tl.int64)
    return rows, ok


@triton.jit
def _tile_rows(Q, POS, tile, kvh, n_queries, stride_qn, stride_qh,
               GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """A tile's packed rows: token [BLOCK_M], head [BLOCK_M], which exist, position [BLOCK_M],
    q [BLOCK_M, D], its first and last token, and its key blocks (the max over its rows)."""
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # packed rows
    tok = offs_m // GROUP  # [BLOCK_M] query token
    head = kvh * GROUP + offs_m % GROUP  # [BLOCK_M] query head
    row_ok = tok < n_queries
    pos = tl.load(POS + tok, mask=row_ok, other=0)  # [BLOCK_M] absolute position: virtual keys 0..pos
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + tok[:, None] * stride_qn + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)  # [BLOCK_M, D]
    tok_lo = (tile * BLOCK_M) // GROUP
    tok_hi = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // GROUP, n_queries - 1)
    n_blocks = tl.cdiv(tl.max(tl.where(row_ok, pos, 0)) + 1, BLOCK_N)
    return tok, head, row_ok, pos, q, tok_lo, tok_hi, n_blocks


@triton.jit
def _shared_blocks(q, K, V, SLOTS, pos, m_i, l_i, acc, b_lo, b_hi, kv_len, qk_scale, stride_kr, stride_vr,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                   BY_SUM: tl.constexpr):
    """Blocks [b_lo, b_hi) of keys every row of the tile shares (virtual == logical): one load, one
    dot. Not MASKED: the caller knows every key of them is committed and visible to every row (the
    masks would select every key: the same bits without them)."""
    offs_d = tl.arange(0, HEAD_DIM)
    ones = tl.full([BLOCK_N, 16], 1.0, V.dtype.element_ty)
    for b in range(b_lo, b_hi):
        offs_n = b * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] virtual (= logical) keys
        if MASKED:
            in_kv = offs_n < kv_len
            rows = tl.load(SLOTS + offs_n, mask=in_kv, other=0).to(tl.int64)
            k = tl.load(K + rows[:, None] * stride_kr + offs_d[None, :], mask=in_kv[:, None], other=0.0)  # [BLOCK_N, D]
            v = tl.load(V + rows[:, None] * stride_vr + offs_d[None, :], mask=in_kv[:, None], other=0.0)  # [BLOCK_N, D]
        else:
            rows = tl.load(SLOTS + offs_n).to(tl.int64)
            k = tl.load(K + rows[:, None] * stride_kr + offs_d[None, :])  # [BLOCK_N, D]
            v = tl.load(V + rows[:, None] * stride_vr + offs_d[None, :])  # [BLOCK_N, D]
        s = mm(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), BY_SUM) * qk_scale
        if MASKED:
            s = tl.where(offs_n[None, :] <= pos[:, None], s, float("-inf"))
        p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, ones, BY_SUM)
        acc = mm(p, v, acc * alpha[:, None], BY_SUM)
    return m_i, l_i, acc


@triton.jit
def _gathered_blocks(q, K, V, SLOTS, ANC, POS, tok, pos, tok_lo, tok_hi, m_i, l_i, acc, b_lo, b_hi, prefix_len,
                     qk_scale, stride_anc, stride_kr, stride_vr,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CHAIN: tl.constexpr,
                     BY_SUM: tl.constexpr):
    """Blocks [b_lo, b_hi) whose virtual keys differ per token: for each token u of the tile, a dot
    with u's own keys, kept for u's rows. Same dots as `_shared_blocks` row by row."""
    offs_d = tl.arange(0, HEAD_DIM)
    ones = tl.full([BLOCK_N, 16], 1.0, V.dtype.element_ty)
    for b in range(b_lo, b_hi):
        offs_n = b * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] virtual keys
        s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for u in range(tok_lo, tok_hi + 1):
            pos_u = tl.load(POS + u)
            rows, ok = _virtual_rows(SLOTS, ANC, u, offs_n, prefix_len, pos_u, stride_anc, CHAIN)
            k = tl.load(K + rows[:, None] * stride_kr + offs_d[None, :], mask=ok[:, None], other=0.0)
            s = tl.where((tok == u)[:, None], mm(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), BY_SUM), s)
        s = s * qk_scale
        s = tl.where(offs_n[None, :] <= pos[:, None], s, float("-inf"))
        p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, ones, BY_SUM)
        scaled = acc * alpha[:, None]
        for u in range(tok_lo, tok_hi + 1):
            pos_u = tl.load(POS + u)
            rows, ok = _virtual_rows(SLOTS, ANC, u, offs_n, prefix_len, pos_u, stride_anc, CHAIN)
            v = tl.load(V + rows[:, None] * stride_vr + offs_d[None, :], mask=ok[:, None], other=0.0)
            acc = tl.where((tok == u)[:, None], mm(p, v, scaled, BY_SUM), acc)
    return m_i, l_i, acc
