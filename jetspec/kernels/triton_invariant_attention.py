"""Position-invariant paged tree attention: the `triton` backend's kernel under `exact = true`.

A query at absolute position p sees p + 1 keys: the T committed ones, then its ancestors in the
tree, root first. Call the k-th of them (0 <= k <= p) its **virtual key k**: for k < T the
committed key k, for k >= T the ancestor at depth k - T. A one-token step at position p sees the
same p + 1 keys in the same order (its prefix is the committed path). The kernel makes the
reduction over a row's keys a function of p alone:

    blocks   [b·BN, (b+1)·BN) of virtual keys, b = 0, 1, ... (BN fixed: BLOCK_N)
    splits   [s·SB, (s+1)·SB) of blocks (SB fixed: split_blocks), merged in the order s = 0, 1, ...
    in a block:  s = q·k^T · scale,  masked past p;   m' = max(m, max s);  P = 2^(s - m') in V's dtype
                 l' = l·2^(m - m') + P·1;             acc' = (acc·2^(m - m')) + P·V
    split merge: out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M),  M = max_s lse_s

Whatever the forward (a decode step, a tree of any shape, a prefill chunk, CUDA-graph padding),
row p's arithmetic is the same sequence of operations on the same values. A block or split with
no visible key leaves (m, l, acc) bit-for-bit unchanged (P = 0, factor 2^0 = 1), so rows with
shorter or longer neighbours in their tile are unaffected.

How a tile of rows (packed (token, head) pairs, GQA) gets each row's virtual keys:
* blocks wholly below T hold committed keys, the same for every row: one K/V load, one dot;
* blocks reaching T or past hold ancestors, which differ per token: for each token u of the tile
  the kernel gathers u's own virtual keys (through `ancestors[u, k - T]`, then the slot map) and
  keeps that dot's rows of u. A row's dot product uses only its own row of Q and its own keys,
  so the two ways give it the same bits. A chain (prefill) needs no gather: its virtual keys are
  its logical ones.

A tile's per-token blocks cost one dot per token, so large trees run in two launches: the shared
blocks in large tiles (which read the prefix once per tile), then the per-token blocks in tiles
of TAIL_ROWS rows, resuming each row's running state (m, l, acc), stored exactly in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.invariant import LAUNCH, interpreted, mm
from .triton_tree_attention import LOG2E, NEG_BIG, _counters

BLOCK_N = 64  # fixed: key blocks are part of the reduction order


def row_tiles(rows: int) -> tuple[int, int]:
    """(BLOCK_M, warps) for `rows` packed (token, head) rows. Free to follow the shape: a row's
    arithmetic does not depend on it (see `_online_softmax`)."""
    if interpreted() or rows <= 16:
        return 16, 4
    return (64, 4) if rows <= 64 else (128, 8)


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
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BY_SUM: tl.constexpr):
    """Blocks [b_lo, b_hi) of keys every row of the tile shares (virtual == logical): one load, one dot."""
    offs_d = tl.arange(0, HEAD_DIM)
    ones = tl.full([BLOCK_N, 16], 1.0, V.dtype.element_ty)
    for b in range(b_lo, b_hi):
        offs_n = b * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] virtual (= logical) keys
        in_kv = offs_n < kv_len
        rows = tl.load(SLOTS + offs_n, mask=in_kv, other=0).to(tl.int64)
        k = tl.load(K + rows[:, None] * stride_kr + offs_d[None, :], mask=in_kv[:, None], other=0.0)  # [BLOCK_N, D]
        v = tl.load(V + rows[:, None] * stride_vr + offs_d[None, :], mask=in_kv[:, None], other=0.0)  # [BLOCK_N, D]
        s = mm(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), BY_SUM) * qk_scale
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


@triton.jit
def _finish_split(m_i, l_i, acc, O, O_PART, LSE_PART, split, tok, head, row_ok, n_queries, hq,
                  stride_on, stride_oh, HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr):
    """o = acc / l: the output (one split) or split `split`'s partial o [S, N, Hq, D], lse [S, N, Hq]
    (an empty split writes o = 0, lse = -inf)."""
    offs_d = tl.arange(0, HEAD_DIM)
    l_i = tl.max(l_i, 1)  # [BLOCK_M]: its columns are equal
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    if SPLIT:
        flat = (split * n_queries + tok) * hq + head
        tl.store(O_PART + flat[:, None] * HEAD_DIM + offs_d[None, :], out, mask=row_ok[:, None])
        lse = tl.where(l_i > 0, m_i + tl.math.log2(l_safe), float("-inf"))
        tl.store(LSE_PART + flat, lse, mask=row_ok)
    else:
        tl.store(O + tok[:, None] * stride_on + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _invariant_attention_fwd(
    Q, K, V, SLOTS, POS, ANC, PREFIX, O, O_PART, LSE_PART, M_STATE, L_STATE, ACC_STATE, COUNTERS,
    n_queries, qk_scale, stride_anc,
    stride_qn, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_on, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT_BLOCKS: tl.constexpr, CHAIN: tl.constexpr, SPLIT: tl.constexpr, FUSED: tl.constexpr,
    TAIL: tl.constexpr, BY_SUM: tl.constexpr,
):
    """Program (tile, kv head, split): the split's blocks for the tile's rows. With TAIL the
    per-token blocks too, then (FUSED) the last split to arrive merges. Without TAIL (large trees:
    phase 1 of 2) only the shared blocks: the split holding the first per-token block leaves its
    running state (m, l, acc) for `_invariant_tail_fwd`, every split below it its partial."""
    tile, kvh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    prefix_len = tl.load(PREFIX)  # T, from memory: a captured graph serves any T
    hq = tl.num_programs(1) * GROUP
    tok, head, row_ok, pos, q, tok_lo, tok_hi, n_blocks = _tile_rows(
        Q, POS, tile, kvh, n_queries, stride_qn, stride_qh, GROUP, HEAD_DIM, BLOCK_M, BLOCK_N)
    b_lo = split * SPLIT_BLOCKS
    b_hi = tl.minimum(b_lo + SPLIT_BLOCKS, n_blocks)
    b_shared = prefix_len // BLOCK_N  # blocks [0, b_shared) hold committed keys only
    if CHAIN:
        b_shared = b_hi  # virtual == logical for every row: one load serves the tile throughout
    K += kvh * stride_kh
    V += kvh * stride_vh
    m_i = tl.full([BLOCK_M], NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_M, 16], tl.float32)  # 16 equal columns: the smallest dot output
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    m_i, l_i, acc = _shared_blocks(q, K, V, SLOTS, pos, m_i, l_i, acc, b_lo, tl.minimum(b_hi, b_shared),
                                   prefix_len + n_queries, qk_scale, stride_kr, stride_vr,
                                   HEAD_DIM, BLOCK_M, BLOCK_N, BY_SUM)
    if TAIL:
        m_i, l_i, acc = _gathered_blocks(q, K, V, SLOTS, ANC, POS, tok, pos, tok_lo, tok_hi, m_i, l_i, acc,
                                         tl.maximum(b_lo, b_shared), b_hi, prefix_len, qk_scale, stride_anc,
                                         stride_kr, stride_vr, HEAD_DIM, BLOCK_M, BLOCK_N, CHAIN, BY_SUM)
        _finish_split(m_i, l_i, acc, O, O_PART, LSE_PART, split, tok, head, row_ok, n_queries, hq,
                      stride_on, stride_oh, HEAD_DIM, SPLIT)
        if FUSED:  # the last split of this (tile, kv head) to arrive merges them all
            tl.debug_barrier()
            counter = COUNTERS + tile * tl.num_programs(1) + kvh
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if arrived == tl.num_programs(2) - 1:
                tl.debug_barrier()
                _merge_splits(O_PART, LSE_PART, O, tok, head, row_ok, tl.arange(0, HEAD_DIM), n_queries, hq,
                              tl.num_programs(2), stride_on, stride_oh, BLOCK_M, HEAD_DIM)
                tl.atomic_xchg(counter, 0)
    else:
        if split == b_shared // SPLIT_BLOCKS:  # running state, exact in fp32: l's columns are equal
            flat = tok * hq + head
            tl.store(M_STATE + flat, m_i, mask=row_ok)
            tl.store(L_STATE + flat, tl.max(l_i, 1), mask=row_ok)
            tl.store(ACC_STATE + flat[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], acc, mask=row_ok[:, None])
        else:  # a split below it (or an empty one past it, which the tail may overwrite)
            _finish_split(m_i, l_i, acc, O, O_PART, LSE_PART, split, tok, head, row_ok, n_queries, hq,
                          stride_on, stride_oh, HEAD_DIM, SPLIT)


@triton.jit
def _invariant_tail_fwd(
    Q, K, V, SLOTS, POS, ANC, PREFIX, O, O_PART, LSE_PART, M_STATE, L_STATE, ACC_STATE,
    n_queries, num_splits, qk_scale, stride_anc,
    stride_qn, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_on, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT_BLOCKS: tl.constexpr, SPLIT: tl.constexpr, BY_SUM: tl.constexpr,
):
    """Phase 2 of 2 for large trees, program (small tile, kv head): the per-token blocks, in small
    tiles (a tile's tokens each cost a dot per block). Split b_shared // SPLIT_BLOCKS resumes from
    phase 1's state; every later split the tile reaches starts afresh; then all splits are merged.
    Row by row the same operations as one `_invariant_attention_fwd` with TAIL."""
    tile, kvh = tl.program_id(0), tl.program_id(1)
    prefix_len = tl.load(PREFIX)
    hq = tl.num_programs(1) * GROUP
    tok, head, row_ok, pos, q, tok_lo, tok_hi, n_blocks = _tile_rows(
        Q, POS, tile, kvh, n_queries, stride_qn, stride_qh, GROUP, HEAD_DIM, BLOCK_M, BLOCK_N)
    b_shared = prefix_len // BLOCK_N
    first = b_shared // SPLIT_BLOCKS
    K += kvh * stride_kh
    V += kvh * stride_vh
    offs_d = tl.arange(0, HEAD_DIM)
    flat = tok * hq + head
    for split in range(first, tl.cdiv(n_blocks, SPLIT_BLOCKS)):
        if split == first:
            m_i = tl.load(M_STATE + flat, mask=row_ok, other=NEG_BIG)
            l_i = tl.zeros([BLOCK_M, 16], tl.float32) + tl.load(L_STATE + flat, mask=row_ok, other=0.0)[:, None]
            acc = tl.load(ACC_STATE + flat[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        else:
            m_i = tl.full([BLOCK_M], NEG_BIG, tl.float32)
            l_i = tl.zeros([BLOCK_M, 16], tl.float32)
            acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        b_lo = split * SPLIT_BLOCKS
        m_i, l_i, acc = _gathered_blocks(q, K, V, SLOTS, ANC, POS, tok, pos, tok_lo, tok_hi, m_i, l_i, acc,
                                         tl.maximum(b_lo, b_shared), tl.minimum(b_lo + SPLIT_BLOCKS, n_blocks),
                                         prefix_len, qk_scale, stride_anc, stride_kr, stride_vr,
                                         HEAD_DIM, BLOCK_M, BLOCK_N, False, BY_SUM)
        _finish_split(m_i, l_i, acc, O, O_PART, LSE_PART, split, tok, head, row_ok, n_queries, hq,
                      stride_on, stride_oh, HEAD_DIM, SPLIT)
    if SPLIT:
        tl.debug_barrier()  # this program's partials, visible to all its threads
        _merge_splits(O_PART, LSE_PART, O, tok, head, row_ok, offs_d, n_queries, hq, num_splits,
                      stride_on, stride_oh, BLOCK_M, HEAD_DIM)


@triton.jit
def _merge_splits(O_PART, LSE_PART, O, tok, head, row_ok, offs_d, n_queries, hq, num_splits, stride_on, stride_oh,
                  BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M) over s = 0, 1, ... in order; an empty
    split (lse = -inf, o = 0) adds exact zeros."""
    rows0 = tok * hq + head  # [BLOCK_M] row of (token, head) in split 0
    lse_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in range(0, num_splits):
        lse_s = tl.load(LSE_PART + s * n_queries * hq + rows0, mask=row_ok, other=float("-inf"), cache_modifier=".cg")
        lse_max = tl.maximum(lse_max, lse_s)
    lse_ref = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    num = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    den = tl.zeros([BLOCK_M], tl.float32)
    for s in range(0, num_splits):
        flat_s = s * n_queries * hq + rows0
        w = tl.math.exp2(tl.load(LSE_PART + flat_s, mask=row_ok, other=float("-inf"), cache_modifier=".cg") - lse_ref)
        o_s = tl.load(O_PART + flat_s[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0,
                      cache_modifier=".cg")
        num += w[:, None] * o_s
        den += w
    out = num / tl.where(den > 0, den, 1.0)[:, None]
    tl.store(O + tok[:, None] * stride_on + head[:, None] * stride_oh + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None])


@triton.jit
def _merge_kernel(O_PART, LSE_PART, O, n_queries, num_splits, stride_on, stride_oh,
                  GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """The split merge as its own launch (when no arrival counters could be had)."""
    tile, kvh = tl.program_id(0), tl.program_id(1)
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = offs_m // GROUP
    head = kvh * GROUP + offs_m % GROUP
    _merge_splits(O_PART, LSE_PART, O, tok, head, tok < n_queries, tl.arange(0, HEAD_DIM), n_queries,
                  tl.num_programs(1) * GROUP, num_splits, stride_on, stride_oh, BLOCK_M, HEAD_DIM)


def ancestor_table(positions: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
    """positions [N] int64 (T + depth, DFS pre-order), prefix_len [1] -> ancestors [N, N] int32:
    ancestors[i, k] = the index of node i's ancestor at depth k, for k <= depth(i).

    In pre-order that ancestor is the last node of depth k at or before i (a later one would lie
    inside the ancestor's subtree, where every other node is deeper): a running max over i of
    "j if depth(j) == k". Device ops only, no host sync (CUDA graphs capture it)."""
    n = positions.numel()
    depth = positions - prefix_len.to(positions.dtype)  # [N]
    ar = torch.arange(n, device=positions.device)
    last = torch.where(depth[:, None] == ar[None, :], ar[:, None], -1)  # [N (node j), N (depth k)]
    return torch.cummax(last, dim=0).values.to(torch.int32)  # [N, N]


TAIL_ROWS = 16  # row tile of phase 2: each token of a tile costs one dot per per-token block


@torch.library.custom_op("jetspec::invariant_tree_attention", mutates_args=())
def invariant_tree_attention(
    q: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, slots: torch.Tensor,
    positions: torch.Tensor, ancestors: torch.Tensor, prefix_len: torch.Tensor, scale: float,
    split_blocks: int, chain: bool,
) -> torch.Tensor:
    """q [N, Hq, D]; k_rows, v_rows [R, Hkv, D]; slots [C] int32 (C = the cache's capacity: it
    fixes the split count, so one launch shape serves any T); positions [N] int64; ancestors
    [N, N] int32 (unused when `chain`); prefix_len [1] int32 -> [N, Hq, D].

    Up to TAIL_ROWS packed rows (decode steps, small trees) and chains: one launch does it all.
    Larger trees: phase 1 runs the shared blocks in large tiles, phase 2 the per-token blocks in
    tiles of TAIL_ROWS rows and the merge. Which way is taken changes no bit of any row."""
    n, hq, d = q.shape
    hkv = k_rows.shape[1]
    group = hq // hkv
    out = torch.empty_like(q)  # [N, Hq, D]
    block_m, warps = row_tiles(n * group)
    tiles = triton.cdiv(n * group, block_m)
    num_splits = triton.cdiv(triton.cdiv(slots.numel(), BLOCK_N), split_blocks)
    split = num_splits > 1
    two_phase = not chain and n * group > TAIL_ROWS
    if split:
        o_part = torch.empty(num_splits, n, hq, d, dtype=torch.float32, device=q.device)  # [S, N, Hq, D]
        lse_part = torch.empty(num_splits, n, hq, dtype=torch.float32, device=q.device)  # [S, N, Hq]
    else:
        o_part = lse_part = out  # unused
    if two_phase:  # phase 1's running state of the split where per-token blocks begin
        m_state = torch.empty(n, hq, dtype=torch.float32, device=q.device)  # [N, Hq]
        l_state = torch.empty(n, hq, dtype=torch.float32, device=q.device)  # [N, Hq]
        acc_state = torch.empty(n, hq, d, dtype=torch.float32, device=q.device)  # [N, Hq, D]
    else:
        m_state = l_state = acc_state = out  # unused
    counters = _counters(q.device, tiles * hkv) if split and not two_phase else None
    fused = counters is not None
    strides = (q.stride(0), q.stride(1), k_rows.stride(0), k_rows.stride(1), v_rows.stride(0), v_rows.stride(1),
               out.stride(0), out.stride(1))
    _invariant_attention_fwd[(tiles, hkv, num_splits)](
        q, k_rows, v_rows, slots, positions, ancestors, prefix_len, out, o_part, lse_part, m_state, l_state,
        acc_state, counters if fused else slots, n, scale * LOG2E, ancestors.stride(0), *strides,
        GROUP=group, HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=BLOCK_N, SPLIT_BLOCKS=split_blocks, CHAIN=chain,
        SPLIT=split, FUSED=fused, TAIL=not two_phase, BY_SUM=interpreted(), num_warps=warps, num_stages=3, **LAUNCH,
    )
    if two_phase:
        _invariant_tail_fwd[(triton.cdiv(n * group, TAIL_ROWS), hkv)](
            q, k_rows, v_rows, slots, positions, ancestors, prefix_len, out, o_part, lse_part, m_state, l_state,
            acc_state, n, num_splits, scale * LOG2E, ancestors.stride(0), *strides,
            GROUP=group, HEAD_DIM=d, BLOCK_M=TAIL_ROWS, BLOCK_N=BLOCK_N, SPLIT_BLOCKS=split_blocks, SPLIT=split,
            BY_SUM=interpreted(), num_warps=4, num_stages=3, **LAUNCH,
        )
    elif split and not fused:
        _merge_kernel[(tiles, hkv)](o_part, lse_part, out, n, num_splits, out.stride(0), out.stride(1),
                                    GROUP=group, HEAD_DIM=d, BLOCK_M=block_m, num_warps=warps, **LAUNCH)
    return out


@invariant_tree_attention.register_fake
def _(q, k_rows, v_rows, slots, positions, ancestors, prefix_len, scale, split_blocks, chain):
    return torch.empty_like(q)
