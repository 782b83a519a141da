"""The blocks of one split, for the position-invariant tree attention (`triton_invariant_attention.py`):
a tile's rows, the keys they share (one load, one dot), the keys that differ per token (a dot per
token with its own gathered keys), and the online softmax both feed, in an order fixed per row:

    s = q·k^T · scale, masked past p;  m' = max(m, max s);  P = 2^(s - m') in V's dtype
    l' = l·2^(m - m') + P·1;           acc' = (acc·2^(m - m')) + P·V
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..core.invariant import mm, prefetch_l2


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
def _virtual_rows(SLOTS, ANC, POS, u0, tok_hi, offs_n, prefix_len, stride_anc, BLOCK_N: tl.constexpr,
                  TOKENS: tl.constexpr):
    """Tokens u0 .. u0 + TOKENS - 1 (those <= tok_hi): the pool rows of their virtual keys offs_n
    [BLOCK_N], side by side [TOKENS * BLOCK_N], and which exist (<= the token's position)."""
    u = u0 + tl.arange(0, TOKENS)  # [TOKENS]
    pos_u = tl.load(POS + u, mask=u <= tok_hi, other=-1)  # [TOKENS]; -1: no token, no keys
    ok = offs_n[None, :] <= pos_u[:, None]  # [TOKENS, BLOCK_N]
    depth = offs_n[None, :] - prefix_len  # [1, BLOCK_N]: keys at or past T are ancestors
    anc = tl.load(ANC + u[:, None] * stride_anc + depth, mask=ok & (depth >= 0), other=0)
    logical = tl.where(depth >= 0, prefix_len + anc, offs_n[None, :])
    rows = tl.load(SLOTS + logical, mask=ok, other=0).to(tl.int64)  # [TOKENS, BLOCK_N]
    return tl.reshape(rows, [TOKENS * BLOCK_N]), tl.reshape(ok, [TOKENS * BLOCK_N])


@triton.jit
def _tile_sequence(TILES, tile, n_queries, PACKED: tl.constexpr):
    """The sequence a tile serves: (its first packed row, its queries N_s, the tile's index within
    it, where its slot map starts in the concatenated one, its index s), from the tile table
    [tiles, 5] of `pack_tiles` (a tile never spans two sequences). One sequence (not PACKED):
    (0, N, tile, 0, 0)."""
    if PACKED:
        row0 = tl.load(TILES + tile * 5)
        n_seq = tl.load(TILES + tile * 5 + 1)
        local = tile - tl.load(TILES + tile * 5 + 2)
        slot0 = tl.load(TILES + tile * 5 + 3)
        seq = tl.load(TILES + tile * 5 + 4)
    else:
        row0 = tile * 0
        n_seq = row0 + n_queries
        local = tile
        slot0 = row0
        seq = row0
    return row0, n_seq, local, slot0, seq


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
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BY_SUM: tl.constexpr):
    """Blocks [b_lo, b_hi) whose virtual keys differ per token. The tile's tokens go TOKENS at a
    time, their keys side by side [TOKENS * BLOCK_N, D]:
        S' = q · K'^T           a row keeps the columns of its own token (the rest: exact zeros added)
        acc' = P' · V' + acc    P' holds a row's P in its own token's columns, zeros elsewhere: the
                                dot's k16 steps before and after them add exact zeros to acc
    so row by row the same dots, in the same order, as `_shared_blocks`."""
    TOKENS: tl.constexpr = 4
    offs_d = tl.arange(0, HEAD_DIM)
    offs_t = tl.arange(0, TOKENS)
    ones = tl.full([BLOCK_N, 16], 1.0, V.dtype.element_ty)
    for b in range(b_lo, b_hi):
        offs_n = b * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] virtual keys
        s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for u0 in range(tok_lo, tok_hi + 1, TOKENS):
            rows, ok = _virtual_rows(SLOTS, ANC, POS, u0, tok_hi, offs_n, prefix_len, stride_anc, BLOCK_N, TOKENS)
            k = tl.load(K + rows[:, None] * stride_kr + offs_d[None, :], mask=ok[:, None], other=0.0)  # [TOKENS*BN, D]
            s_all = mm(q, tl.trans(k), tl.zeros([BLOCK_M, TOKENS * BLOCK_N], tl.float32), BY_SUM)
            mine = (tok - u0)[:, None] == offs_t[None, :]  # [BLOCK_M, TOKENS]
            s += tl.sum(tl.where(mine[:, :, None], tl.reshape(s_all, [BLOCK_M, TOKENS, BLOCK_N]), 0.0), axis=1)
        s = s * qk_scale
        s = tl.where(offs_n[None, :] <= pos[:, None], s, float("-inf"))
        p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, ones, BY_SUM)
        acc = acc * alpha[:, None]
        for u0 in range(tok_lo, tok_hi + 1, TOKENS):
            rows, ok = _virtual_rows(SLOTS, ANC, POS, u0, tok_hi, offs_n, prefix_len, stride_anc, BLOCK_N, TOKENS)
            v = tl.load(V + rows[:, None] * stride_vr + offs_d[None, :], mask=ok[:, None], other=0.0)  # [TOKENS*BN, D]
            mine = (tok - u0)[:, None] == offs_t[None, :]  # [BLOCK_M, TOKENS]
            p_all = tl.where(mine[:, :, None], tl.broadcast_to(p[:, None, :], [BLOCK_M, TOKENS, BLOCK_N]), 0.0)
            acc = mm(tl.reshape(p_all.to(p.dtype), [BLOCK_M, TOKENS * BLOCK_N]), v, acc, BY_SUM)
    return m_i, l_i, acc


@triton.jit
def _prefetch_committed(K, V, SLOTS, PREFIX, kvh, split, n_slots, kv_rows, stride_kr, stride_kh, stride_vr, stride_vh,
                        SPLIT_BLOCKS: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, LINES: tl.constexpr,
                        STEP: tl.constexpr):
    """Ask L2 for the K and V lines (LINES of STEP elements a key) of kv head `kvh`'s committed keys in split
    `split`'s blocks. Run before the wait: T and the slot map are read bypassing L1 (`.cg`: nothing stale
    is left there for the reads after the wait) and may be stale — they only aim a hint, and every row
    is clamped into the pool's [0, kv_rows) and T into the slot map's n_slots, so no address is invalid."""
    prefix_len = tl.minimum(tl.load(PREFIX, cache_modifier=".cg"), n_slots)
    keys = split * SPLIT_BLOCKS * BLOCK_N + tl.arange(0, SPLIT_BLOCKS * BLOCK_N)  # [SB·BN] the split's virtual keys
    live = keys < prefix_len
    rows = tl.load(SLOTS + keys, mask=live, other=0, cache_modifier=".cg")
    rows = tl.minimum(tl.maximum(rows, 0), kv_rows - 1).to(tl.int64)[:, None]  # [SB·BN, 1]
    cols = tl.minimum(tl.arange(0, LINES) * STEP, HEAD_DIM - 1)[None, :]  # [1, LINES] within the key's D
    if split * SPLIT_BLOCKS * BLOCK_N < prefix_len:
        prefetch_l2(K + kvh * stride_kh + rows * stride_kr + cols)
        prefetch_l2(V + kvh * stride_vh + rows * stride_vr + cols)
