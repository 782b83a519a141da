"""Position-invariant paged tree attention: the `triton` backend's kernel under `exact = true`.

A query at absolute position p sees p + 1 keys: the T committed ones, then its ancestors in the
tree, root first. Call the k-th of them (0 <= k <= p) its **virtual key k**: for k < T the
committed key k, for k >= T the ancestor at depth k - T. A one-token step at position p sees the
same p + 1 keys in the same order (its prefix is the committed path). The kernel makes the
reduction over a row's keys a function of p alone:

    blocks   [b·BN, (b+1)·BN) of virtual keys, b = 0, 1, ... (BN fixed: BLOCK_N)
    splits   [s·SB, (s+1)·SB) of blocks (SB fixed: split_blocks), each giving (o_s, lse_s)
    groups   [g·SG, (g+1)·SG) of splits (SG fixed: SPLIT_GROUP)
    in a block:  s = q·k^T · scale,  masked past p;   m' = max(m, max s);  P = 2^(s - m') in V's dtype
                 l' = l·2^(m - m') + P·1;             acc' = (acc·2^(m - m')) + P·V
    a split:     o_s = acc / l,  lse_s = m + log2 l
    folds:       a group folds its splits in order, the output folds the groups in order (`_fold`):
                 M' = max(M, lse),  num' = num·2^(M - M') + 2^(lse - M')·o,  den' = den·2^(M - M') + 2^(lse - M')
                 result o = num / den,  lse = M + log2 den

Whatever the forward (a decode step, a tree of any shape, a prefill chunk, CUDA-graph padding),
row p's arithmetic is the same sequence of operations on the same values. A block or split with
no visible key leaves (m, l, acc) bit-for-bit unchanged (P = 0, factor 2^0 = 1), so rows with
shorter or longer neighbours in their tile are unaffected.

How a tile of rows (packed (token, head) pairs, GQA) gets each row's virtual keys:
* blocks wholly below T hold committed keys, the same for every row: one K/V load, one dot;
* blocks reaching T or past hold ancestors, which differ per token: the kernel gathers each
  token's own virtual keys (through `ancestors[u, k - T]`, then the slot map), four tokens side by
  side in one dot, and keeps for a row its own token's part (`_gathered_blocks`). A row's dot
  product uses only its own row of Q and its own keys, so the two ways give it the same bits. A chain (prefill) needs no gather: its virtual keys are
  its logical ones.

Who computes what is free, the arithmetic is not. Decode steps and small trees: a program per
split, then a fold of the splits' partials. Large trees (a tile's per-token blocks cost a dot per four
tokens) run in two launches: the shared blocks in large tiles (which read the prefix once per tile),
a program per split or per group (folding its splits in registers: no partial traffic), then the
per-token blocks in tiles of TAIL_ROWS rows, which resume each row's running state (m, l, acc) and
fold (M, num, den), stored exactly in fp32, and finish the folds.

Packed batches (`packed_invariant_attention`, PACKED; batched decoding): the rows of S sequences
end to end over one shared page pool. A tile table (`pack_tiles`, as the free-order kernel's)
gives each tile its sequence — first row, N_s, T_s, where its slot map starts — and a tile never
spans two sequences, so each row runs exactly the arithmetic above over its own sequence's
virtual keys. The whole batch takes one launch form (`invariant_launch_forms.py`: one launch in
TAIL_ROWS tiles while its extra prefix reads stay few, else two).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..core.invariant import after_previous_kernel, arrival_counters, interpreted, launch_options, prefetch_lines
from .invariant_launch_forms import TAIL_ROWS, one_launch_tiles, row_tiles
from .triton_invariant_blocks import _gathered_blocks, _prefetch_committed, _shared_blocks, _tile_rows, _tile_sequence
from .triton_invariant_rope import _rope_step
from .triton_invariant_folds import (_close_group, _empty_fold, _empty_split, _fold, _fold_parts, _fold_result,
                                     _load_part, _merge_kernel, _merge_splits, _split_result, _store_out, _store_part)
from .triton_tree_attention import LOG2E, NEG_BIG

BLOCK_N = 64  # fixed: key blocks are part of the reduction order


@triton.jit
def _invariant_attention_fwd(
    Q, K, V, SLOTS, POS, ANC, PREFIX, O, O_PART, LSE_PART, COUNTERS, TILES, COS, SIN, QW, KW, eps,
    n_queries, qk_scale, stride_anc, n_slots, kv_rows,
    stride_qn, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_on, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT_BLOCKS: tl.constexpr, SPLIT_GROUP: tl.constexpr, CHAIN: tl.constexpr, SPLIT: tl.constexpr,
    FUSED: tl.constexpr, PACKED: tl.constexpr, BY_SUM: tl.constexpr, PREFETCH: tl.constexpr, STEP: tl.constexpr,
    ROPE: tl.constexpr, QK_NORM: tl.constexpr, PDL: tl.constexpr,
):
    """One launch (decode steps, small trees, chains), program (tile, kv head, split): the split's
    blocks, shared then per-token, its partial; the last split to arrive (FUSED) folds them all — or, where
    the tile reaches one split only (a context within one split's keys), that split stores its output itself.
    PREFETCH (a plain step of one sequence, launched early): the split's committed K/V asked of L2 while the
    kernel before runs. ROPE (`triton_invariant_rope.py`): Q is the step's q/k/v row, whose RoPE (COS, SIN),
    q/k norm (QK_NORM: QW, KW, eps) and K/V write this launch does."""
    if PREFETCH:
        _prefetch_committed(K, V, SLOTS, PREFIX, tl.program_id(1), tl.program_id(2), n_slots, kv_rows, stride_kr, stride_kh,
                            stride_vr, stride_vh, SPLIT_BLOCKS, BLOCK_N, HEAD_DIM, PREFETCH, STEP)
    after_previous_kernel(PDL)
    tile, kvh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    row0, n_seq, local, slot0, seq = _tile_sequence(TILES, tile, n_queries, PACKED)
    prefix_len = tl.load(PREFIX + seq)  # T_s, from memory: a captured graph serves any T
    hq = tl.num_programs(1) * GROUP
    Q, POS, ANC, SLOTS = Q + row0 * stride_qn, POS + row0, ANC + row0 * stride_anc, SLOTS + slot0  # its sequence's
    O, O_PART, LSE_PART = O + row0 * stride_on, O_PART + row0 * hq * HEAD_DIM, LSE_PART + row0 * hq
    tok, head, row_ok, pos, q, tok_lo, tok_hi, n_blocks = _tile_rows(
        Q, POS, local, kvh, n_seq, stride_qn, stride_qh, GROUP, HEAD_DIM, BLOCK_M, BLOCK_N)
    if ROPE:  # q from its heads' raw features; the split reading position T writes the step's K/V first
        q = _rope_step(Q, COS, SIN, QW, KW, eps, K, V, SLOTS, head, row_ok, prefix_len, kvh, split, hq, tl.num_programs(1),
                       stride_kr, stride_kh, stride_vr, stride_vh, QK_NORM, HEAD_DIM, BLOCK_N, SPLIT_BLOCKS)
    b_lo = split * SPLIT_BLOCKS
    b_hi = tl.minimum(b_lo + SPLIT_BLOCKS, n_blocks)
    b_shared = prefix_len // BLOCK_N  # blocks [0, b_shared) hold committed keys only
    if CHAIN:
        b_shared = b_hi  # virtual == logical for every row: one load serves the tile throughout
    K += kvh * stride_kh
    V += kvh * stride_vh
    m_i, l_i, acc = _empty_split(BLOCK_M, HEAD_DIM)
    m_i, l_i, acc = _shared_blocks(q, K, V, SLOTS, pos, m_i, l_i, acc, b_lo, tl.minimum(b_hi, b_shared),
                                   prefix_len + n_seq, qk_scale, stride_kr, stride_vr,
                                   HEAD_DIM, BLOCK_M, BLOCK_N, CHAIN, BY_SUM)  # below T: every row sees every key
    m_i, l_i, acc = _gathered_blocks(q, K, V, SLOTS, ANC, POS, tok, pos, tok_lo, tok_hi, m_i, l_i, acc,
                                     tl.maximum(b_lo, b_shared), b_hi, prefix_len, qk_scale, stride_anc,
                                     stride_kr, stride_vr, HEAD_DIM, BLOCK_M, BLOCK_N, BY_SUM)
    o, lse = _split_result(m_i, l_i, acc)
    if SPLIT and FUSED:
        # The tile's rows reach splits [0, active); the grid's later splits (it is sized for the cache's capacity) are
        # empty for each of them: they leave no partial and do not arrive, and the merge folds the first `active`
        # (a trailing empty partial would leave the fold as it was: `_fold`).
        active = tl.cdiv(n_blocks, SPLIT_BLOCKS)
        if active == 1:  # one split reached (a context within one split's keys): its fold would return o itself,
            if split == 0:  # so it is stored as the grid of one split stores it, with no partial, arrival or merge
                _store_out(O, o, tok, head, row_ok, stride_on, stride_oh, HEAD_DIM)
        elif split < active:  # the last split of this (tile, kv head) to arrive merges them
            _store_part(O_PART, LSE_PART, split, o, lse, tok, head, row_ok, n_queries, hq, HEAD_DIM)
            tl.debug_barrier()
            counter = COUNTERS + tile * tl.num_programs(1) + kvh
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if arrived == active - 1:
                tl.debug_barrier()
                _merge_splits(O_PART, LSE_PART, O, tok, head, row_ok, n_queries, hq, active,
                              stride_on, stride_oh, BLOCK_M, HEAD_DIM, SPLIT_GROUP)
                tl.atomic_xchg(counter, 0)
    elif SPLIT:  # every split's partial, for the merge kernel
        _store_part(O_PART, LSE_PART, split, o, lse, tok, head, row_ok, n_queries, hq, HEAD_DIM)
    else:  # the only split: its fold would return o itself
        _store_out(O, o, tok, head, row_ok, stride_on, stride_oh, HEAD_DIM)


@triton.jit
def _invariant_prefix_fwd(
    Q, K, V, SLOTS, POS, PREFIX, O_PART, LSE_PART, M_STATE, L_STATE, ACC_STATE, F_M, F_NUM, F_DEN, TILES,
    n_queries, qk_scale,
    stride_qn, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT_BLOCKS: tl.constexpr, SPLIT_GROUP: tl.constexpr, PER_SPLIT: tl.constexpr, PACKED: tl.constexpr,
    BY_SUM: tl.constexpr, PDL: tl.constexpr,
):
    """Large trees, launch 1 of 2: the shared blocks in large tiles. Split s_T = b_shared // SB is
    the first with per-token blocks. PER_SPLIT: program (tile, kv head, split) — a split below s_T
    leaves its partial, s_T its running state (m, l, acc). Else program (tile, kv head, group of
    SPLIT_GROUP splits) folds its splits itself — a group below s_T's leaves its partial, s_T's group
    its fold (M, num, den) and s_T's running state. Programs past s_T do nothing."""
    after_previous_kernel(PDL)
    tile, kvh, idx = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    row0, n_seq, local, slot0, seq = _tile_sequence(TILES, tile, n_queries, PACKED)
    prefix_len = tl.load(PREFIX + seq)
    hq = tl.num_programs(1) * GROUP
    Q, POS, SLOTS = Q + row0 * stride_qn, POS + row0, SLOTS + slot0
    O_PART, LSE_PART, ACC_STATE, F_NUM = (O_PART + row0 * hq * HEAD_DIM, LSE_PART + row0 * hq,
                                          ACC_STATE + row0 * hq * HEAD_DIM, F_NUM + row0 * hq * HEAD_DIM)
    M_STATE, L_STATE, F_M, F_DEN = M_STATE + row0 * hq, L_STATE + row0 * hq, F_M + row0 * hq, F_DEN + row0 * hq
    tok, head, row_ok, pos, q, tok_lo, tok_hi, n_blocks = _tile_rows(
        Q, POS, local, kvh, n_seq, stride_qn, stride_qh, GROUP, HEAD_DIM, BLOCK_M, BLOCK_N)
    b_shared = prefix_len // BLOCK_N
    s_t = b_shared // SPLIT_BLOCKS
    K += kvh * stride_kh
    V += kvh * stride_vh
    kv_len = prefix_len + n_seq
    flat = tok * hq + head
    offs_d = tl.arange(0, HEAD_DIM)
    if PER_SPLIT:
        s_lo, s_hi = idx, tl.minimum(idx + 1, s_t)  # [s_lo, s_hi): whole splits of this program
    else:
        s_lo, s_hi = idx * SPLIT_GROUP, tl.minimum((idx + 1) * SPLIT_GROUP, s_t)
    f_m, f_num, f_den = _empty_fold(BLOCK_M, HEAD_DIM)
    for s in range(s_lo, s_hi):
        m_i, l_i, acc = _empty_split(BLOCK_M, HEAD_DIM)
        m_i, l_i, acc = _shared_blocks(q, K, V, SLOTS, pos, m_i, l_i, acc, s * SPLIT_BLOCKS, (s + 1) * SPLIT_BLOCKS,
                                       kv_len, qk_scale, stride_kr, stride_vr, HEAD_DIM, BLOCK_M, BLOCK_N, False, BY_SUM)
        o, lse = _split_result(m_i, l_i, acc)
        if PER_SPLIT:
            _store_part(O_PART, LSE_PART, s, o, lse, tok, head, row_ok, n_queries, hq, HEAD_DIM)
        else:
            f_m, f_num, f_den = _fold(f_m, f_num, f_den, o, lse)
    if PER_SPLIT:
        idx_t = s_t
    else:
        idx_t = s_t // SPLIT_GROUP
    if idx == idx_t:  # s_T's shared blocks, then its state (exact in fp32: l's columns are equal)
        m_i, l_i, acc = _empty_split(BLOCK_M, HEAD_DIM)
        m_i, l_i, acc = _shared_blocks(q, K, V, SLOTS, pos, m_i, l_i, acc, s_t * SPLIT_BLOCKS, b_shared, kv_len,
                                       qk_scale, stride_kr, stride_vr, HEAD_DIM, BLOCK_M, BLOCK_N, False, BY_SUM)
        tl.store(M_STATE + flat, m_i, mask=row_ok)
        tl.store(L_STATE + flat, tl.max(l_i, 1), mask=row_ok)
        tl.store(ACC_STATE + flat[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=row_ok[:, None])
        if not PER_SPLIT:
            tl.store(F_M + flat, f_m, mask=row_ok)
            tl.store(F_DEN + flat, f_den, mask=row_ok)
            tl.store(F_NUM + flat[:, None] * HEAD_DIM + offs_d[None, :], f_num, mask=row_ok[:, None])
    if not PER_SPLIT:
        if idx < idx_t:
            o_g, lse_g = _fold_result(f_m, f_num, f_den)
            _store_part(O_PART, LSE_PART, idx, o_g, lse_g, tok, head, row_ok, n_queries, hq, HEAD_DIM)


@triton.jit
def _invariant_tail_fwd(
    Q, K, V, SLOTS, POS, ANC, PREFIX, O, O_PART, LSE_PART, M_STATE, L_STATE, ACC_STATE, F_M, F_NUM, F_DEN, TILES,
    n_queries, qk_scale, stride_anc,
    stride_qn, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_on, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT_BLOCKS: tl.constexpr, SPLIT_GROUP: tl.constexpr, PER_SPLIT: tl.constexpr, PACKED: tl.constexpr,
    BY_SUM: tl.constexpr, PDL: tl.constexpr,
):
    """Large trees, launch 2 of 2, program (small tile, kv head): fold what launch 1 left (split
    partials, or group partials and s_T's group fold), resume s_T from its state, run the per-token
    blocks of every split the tile reaches (a dot per four tokens of the tile per block: small tiles),
    folding splits into groups and groups into the total at every SPLIT_GROUP-th split. Row by row
    the arithmetic of `_invariant_attention_fwd` + `_merge_splits`."""
    after_previous_kernel(PDL)
    tile, kvh = tl.program_id(0), tl.program_id(1)
    row0, n_seq, local, slot0, seq = _tile_sequence(TILES, tile, n_queries, PACKED)
    prefix_len = tl.load(PREFIX + seq)
    hq = tl.num_programs(1) * GROUP
    Q, POS, ANC, SLOTS = Q + row0 * stride_qn, POS + row0, ANC + row0 * stride_anc, SLOTS + slot0
    O, O_PART, LSE_PART = O + row0 * stride_on, O_PART + row0 * hq * HEAD_DIM, LSE_PART + row0 * hq
    ACC_STATE, F_NUM = ACC_STATE + row0 * hq * HEAD_DIM, F_NUM + row0 * hq * HEAD_DIM
    M_STATE, L_STATE, F_M, F_DEN = M_STATE + row0 * hq, L_STATE + row0 * hq, F_M + row0 * hq, F_DEN + row0 * hq
    tok, head, row_ok, pos, q, tok_lo, tok_hi, n_blocks = _tile_rows(
        Q, POS, local, kvh, n_seq, stride_qn, stride_qh, GROUP, HEAD_DIM, BLOCK_M, BLOCK_N)
    b_shared = prefix_len // BLOCK_N
    s_t = b_shared // SPLIT_BLOCKS
    K += kvh * stride_kh
    V += kvh * stride_vh
    offs_d = tl.arange(0, HEAD_DIM)
    flat = tok * hq + head
    t_m, t_num, t_den = _empty_fold(BLOCK_M, HEAD_DIM)  # the total, over groups
    if PER_SPLIT:  # the groups below s_T's, then s_T's splits below s_T (the loop below closes an empty group)
        for g in range(0, s_t // SPLIT_GROUP):
            f_m, f_num, f_den = _fold_parts(O_PART, LSE_PART, g * SPLIT_GROUP, (g + 1) * SPLIT_GROUP, tok, head, row_ok,
                                            n_queries, hq, BLOCK_M, HEAD_DIM)
            t_m, t_num, t_den = _close_group(t_m, t_num, t_den, f_m, f_num, f_den)
        f_m, f_num, f_den = _fold_parts(O_PART, LSE_PART, s_t // SPLIT_GROUP * SPLIT_GROUP, s_t, tok, head, row_ok,
                                        n_queries, hq, BLOCK_M, HEAD_DIM)
    else:
        for g in range(0, s_t // SPLIT_GROUP):
            o, lse = _load_part(O_PART, LSE_PART, g, tok, head, row_ok, n_queries, hq, HEAD_DIM)
            t_m, t_num, t_den = _fold(t_m, t_num, t_den, o, lse)
        f_m = tl.load(F_M + flat, mask=row_ok, other=float("-inf"))
        f_den = tl.load(F_DEN + flat, mask=row_ok, other=0.0)
        f_num = tl.load(F_NUM + flat[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    for s in range(s_t, tl.cdiv(n_blocks, SPLIT_BLOCKS)):
        if s % SPLIT_GROUP == 0 and s > 0:
            t_m, t_num, t_den = _close_group(t_m, t_num, t_den, f_m, f_num, f_den)
            f_m, f_num, f_den = _empty_fold(BLOCK_M, HEAD_DIM)
        if s == s_t:
            m_i = tl.load(M_STATE + flat, mask=row_ok, other=NEG_BIG)
            l_i = tl.zeros([BLOCK_M, 16], tl.float32) + tl.load(L_STATE + flat, mask=row_ok, other=0.0)[:, None]
            acc = tl.load(ACC_STATE + flat[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        else:
            m_i, l_i, acc = _empty_split(BLOCK_M, HEAD_DIM)
        b_lo = s * SPLIT_BLOCKS
        m_i, l_i, acc = _gathered_blocks(q, K, V, SLOTS, ANC, POS, tok, pos, tok_lo, tok_hi, m_i, l_i, acc,
                                         tl.maximum(b_lo, b_shared), tl.minimum(b_lo + SPLIT_BLOCKS, n_blocks),
                                         prefix_len, qk_scale, stride_anc, stride_kr, stride_vr,
                                         HEAD_DIM, BLOCK_M, BLOCK_N, BY_SUM)
        o, lse = _split_result(m_i, l_i, acc)
        f_m, f_num, f_den = _fold(f_m, f_num, f_den, o, lse)
    t_m, t_num, t_den = _close_group(t_m, t_num, t_den, f_m, f_num, f_den)
    out, _ = _fold_result(t_m, t_num, t_den)
    _store_out(O, out, tok, head, row_ok, stride_on, stride_oh, HEAD_DIM)


SPLIT_GROUP = 8  # fixed: splits are folded in groups of this many, groups into the output


@torch.library.custom_op("jetspec::invariant_tree_attention", mutates_args=())
def invariant_tree_attention(
    q: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, slots: torch.Tensor,
    positions: torch.Tensor, ancestors: torch.Tensor, prefix_len: torch.Tensor, scale: float,
    split_blocks: int, chain: bool, block_m: int = 0, warps: int = 0, stages: int = 0, per_split: int = -1,
    one_launch: int = -1,
) -> torch.Tensor:
    """q [N, Hq, D]; k_rows, v_rows [R, Hkv, D]; slots [C] int32 (C = the cache's capacity: it
    fixes the split count, so one launch shape serves any T); positions [N] int64; ancestors
    [N, N] int32 (unused when `chain`); prefix_len [1] int32 -> [N, Hq, D].

    one_launch 1: one launch, a program per split, in TAIL_ROWS tiles (a chain: launch 1's). 0: two,
    launch 1 the shared blocks in large tiles, a program per split (`per_split` = 1) or per group of
    splits (0; -1: whichever fills the GPU), launch 2 the per-token blocks in tiles of TAIL_ROWS rows
    and the folds. -1: one for chains and trees of one TAIL_ROWS tile, else two (T is on the device:
    a caller that knows it asks `one_launch_for`). block_m, warps, stages: launch 1's tiling (0:
    chosen here). None of these choices changes a bit of any row."""
    rows = q.shape[0] * (q.shape[1] // k_rows.shape[1])  # packed (token, head) rows
    one = (chain or rows <= TAIL_ROWS) if one_launch < 0 else bool(one_launch)
    block_m = block_m or one_launch_tiles(one, chain, row_tiles(rows)[0])
    warps = warps or row_tiles(block_m)[1]
    return _launch(q, k_rows, v_rows, slots, positions, ancestors, prefix_len, None, None,
                   (triton.cdiv(rows, block_m), triton.cdiv(rows, TAIL_ROWS)), slots.numel(), scale, split_blocks,
                   chain, one, block_m, warps, stages, per_split)


@torch.library.custom_op("jetspec::packed_invariant_attention", mutates_args=())
def packed_invariant_attention(
    q: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, slots: torch.Tensor,
    positions: torch.Tensor, ancestors: torch.Tensor, prefix_lens: torch.Tensor, tiles: torch.Tensor,
    tail_tiles: torch.Tensor, capacity: int, scale: float, split_blocks: int, chain: bool, block_m: int,
    warps: int = 0, stages: int = 0, per_split: int = -1, one_launch: int = -1,
) -> torch.Tensor:
    """The packed rows of S sequences over one pool (`core/batch.py`), each row bit for bit what
    `invariant_tree_attention` of its own sequence gives it: q [R, Hq, D]; k_rows, v_rows
    [rows, Hkv, D]; slots [sum_s (T_s + N_s)] int32, the sequences' slot maps end to end;
    positions [R] int64; ancestors [R, max_s N_s] int32, each row's within its own tree (unused
    when `chain`: every sequence a chain); prefix_lens [S] int32 (T_s); tiles [tiles, 5] int32,
    `pack_tiles` for `block_m` rows, and tail_tiles for TAIL_ROWS; capacity: the largest slot
    map's (it fixes the split count, as C does for one sequence) -> [R, Hq, D].

    A tile serves one sequence (its rows, T_s and slot map from the table), so the launches are
    those of one sequence. one_launch: 1 or 0 says which form (`one_launch_for`; a CUDA graph's key
    holds it): one launch runs `tiles`, which a tree's caller makes for TAIL_ROWS rows
    (`one_launch_tiles`); -1: one for chains and for trees of one TAIL_ROWS tile (ancestors' width:
    the largest tree's nodes), else two."""
    if one_launch < 0:
        one_launch = int(chain or ancestors.shape[1] * (q.shape[1] // k_rows.shape[1]) <= TAIL_ROWS)
    return _launch(q, k_rows, v_rows, slots, positions, ancestors, prefix_lens, tiles, tail_tiles,
                   (tiles.shape[0], tail_tiles.shape[0]), capacity, scale, split_blocks, chain, bool(one_launch), block_m,
                   warps or row_tiles(block_m)[1], stages, per_split)


def _launch(q, k_rows, v_rows, slots, positions, ancestors, prefix, tiles_table, tail_table, tiles: tuple[int, int],
            capacity: int, scale: float, split_blocks: int, chain: bool, one_launch: bool, block_m: int, warps: int,
            stages: int, per_split: int, rope: tuple | None = None) -> torch.Tensor:
    """Both forms' launches; `tiles`: (launch 1's tiles of block_m rows, launch 2's of TAIL_ROWS);
    `tiles_table`, `tail_table`: the packed form's, else None. rope = (cos, sin, q weight, k weight, eps, qk norm?):
    q is the step's q/k/v row [1, Hq + 2 Hkv, D] (`invariant_rope_attention`, one launch)."""
    n, hkv, d = q.shape[0], k_rows.shape[1], q.shape[2]
    hq = q.shape[1] - (2 * hkv if rope is not None else 0)
    group = hq // hkv
    out = torch.empty(n, hq, d, dtype=q.dtype, device=q.device)  # [N, Hq, D]
    device = q.device
    stages = stages or (5 if block_m >= 128 else 3)  # deep pipelines pay at 128-row tiles (large trees)
    num_splits = triton.cdiv(triton.cdiv(capacity, BLOCK_N), split_blocks)
    num_groups = triton.cdiv(num_splits, SPLIT_GROUP)
    consts = dict(GROUP=group, HEAD_DIM=d, BLOCK_N=BLOCK_N, SPLIT_BLOCKS=split_blocks, SPLIT_GROUP=SPLIT_GROUP,
                  PACKED=tiles_table is not None, BY_SUM=interpreted())
    table, tail_table = (slots, slots) if tiles_table is None else (tiles_table, tail_table)  # unread when not packed
    strides = (q.stride(0), q.stride(1), k_rows.stride(0), k_rows.stride(1), v_rows.stride(0), v_rows.stride(1))
    f32 = dict(dtype=torch.float32, device=q.device)
    if one_launch:
        split = num_splits > 1
        o_part = torch.empty(num_splits, n, hq, d, **f32) if split else out  # [S, N, Hq, D]
        lse_part = torch.empty(num_splits, n, hq, **f32) if split else out  # [S, N, Hq]
        counters = arrival_counters(q.device, tiles[0] * hkv) if split else None
        fused = counters is not None
        grid = (tiles[0], hkv, num_splits)
        options = launch_options(device, math.prod(grid))
        lines, step = prefetch_lines(options, d, k_rows, n)  # a key's lines asked of L2: a plain step launched early
        lines = lines if tiles_table is None else 0  # one sequence's (a packed batch's slot maps are not prefetched)
        cos, sin, q_w, k_w, eps, qk_norm = rope or (q, q, q, q, 0.0, False)  # unread without ROPE
        _invariant_attention_fwd[grid](
            q, k_rows, v_rows, slots, positions, ancestors, prefix, out, o_part, lse_part, counters if fused else slots, table,
            cos, sin, q_w, k_w, eps, n, scale * LOG2E, ancestors.stride(0), slots.numel(), k_rows.shape[0], *strides,
            out.stride(0), out.stride(1), BLOCK_M=block_m, CHAIN=chain, SPLIT=split, FUSED=fused, PREFETCH=lines, STEP=step,
            ROPE=rope is not None, QK_NORM=qk_norm, num_warps=warps, num_stages=stages, **consts, **options)
        if split and not fused:  # a row's merge reads its own partials only: tiles of the packed rows in order
            grid = (triton.cdiv(n * group, block_m), hkv)
            _merge_kernel[grid](
                o_part, lse_part, out, n, num_splits, out.stride(0), out.stride(1), GROUP=group, HEAD_DIM=d,
                BLOCK_M=block_m, SPLIT_GROUP=SPLIT_GROUP, num_warps=warps, **launch_options(device, math.prod(grid)))
        return out
    if per_split < 0:  # a program per group when that still fills the GPU
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4
        per_split = int(tiles[0] * hkv * num_groups < sms)
    parts = num_splits if per_split else num_groups
    o_part = torch.empty(parts, n, hq, d, **f32)  # [S or G, N, Hq, D]
    lse_part = torch.empty(parts, n, hq, **f32)  # [S or G, N, Hq]
    m_state, l_state, f_m, f_den = (torch.empty(n, hq, **f32) for _ in range(4))  # [N, Hq] each
    acc_state, f_num = (torch.empty(n, hq, d, **f32) for _ in range(2))  # [N, Hq, D] each
    states = (m_state, l_state, acc_state, f_m, f_num, f_den)
    grid = (tiles[0], hkv, parts)
    _invariant_prefix_fwd[grid](
        q, k_rows, v_rows, slots, positions, prefix, o_part, lse_part, *states, table, n, scale * LOG2E, *strides,
        BLOCK_M=block_m, PER_SPLIT=bool(per_split), num_warps=warps, num_stages=stages, **consts,
        **launch_options(device, math.prod(grid)))
    grid = (tiles[1], hkv)
    _invariant_tail_fwd[grid](
        q, k_rows, v_rows, slots, positions, ancestors, prefix, out, o_part, lse_part, *states, tail_table, n,
        scale * LOG2E, ancestors.stride(0), *strides, out.stride(0), out.stride(1),
        BLOCK_M=TAIL_ROWS, PER_SPLIT=bool(per_split), num_warps=4, num_stages=3, **consts,
        **launch_options(device, math.prod(grid)))
    return out


@invariant_tree_attention.register_fake
def _(q, k_rows, v_rows, slots, positions, ancestors, prefix_len, scale, split_blocks, chain, block_m=0, warps=0, stages=0,
      per_split=-1, one_launch=-1):
    return torch.empty_like(q)


@packed_invariant_attention.register_fake
def _(q, k_rows, v_rows, slots, positions, ancestors, prefix_lens, tiles, tail_tiles, capacity, scale, split_blocks, chain,
      block_m, warps=0, stages=0, per_split=-1, one_launch=-1):
    return torch.empty_like(q)
