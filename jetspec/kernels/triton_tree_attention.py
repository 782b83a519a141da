"""Paged tree attention, the Triton kernel behind the `triton` attention backend.

For query token i (0 <= i < N) and query head h, with kv head h // G (G = Hq / Hkv):

    out[i, h] = sum_t p_t v[t] / sum_t p_t,     p_t = 2^(s_t - m),   s_t = log2(e) * scale * q[i, h] . k[t]

over the logical keys t the tree mask lets i see (the interval rule, computed here per tile):

    t < T                                        committed prefix: always visible
    t = T + j,  j <= i < j + subtree_sizes[j]    pending key j: ancestor-or-self of i

Key t lives in row slots[t] of the layer's pool viewed as [rows, Hkv, D] (a paged cache's slot
map; a dense cache is the identity map). No N x N mask exists anywhere.

Packed batches (`packed_tree_attention`, `PACKED`): the query rows of S sequences end to end over
one shared page pool. A tile table gives each tile its sequence (first row, N_s, T_s, where its
slot map starts in the concatenated one); a tile never spans two sequences, so within its tile
everything below runs as for that sequence alone.

Work split (one program = one tile of BLOCK_M packed rows x one kv head x one split of the keys):
* GQA packing: row r of a tile is (token r // G, head kvh * G + r % G), so all G query heads of
  a kv head share every K/V tile that is loaded (one load, G times the FLOPs per byte).
* Causal skip: keys past T + (last token of the tile) are invisible to the whole tile.
* Split-K (flash-decoding): the tile's key blocks are cut into `num_splits` ranges, each program
  keeps the online-softmax state (m, l, acc) in fp32 and writes acc / l and lse = m + log2(l);
  the merge is  out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M),  M = max_s lse_s.
  FUSED (the default): after writing its partial, each program bumps a per-(tile, kv head)
  arrival counter (acq_rel); the last to arrive merges all splits and writes the output, then
  resets the counter to 0, so one launch does everything and a CUDA graph can replay it. The
  counters live in a persistent zeroed int32 buffer per device (`core.invariant.arrival_counters`). Otherwise (no
  buffer can be made, e.g. a too-small one during graph capture) `_combine_splits` merges in a
  second launch. With one split the program writes the output directly.
* Pipelining: a key block's rows come from a load (the slot map), so Triton's pipeliner needs
  num_stages >= 5 before K/V loads of the next block overlap the current block's math (with 2-4
  stages it keeps one buffer or waits on every copy each step; see the TTGIR in aot_sm90.py).
* Blocks wholly inside the committed prefix run without any mask; only the last prefix block and
  the pending keys evaluate the interval rule.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import triton
import triton.language as tl

from ..core.invariant import arrival_counters

LOG2E = 1.4426950408889634
NEG_BIG = tl.constexpr(-1.0e30)  # finite "minus infinity" for the running max: keeps 2^(m_old - m_new) NaN-free


@triton.jit
def _attend_block(
    acc, l_i, m_i, q, tok, K, V, SLOTS, SIZES, start, prefix_len, kv_end, qk_scale,
    stride_kr, stride_vr, offs_d,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """One BLOCK_N block of keys [start, start + BLOCK_N) into the online softmax of the tile."""
    offs_n = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] logical key indices
    if MASKED:
        in_kv = offs_n < kv_end
        rows = tl.load(SLOTS + offs_n, mask=in_kv, other=0).to(tl.int64)  # [BLOCK_N] pool rows
        k = tl.load(K + rows[:, None] * stride_kr + offs_d[None, :], mask=in_kv[:, None], other=0.0)
        v = tl.load(V + rows[:, None] * stride_vr + offs_d[None, :], mask=in_kv[:, None], other=0.0)
    else:
        rows = tl.load(SLOTS + offs_n).to(tl.int64)
        k = tl.load(K + rows[:, None] * stride_kr + offs_d[None, :])  # [BLOCK_N, D]
        v = tl.load(V + rows[:, None] * stride_vr + offs_d[None, :])  # [BLOCK_N, D]
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N] fp32
    if MASKED:
        j = offs_n - prefix_len  # pending index of each key (negative: committed prefix)
        size = tl.load(SIZES + j, mask=(j >= 0) & in_kv, other=0)  # [BLOCK_N] subtree sizes
        ancestor = (j[None, :] <= tok[:, None]) & (tok[:, None] < (j + size)[None, :])
        visible = ((offs_n < prefix_len)[None, :] | ancestor) & in_kv[None, :]
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)  # rescales the old state to the new max
    p = tl.math.exp2(s - m_new[:, None])  # [BLOCK_M, BLOCK_N], exactly 0 where masked
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _tree_attention_fwd(
    Q, K, V, SLOTS, SIZES, PREFIX, O, O_PART, LSE_PART, COUNTERS, TILES,
    n_queries, qk_scale,
    stride_qn, stride_qh, stride_kr, stride_kh, stride_vr, stride_vh, stride_on, stride_oh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr, FUSED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    PACKED: tl.constexpr,
):
    tile, kvh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    num_splits = tl.num_programs(2)
    if PACKED:  # the rows of several sequences; this tile's sequence from TILES (`pack_tiles`)
        row0 = tl.load(TILES + tile * 5)  # its first packed query row
        n_seq = tl.load(TILES + tile * 5 + 1)  # its queries N_s
        local = tile - tl.load(TILES + tile * 5 + 2)  # this tile's index within the sequence
        SLOTS += tl.load(TILES + tile * 5 + 3)  # its slot map inside the concatenated one
        prefix_len = tl.load(PREFIX + tl.load(TILES + tile * 5 + 4))  # its T_s
        SIZES += row0
    else:
        row0 = 0
        n_seq = n_queries
        local = tile
        prefix_len = tl.load(PREFIX)  # T, read on device so a captured graph serves any T

    offs_m = local * BLOCK_M + tl.arange(0, BLOCK_M)  # packed (token, head) rows of the sequence
    tok = offs_m // GROUP  # [BLOCK_M] query token within its sequence
    head = kvh * GROUP + offs_m % GROUP  # [BLOCK_M] query head
    row_ok = tok < n_seq
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + (row0 + tok)[:, None] * stride_qn + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)  # [BLOCK_M, D]
    if UPCAST:
        q = q.to(tl.float32)

    last_tok = tl.minimum((local * BLOCK_M + BLOCK_M - 1) // GROUP, n_seq - 1)
    kv_end = prefix_len + last_tok + 1  # keys at or past this are invisible to every row here
    n_blocks = tl.cdiv(kv_end, BLOCK_N)
    per_split = tl.cdiv(n_blocks, num_splits)
    b_lo = split * per_split
    b_hi = tl.minimum(b_lo + per_split, n_blocks)
    b_full = prefix_len // BLOCK_N  # blocks [0, b_full) lie wholly in the committed prefix

    K += kvh * stride_kh
    V += kvh * stride_vh
    m_i = tl.full([BLOCK_M], NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for b in range(b_lo, tl.minimum(b_hi, b_full)):
        acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, tok, K, V, SLOTS, SIZES, b * BLOCK_N, prefix_len,
                                      kv_end, qk_scale, stride_kr, stride_vr, offs_d, BLOCK_N, False, PRECISION, UPCAST)
    for b in range(tl.maximum(b_lo, b_full), b_hi):
        acc, l_i, m_i = _attend_block(acc, l_i, m_i, q, tok, K, V, SLOTS, SIZES, b * BLOCK_N, prefix_len,
                                      kv_end, qk_scale, stride_kr, stride_vr, offs_d, BLOCK_N, True, PRECISION, UPCAST)

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    if SPLIT:  # partials [S, N, Hq, D] and lse [S, N, Hq], contiguous
        hq = tl.num_programs(1) * GROUP
        flat = (split * n_queries + row0 + tok) * hq + head  # [BLOCK_M] row of (split, token, head)
        tl.store(O_PART + flat[:, None] * HEAD_DIM + offs_d[None, :], out, mask=row_ok[:, None])
        lse = tl.where(l_i > 0, m_i + tl.math.log2(l_safe), float("-inf"))
        tl.store(LSE_PART + flat, lse, mask=row_ok)
        if FUSED:
            tl.debug_barrier()  # every thread's partial is written before the release below
            counter = COUNTERS + tile * tl.num_programs(1) + kvh
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")  # splits done before us
            if arrived == num_splits - 1:  # last of this (tile, kv head): merge every split's partial
                tl.debug_barrier()
                rows0 = (row0 + tok) * hq + head  # [BLOCK_M] row of (token, head) in split 0
                lse_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
                for s in range(0, num_splits):
                    lse_s = tl.load(LSE_PART + s * n_queries * hq + rows0, mask=row_ok, other=float("-inf"),
                                    cache_modifier=".cg")
                    lse_max = tl.maximum(lse_max, lse_s)
                lse_ref = tl.where(lse_max == float("-inf"), 0.0, lse_max)  # padded rows: no NaN
                num = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
                den = tl.zeros([BLOCK_M], tl.float32)
                for s in range(0, num_splits):
                    flat_s = s * n_queries * hq + rows0
                    w = tl.math.exp2(tl.load(LSE_PART + flat_s, mask=row_ok, other=float("-inf"),
                                             cache_modifier=".cg") - lse_ref)  # [BLOCK_M]
                    o_s = tl.load(O_PART + flat_s[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None],
                                  other=0.0, cache_modifier=".cg")
                    num += w[:, None] * o_s
                    den += w
                out = num / tl.where(den > 0, den, 1.0)[:, None]
                o_ptr = O + (row0 + tok)[:, None] * stride_on + head[:, None] * stride_oh + offs_d[None, :]
                tl.store(o_ptr, out.to(O.dtype.element_ty), mask=row_ok[:, None])
                tl.atomic_xchg(counter, 0)  # every split has arrived: ready for the next launch / replay
    else:
        o_ptr = O + (row0 + tok)[:, None] * stride_on + head[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptr, out.to(O.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _combine_splits(
    O_PART, LSE_PART, O, n_rows, num_heads, num_splits, stride_on, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr,
):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # flat (token, head) rows
    ok = offs_r < n_rows
    offs_d = tl.arange(0, HEAD_DIM)
    lse_max = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for s in range(0, num_splits):
        lse_max = tl.maximum(lse_max, tl.load(LSE_PART + s * n_rows + offs_r, mask=ok, other=0.0))
    num = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    den = tl.zeros([BLOCK_R], tl.float32)
    for s in range(0, num_splits):
        w = tl.math.exp2(tl.load(LSE_PART + s * n_rows + offs_r, mask=ok, other=0.0) - lse_max)  # [BLOCK_R]
        o = tl.load(O_PART + (s * n_rows + offs_r)[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0)
        num += w[:, None] * o
        den += w
    out = num / den[:, None]
    tok, head = offs_r // num_heads, offs_r % num_heads
    tl.store(O + tok[:, None] * stride_on + head[:, None] * stride_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=ok[:, None])


@torch.library.custom_op("jetspec::paged_tree_attention", mutates_args=())
def paged_tree_attention(
    q: torch.Tensor,
    k_rows: torch.Tensor,
    v_rows: torch.Tensor,
    slots: torch.Tensor,
    subtree_sizes: torch.Tensor,
    prefix_len: torch.Tensor,
    scale: float,
    block_m: int,
    block_n: int,
    num_splits: int,
    num_warps: int,
    num_stages: int,
) -> torch.Tensor:
    """q [N, Hq, D]; k_rows, v_rows [R, Hkv, D] (a layer's pool, rows flattened); slots [>= T + N]
    int32 pool row of each logical key; subtree_sizes [N] int32; prefix_len [1] int32 (T) -> [N, Hq, D]."""
    n, hq, _ = q.shape
    tiles = triton.cdiv(n * (hq // k_rows.shape[1]), block_m)
    return _launch(q, k_rows, v_rows, slots, subtree_sizes, prefix_len, None, tiles, scale, block_m, block_n, num_splits,
                   num_warps, num_stages)


@torch.library.custom_op("jetspec::packed_tree_attention", mutates_args=())
def packed_tree_attention(
    q: torch.Tensor,
    k_rows: torch.Tensor,
    v_rows: torch.Tensor,
    slots: torch.Tensor,
    subtree_sizes: torch.Tensor,
    prefix_lens: torch.Tensor,
    tiles: torch.Tensor,
    scale: float,
    block_m: int,
    block_n: int,
    num_splits: int,
    num_warps: int,
    num_stages: int,
) -> torch.Tensor:
    """The packed rows of S sequences over one pool (`core/batch.py`): q [R, Hq, D]; k_rows,
    v_rows [rows, Hkv, D]; slots [sum_s (T_s + N_s)] int32, the sequences' slot maps end to end;
    subtree_sizes [R] int32 (each within its own tree); prefix_lens [S] int32 (T_s); tiles
    [tiles, 5] int32 from `pack_tiles` for this `block_m` -> [R, Hq, D]. A tile never spans two
    sequences, so each reads only its own sequence's keys, exactly as `paged_tree_attention` of
    that sequence alone would."""
    return _launch(q, k_rows, v_rows, slots, subtree_sizes, prefix_lens, tiles, tiles.shape[0], scale, block_m, block_n,
                   num_splits, num_warps, num_stages)


def pack_tiles(cu_rows: Sequence[int], slot_starts: Sequence[int], group: int, block_m: int) -> torch.Tensor:
    """The tile table of a packed launch: sequence s (rows cu_rows[s] .. cu_rows[s + 1] - 1, its
    slot map at slot_starts[s]) gets cdiv(N_s * group, block_m) tiles, each a row
    (first row, N_s, first tile of s, slot map offset, s) -> [tiles, 5] int32 on the host. numpy:
    a step of 64 sequences builds it in a few calls, not a Python loop."""
    cu = np.asarray(cu_rows, dtype=np.int64)  # [S + 1]
    n = np.diff(cu)  # [S] N_s
    per = -(-n * group // block_m)  # [S] tiles of each sequence
    seq = np.repeat(np.arange(n.shape[0]), per)  # [tiles] each tile's sequence
    first = np.cumsum(per) - per  # [S] its first tile
    table = np.stack((cu[:-1][seq], n[seq], first[seq], np.asarray(slot_starts, dtype=np.int64)[seq], seq), axis=1)
    return torch.from_numpy(table.astype(np.int32))  # [tiles, 5]


def _launch(q, k_rows, v_rows, slots, subtree_sizes, prefix_len, tiles_table, tiles, scale, block_m, block_n, num_splits,
            num_warps, num_stages) -> torch.Tensor:
    n, hq, d = q.shape
    hkv = k_rows.shape[1]
    out = torch.empty_like(q)  # [N, Hq, D]
    split = num_splits > 1
    # Triton's CPU interpreter computes bf16 tl.dot wrongly (3.9); there, dot in fp32 instead.
    upcast = q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
    counters = None
    if split:
        o_part = torch.empty(num_splits, n, hq, d, dtype=torch.float32, device=q.device)  # [S, N, Hq, D]
        lse_part = torch.empty(num_splits, n, hq, dtype=torch.float32, device=q.device)  # [S, N, Hq]
        counters = arrival_counters(q.device, tiles * hkv)
    else:
        o_part = lse_part = out  # unused
    fused = counters is not None
    _tree_attention_fwd[(tiles, hkv, num_splits)](
        q, k_rows, v_rows, slots, subtree_sizes, prefix_len, out, o_part, lse_part,
        counters if fused else subtree_sizes, tiles_table if tiles_table is not None else subtree_sizes,
        n, scale * LOG2E,
        q.stride(0), q.stride(1), k_rows.stride(0), k_rows.stride(1), v_rows.stride(0), v_rows.stride(1),
        out.stride(0), out.stride(1),
        GROUP=hq // hkv, HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, SPLIT=split, FUSED=fused,
        PRECISION="ieee" if q.dtype == torch.float32 or upcast else "tf32", UPCAST=upcast, PACKED=tiles_table is not None,
        num_warps=num_warps, num_stages=num_stages,
    )
    if split and not fused:
        block_r = max(1, min(64, 4096 // d))
        _combine_splits[(triton.cdiv(n * hq, block_r),)](
            o_part, lse_part, out, n * hq, hq, num_splits, out.stride(0), out.stride(1),
            HEAD_DIM=d, BLOCK_R=block_r, num_warps=4,
        )
    return out


@paged_tree_attention.register_fake
def _(q, k_rows, v_rows, slots, subtree_sizes, prefix_len, scale, block_m, block_n, num_splits, num_warps, num_stages):
    return torch.empty_like(q)


@packed_tree_attention.register_fake
def _(q, k_rows, v_rows, slots, subtree_sizes, prefix_lens, tiles, scale, block_m, block_n, num_splits, num_warps, num_stages):
    return torch.empty_like(q)


def flops(n: int, num_heads: int, keys: int, head_dim: int) -> int:
    """Matmul FLOPs of N queries over `keys` keys: QK^T and PV, 2 each per multiply-add."""
    return 4 * n * num_heads * keys * head_dim


__all__ = ["flops", "pack_tiles", "packed_tree_attention", "paged_tree_attention"]
