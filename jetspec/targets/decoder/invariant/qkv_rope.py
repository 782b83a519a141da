"""The q/k/v projection, RoPE and the K/V write in one kernel, row-invariant (models without a q/k norm):

    [q | k | v] = rmsnorm(x) Wqkv^T + b        `linear(x, Wqkv, b, norm=)`: its sums, its roundings
    q, k        = rope(q), rope(k)              `rope_write`'s roundings
    K[slot(T + j)], V[slot(T + j)] = k[j], v[j]
    return q                                    [N, Hq, D]

so `qkv_rope_write(x, ...)` is `rope_write(linear(x, Wqkv, b, norm=), ...)` bit for bit, in one
launch instead of two and without the [N, Hq·D + 2·Hkv·D] buffer between them.

A program computes a tile of rows against BLOCK_P column PAIRS: pair p of the (Hq + 2·Hkv)·D/2 is
feature i = p mod D/2 of head h = p div D/2 (q heads, then k heads, then v heads), i.e. column
c = h·D + i of the fused weight, and its RoPE partner c + D/2. Its two accumulators are the dots with
W's rows c and c + D/2 (as swiglu's gate and up rows, `linear._chunk_dot`), each summed from k = 0 up
whatever the tile, so a row's bits do not depend on N. RoPE is elementwise on a pair (r: round to
the dtype, x = r(sum + b)):

    rope(x)_c       = r( r(x_c cos_c) + r(-x_{c+D/2} sin_c) )
    rope(x)_{c+D/2} = r( r(x_{c+D/2} cos_{c+D/2}) + r(x_c sin_{c+D/2}) )

A q/k norm (Qwen3) reduces over a head's D features before RoPE: those models keep the two kernels
(`InvariantOps.qkv_rope_write` decides), as does a projection summed in K chunks (`linear_chunk`).
Pool rows and slots as `rope_write.py` takes them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ....core.invariant import after_previous_kernel, block_k, interpreted, launch_options
from .linear import _chunk_dot, _tiles
from .rmsnorm import rms_denominator, sum_squares


@triton.jit
def _qkv_rope_kernel(
    X, W, B, G, COS, SIN, Q, K_ROWS, V_ROWS, SLOTS, PREFIX, M, K, eps,
    stride_xm, stride_wn, stride_cos, stride_q, stride_row, Hq, Hkv, D,
    HAS_BIAS: tl.constexpr, NORM: tl.constexpr, HAS_SLOTS: tl.constexpr, PER_ROW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, NORM_K: tl.constexpr, BY_SUM: tl.constexpr,
    PDL: tl.constexpr,
):
    pid_m, pid_p = tl.program_id(0), tl.program_id(1)
    half = D // 2
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] tokens
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P] column pairs
    head, feature = offs_p // half, offs_p % half  # [BLOCK_P] q heads [0, Hq), k heads [Hq, Hq + Hkv), then v heads
    col = head * D + feature  # [BLOCK_P] the pair's column of Wqkv; its partner col + half
    m_ok, p_ok = offs_m < M, head < Hq + 2 * Hkv
    after_previous_kernel(PDL)
    denominator = tl.zeros([BLOCK_M, 1], tl.float32)
    if NORM:  # G: the input norm's weight [K]
        denominator = rms_denominator(sum_squares(X, offs_m, m_ok, stride_xm, K, BLOCK_M, NORM_K), K, eps)  # [BLOCK_M, 1]
    acc, acc_hi = _chunk_dot(X, W, G, offs_m, col, col + half, m_ok, p_ok, stride_xm, stride_wn, K, 0, K,
                             denominator, True, NORM, BLOCK_M, BLOCK_P, BLOCK_K, BY_SUM)  # [BLOCK_M, BLOCK_P] each
    if HAS_BIAS:
        acc = acc + tl.load(B + col, mask=p_ok, other=0.0).to(tl.float32)[None, :]
        acc_hi = acc_hi + tl.load(B + col + half, mask=p_ok, other=0.0).to(tl.float32)[None, :]
    dtype = Q.dtype.element_ty
    x_lo = acc.to(dtype).to(tl.float32)  # the projection, rounded as `linear` rounds it
    x_hi = acc_hi.to(dtype).to(tl.float32)
    ok = m_ok[:, None] & p_ok[None, :]  # [BLOCK_M, BLOCK_P]
    trig = offs_m[:, None] * stride_cos + feature[None, :]  # this token's cos / sin at feature i
    cos_lo = tl.load(COS + trig, mask=ok, other=0.0).to(tl.float32)
    cos_hi = tl.load(COS + trig + half, mask=ok, other=0.0).to(tl.float32)
    sin_lo = tl.load(SIN + trig, mask=ok, other=0.0).to(tl.float32)
    sin_hi = tl.load(SIN + trig + half, mask=ok, other=0.0).to(tl.float32)
    rope_lo = ((x_lo * cos_lo).to(dtype).to(tl.float32) + (-x_hi * sin_lo).to(dtype).to(tl.float32)).to(dtype)
    rope_hi = ((x_hi * cos_hi).to(dtype).to(tl.float32) + (x_lo * sin_hi).to(dtype).to(tl.float32)).to(dtype)

    is_q, is_v = (head < Hq)[None, :], (head >= Hq + Hkv)[None, :]  # [1, BLOCK_P]
    q_at = Q + offs_m[:, None] * stride_q + col[None, :]
    tl.store(q_at, rope_lo, mask=ok & is_q)
    tl.store(q_at + half, rope_hi, mask=ok & is_q)

    if PER_ROW:  # a packed batch: SLOTS holds each token's pool row; -1: a CUDA graph's pad row, written nowhere
        slot = tl.load(SLOTS + offs_m, mask=m_ok, other=-1).to(tl.int64)
    else:
        t = tl.load(PREFIX) + offs_m  # logical slots of the pending tokens
        if HAS_SLOTS:
            slot = tl.load(SLOTS + t, mask=m_ok, other=-1).to(tl.int64)
        else:
            slot = t.to(tl.int64)
    kv_ok = ok & (slot >= 0)[:, None] & ~is_q
    kv_col = col - tl.where(head >= Hq + Hkv, Hq + Hkv, Hq) * D  # [BLOCK_P] the column within the pool row's heads
    at = tl.maximum(slot, 0)[:, None] * stride_row + kv_col[None, :]  # [BLOCK_M, BLOCK_P]
    tl.store(K_ROWS + at, rope_lo, mask=kv_ok & ~is_v)
    tl.store(K_ROWS + at + half, rope_hi, mask=kv_ok & ~is_v)
    tl.store(V_ROWS + at, x_lo.to(dtype), mask=kv_ok & is_v)
    tl.store(V_ROWS + at + half, x_hi.to(dtype), mask=kv_ok & is_v)


def pair_tiles(m: int, n: int, k: int, head_dim: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_P, BLOCK_K, warps, stages) of a launch of M rows against Wqkv [N, K]: `linear`'s
    tiles for that projection, BLOCK_N columns as BLOCK_N / 2 pairs (the same columns a program
    reads; at least 16, a tensor-core dot's width), so the launch has as many programs as the
    projection alone had."""
    t = _tiles(m, n, k, False, interpreted())
    return t.block_m, max(t.block_n // 2, 16), t.block_k, t.warps, t.stages


def qkv_rope_write(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   norm: tuple[torch.Tensor, float] | None, num_heads: int, num_kv_heads: int,
                   cos: torch.Tensor, sin: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor,
                   slots: torch.Tensor | None, prefix: torch.Tensor | None,
                   rows: torch.Tensor | None = None) -> torch.Tensor:
    """x [N, K]; weight [(Hq + 2·Hkv)·D, K] (Wq | Wk | Wv), bias the same rows or None; norm
    (g [K], eps) or None; cos, sin [N, 1, D] or [N, D]; k_rows, v_rows, slots, prefix, rows as
    `rope_write` takes them -> q [N, Hq, D] (K/V written in place)."""
    n, kdim = x.shape
    d = k_rows.shape[-1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    assert w.shape[0] == (num_heads + 2 * num_kv_heads) * d and d % 2 == 0, (tuple(w.shape), num_heads, num_kv_heads, d)
    cos, sin = cos.reshape(n, d), sin.reshape(n, d)  # [N, D] views of the gathered table rows
    assert cos.stride(-1) == 1 and sin.stride() == cos.stride() and k_rows.is_contiguous() and v_rows.is_contiguous()
    q = torch.empty(n, num_heads, d, dtype=x.dtype, device=x.device)  # [N, Hq, D]
    has_slots, per_row = slots is not None, rows is not None
    if per_row:  # SLOTS: each token's pool row; PREFIX unread
        slots = prefix = rows
    if n:
        block_m, block_p, bk, warps, stages = pair_tiles(n, w.shape[0], kdim, d)
        grid = (triton.cdiv(n, block_m), triton.cdiv(w.shape[0] // 2, block_p))
        norm_weight, eps = norm if norm is not None else (w, 0.0)
        _qkv_rope_kernel[grid](
            x, w, bias if bias is not None else w, norm_weight, cos, sin, q, k_rows, v_rows,
            slots if slots is not None else prefix, prefix, n, kdim, eps,
            x.stride(0), w.stride(0), cos.stride(0), q.stride(0), k_rows.stride(0), num_heads, num_kv_heads, d,
            HAS_BIAS=bias is not None, NORM=norm is not None, HAS_SLOTS=has_slots, PER_ROW=per_row,
            BLOCK_M=block_m, BLOCK_P=block_p, BLOCK_K=bk, NORM_K=block_k(kdim), BY_SUM=interpreted(),
            num_warps=warps, num_stages=stages, **launch_options(x.device, math.prod(grid)),
        )
    return q
