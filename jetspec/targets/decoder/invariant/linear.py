"""y = x @ W^T (+ b), row-invariant, with the prologue and epilogues that save the decoder a kernel each:

    linear:    y = x W^T + b                                  (q/k/v, the logits)
    residual:  y = r + (x W^T + b)                            (o_proj, down_proj: the residual add)
    swiglu:    y = silu(x Wg^T + bg) * (x Wu^T + bu)          (gate/up, W = [Wg | Wu] stacked on N)
    norm:      x <- rmsnorm(x, g, eps) first                  (before q/k/v, gate/up, the logits)

    acc[m, n] = sum_{k0 = 0, BK, 2BK, ...} sum_{k in [k0, k0 + BK)} x[m, k] W[n, k]     (fp32)

The K loop runs from 0 upwards: row m's sum has the same order whether the launch has 1 row or 512.
With `chunk` (the decoder's `linear_chunk`, exact mode's split-K) K is cut into S = K / chunk
chunks and acc = P_0 + P_1 + ... + P_{S-1}, added in that order, P_s the chunk's sum from its first
k up in a fresh accumulator: an order fixed by K and the chunk alone. Up to 16 rows (a plain step,
a small tree: few column tiles, SMs idle) each chunk is a program of its own, writing P_s to a
float32 buffer, and the last of a tile's S programs to arrive (an arrival counter) adds them; past
16 rows each program adds its chunks in turn — the same additions, so the same bits.

On a GPU the tensor cores chain their k-steps (16 for bf16) into one accumulator
in k order, so the chunk a loop iteration loads (BLOCK_K) is free like the row and column tiles
(BLOCK_M, BLOCK_N, warps, stages), which follow M for speed: an output element is accumulated from
its own row and column in the same order whatever the tiles. On the H200 a row's bits were the
same for BLOCK_M 16 / 32 (mma.sync) and 64 / 128 (wgmma), BLOCK_N 16 to 128, BLOCK_K 64 or 128,
1 to 8 warps, at every Qwen3-8B and SmolLM2 projection shape (`bench/linear_tiles.py`, which fails
when the tiles in use change a bit; bench/RESULTS.md). Triton's CPU interpreter sums each chunk
before adding it (`mm`), so there BLOCK_K is `block_k(K)` (64 where K chunks need it), fixed. The M tiles of one N tile are
neighbours in the launch, so they read that weight tile while it is in L2.

The epilogues are elementwise and round where the unfused composition rounds (the product to the
output dtype, then the add; silu to the dtype, then the product): `linear(x, W) + r` and
`silu(g) * u` of a rounded [g | u] give the same bits as the fused forms.

The norm prologue makes two passes over a tile's rows of x: the first reduces each row's sum of
squares (`rmsnorm.sum_squares`: NORM_K = block_k(K) chunks from 0 up, then a pairwise tree — an
order fixed by K, not by the tile, unlike a `tl.sum` of a [BLOCK_M, BLOCK_K] tile, whose order follows the
layout the compiler picks for BLOCK_M); the second normalises each chunk as it enters the dot,
rounding as `rmsnorm` rounds (`rms_scale`: to x's dtype, then the weight's product to x's dtype).
So `linear(x, W, norm=(g, eps))` is `linear(rmsnorm(x, g, eps), W)` bit for bit. Every program of
a row tile recomputes the statistic: a re-read of x [BLOCK_M, K], small beside W's tile.

A plain step's launch (one row) waits on chains of memory latency, not on bandwidth, so there:
* the statistic's chunks are loaded side by side (`rmsnorm.unroll`: all of them where they fit), then
  added in the same order;
* launched early (`launch_options`), each program asks L2 for its weight tile before its wait
  (`core/invariant.prefetch_lines`, `prefetch_l2`): the weights, which no kernel writes, arrive
  while the kernel before it runs, and its loads after the wait hit L2;
* the epilogue's inputs (the residual, the bias) are read with the first reads (INPUTS_FIRST), not
  after the sum: the epilogue then waits on no memory.
None changes an operation or its order: the same bits (tests/targets/test_programmatic_launch.py,
bench/linear_tiles.py on the GPU).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ....core.invariant import (after_previous_kernel, arrival_counters, block_k, interpreted, launch_options, mm,
                               prefetch_l2, prefetch_lines, rms_denominator, rms_scale)
from .rmsnorm import sum_squares, unroll


@triton.jit
def _chunk_dot(X, W, G, offs_m, offs_n, m_ok, n_ok, stride_xm, stride_wn, N, K, k_lo, chunk, denominator,
               SWIGLU: tl.constexpr, NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, BY_SUM: tl.constexpr):
    """(acc, acc_up) [BLOCK_M, BLOCK_N] float32: the dot products over k in [k_lo, k_lo + chunk), from
    k_lo up, into fresh accumulators (acc_up: x Wu^T with SWIGLU, else zeros)."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(k_lo, k_lo + chunk, BLOCK_K):  # k from k_lo up: the one reduction order within a chunk
        kk = k0 + offs_k
        k_ok = kk < K
        x = tl.load(X + offs_m[:, None] * stride_xm + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if NORM:  # rmsnorm(x)'s chunk, in x's dtype: rounded as rmsnorm rounds
            g = tl.load(G + kk, mask=k_ok, other=0.0)[None, :]
            x = rms_scale(x.to(tl.float32), g, denominator, X.dtype.element_ty).to(X.dtype.element_ty)
        w_ok = n_ok[:, None] & k_ok[None, :]
        w = tl.load(W + offs_n[:, None] * stride_wn + kk[None, :], mask=w_ok, other=0.0)
        acc = mm(x, tl.trans(w), acc, BY_SUM)  # [BLOCK_M, BLOCK_N]
        if SWIGLU:
            w_up = tl.load(W + (offs_n + N)[:, None] * stride_wn + kk[None, :], mask=w_ok, other=0.0)
            acc_up = mm(x, tl.trans(w_up), acc_up, BY_SUM)
    return acc, acc_up


@triton.jit
def _prefetch_weights(W, offs_n, N, stride_wn, k_lo, k_hi, SWIGLU: tl.constexpr, LINES: tl.constexpr,
                      STEP: tl.constexpr):
    """Ask L2 for the program's weight tile — rows offs_n (and offs_n + N with SWIGLU), k in [k_lo, k_hi)
    — one address per 128-byte line (STEP elements), LINES >= the lines of a row (the ones past it
    clamped onto its last element, columns past N onto row N - 1)."""
    kk = tl.minimum(k_lo + tl.arange(0, LINES) * STEP, k_hi - 1)  # [LINES]
    rows = tl.minimum(offs_n, N - 1)  # [BLOCK_N]
    prefetch_l2(W + rows[:, None] * stride_wn + kk[None, :])
    if SWIGLU:
        prefetch_l2(W + (rows + N)[:, None] * stride_wn + kk[None, :])


@triton.jit
def _epilogue_inputs(B, R, offs_m, offs_n, m_ok, n_ok, N, stride_rm, HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr,
                     SWIGLU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """What the epilogues read -> bias, the up half's bias [1, BLOCK_N], the residual [BLOCK_M, BLOCK_N], in
    float32 (exact widenings; zeros where absent)."""
    bias = tl.zeros([1, BLOCK_N], tl.float32)
    bias_up = tl.zeros([1, BLOCK_N], tl.float32)
    r = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if HAS_BIAS:
        bias = tl.load(B + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if SWIGLU:
            bias_up = tl.load(B + N + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if RESIDUAL:
        r = tl.load(R + offs_m[:, None] * stride_rm + offs_n[None, :], mask=m_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
    return bias, bias_up, r


@triton.jit
def _finish(acc, acc_up, bias, bias_up, r, Y, offs_m, offs_n, m_ok, n_ok, stride_ym,
            HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr, SWIGLU: tl.constexpr):
    """The epilogues on the finished sums (their inputs: `_epilogue_inputs`), and the store of y."""
    if HAS_BIAS:
        acc = acc + bias
        if SWIGLU:
            acc_up = acc_up + bias_up
    out_ok = m_ok[:, None] & n_ok[None, :]
    y = acc.to(Y.dtype.element_ty).to(tl.float32)  # the projection, rounded as F.linear rounds it
    if SWIGLU:  # silu(g) rounded, times u rounded: F.silu(g) * u
        up = acc_up.to(Y.dtype.element_ty).to(tl.float32)
        y = (y / (1.0 + tl.exp(-y))).to(Y.dtype.element_ty).to(tl.float32) * up
    if RESIDUAL:
        y = y + r
    tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :], y.to(Y.dtype.element_ty), mask=out_ok)


@triton.jit
def _linear_kernel(
    X, W, B, R, G, Y, PART, COUNTERS, M, N, K, chunk, eps, stride_xm, stride_wn, stride_rm, stride_ym,
    HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr, SWIGLU: tl.constexpr, NORM: tl.constexpr,
    SPLIT: tl.constexpr, ACROSS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NORM_K: tl.constexpr, NORM_UNROLL: tl.constexpr,
    BY_SUM: tl.constexpr, PREFETCH: tl.constexpr, STEP: tl.constexpr, INPUTS_FIRST: tl.constexpr, PDL: tl.constexpr,
):
    # N: output columns; with SWIGLU, W holds 2N rows, Wg = rows [0, N), Wu = rows [N, 2N).
    # K in SPLIT chunks of `chunk`: acc = P_0 + P_1 + ... + P_{SPLIT-1}, added in that order, P_s the chunk's
    # sum from its first k up. ACROSS: program (m, n, s) computes P_s into PART [SPLIT, 2, M, N] and the last
    # of a tile's SPLIT programs to arrive (COUNTERS) adds them; else each program computes them in turn.
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] rows of x
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] rows of W (of Wg)
    m_ok, n_ok = offs_m < M, offs_n < N
    if PREFETCH:  # launched early: the weights (no kernel writes them) asked for while the previous kernel runs
        k_lo = tl.program_id(2) * chunk if ACROSS else 0
        _prefetch_weights(W, offs_n, N, stride_wn, k_lo, k_lo + (chunk if ACROSS else K), SWIGLU, PREFETCH, STEP)
    after_previous_kernel(PDL)
    if INPUTS_FIRST:  # the epilogue's reads issued with the first ones, not after the sum
        bias, bias_up, r = _epilogue_inputs(B, R, offs_m, offs_n, m_ok, n_ok, N, stride_rm, HAS_BIAS, RESIDUAL, SWIGLU,
                                            BLOCK_M, BLOCK_N)
    denominator = tl.zeros([BLOCK_M, 1], tl.float32)
    if NORM:  # G: the norm's weight [K]
        denominator = rms_denominator(sum_squares(X, offs_m, m_ok, stride_xm, K, BLOCK_M, NORM_K, NORM_UNROLL), K, eps)  # [BLOCK_M, 1]
    if ACROSS:
        s = tl.program_id(2)
        acc, acc_up = _chunk_dot(X, W, G, offs_m, offs_n, m_ok, n_ok, stride_xm, stride_wn, N, K, s * chunk, chunk,
                                 denominator, SWIGLU, NORM, BLOCK_M, BLOCK_N, BLOCK_K, BY_SUM)
        out_ok = m_ok[:, None] & n_ok[None, :]
        part = offs_m[:, None] * N + offs_n[None, :]  # [BLOCK_M, BLOCK_N] in one [M, N] plane of PART
        tl.store(PART + (2 * s) * M * N + part, acc, mask=out_ok)
        if SWIGLU:
            tl.store(PART + (2 * s + 1) * M * N + part, acc_up, mask=out_ok)
        tl.debug_barrier()  # every thread's partial is written before the release below
        counter = COUNTERS + pid_m * tl.num_programs(1) + pid_n
        arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")  # chunks of this tile done before us
        if arrived == SPLIT - 1:  # the last: add P_0 .. P_{SPLIT-1} in order
            tl.debug_barrier()
            acc = tl.load(PART + part, mask=out_ok, other=0.0, cache_modifier=".cg")
            if SWIGLU:
                acc_up = tl.load(PART + M * N + part, mask=out_ok, other=0.0, cache_modifier=".cg")
            for t in range(1, SPLIT):
                acc = acc + tl.load(PART + (2 * t) * M * N + part, mask=out_ok, other=0.0, cache_modifier=".cg")
                if SWIGLU:
                    acc_up = acc_up + tl.load(PART + (2 * t + 1) * M * N + part, mask=out_ok, other=0.0, cache_modifier=".cg")
            if not INPUTS_FIRST:
                bias, bias_up, r = _epilogue_inputs(B, R, offs_m, offs_n, m_ok, n_ok, N, stride_rm, HAS_BIAS, RESIDUAL, SWIGLU,
                                                    BLOCK_M, BLOCK_N)
            _finish(acc, acc_up, bias, bias_up, r, Y, offs_m, offs_n, m_ok, n_ok, stride_ym, HAS_BIAS, RESIDUAL, SWIGLU)
            tl.atomic_xchg(counter, 0)  # every chunk has arrived: ready for the next launch / replay
    else:
        acc, acc_up = _chunk_dot(X, W, G, offs_m, offs_n, m_ok, n_ok, stride_xm, stride_wn, N, K, 0, chunk,
                                 denominator, SWIGLU, NORM, BLOCK_M, BLOCK_N, BLOCK_K, BY_SUM)
        for t in range(1, SPLIT):
            p, p_up = _chunk_dot(X, W, G, offs_m, offs_n, m_ok, n_ok, stride_xm, stride_wn, N, K, t * chunk, chunk,
                                 denominator, SWIGLU, NORM, BLOCK_M, BLOCK_N, BLOCK_K, BY_SUM)
            acc = acc + p
            acc_up = acc_up + p_up
        if not INPUTS_FIRST:
            bias, bias_up, r = _epilogue_inputs(B, R, offs_m, offs_n, m_ok, n_ok, N, stride_rm, HAS_BIAS, RESIDUAL, SWIGLU,
                                                BLOCK_M, BLOCK_N)
        _finish(acc, acc_up, bias, bias_up, r, Y, offs_m, offs_n, m_ok, n_ok, stride_ym, HAS_BIAS, RESIDUAL, SWIGLU)


@dataclass(frozen=True)
class Tiles:
    block_m: int
    block_n: int
    block_k: int  # the chunk one loop iteration loads; the sum's order is k from 0 up whatever it is
    warps: int
    stages: int


def launch_tiles(m: int, n: int, k: int, swiglu: bool = False) -> Tiles:
    """The tiles of a launch of M rows against a weight [N, K] (swiglu: N columns of each half).
    None of them changes a row's bits (module docstring); they are chosen for speed, by regime,
    from `bench/linear_tiles.py` on the H200 at the SmolLM2-135M and Qwen3-8B projections
    (bench/RESULTS.md, 2026-12-04):
    * a plain step or a small tree (M <= 16; M <= 64 for a small weight, N·K <= 4M, whose launch
      is latency-bound): one 16-row tile, narrow column tiles so that many programs stream the
      weight (16 columns up to N = 768, or up to 4096 where K >= 4096 — with 2 warps there; else
      32; 64 for the logits), K in 128-wide chunks (64 for the swiglu form's two tiles and the logits);
    * trees up to 64 rows: one 64-row (wgmma) tile, wider columns as N grows;
    * larger trees of a small weight (N·K <= 4M, or the logits at K <= 1024: SmolLM2's batched
      verifications, 72-288 rows; measured on the H100 at 72 / 128 / 256 rows, bench/RESULTS.md
      2026-12-06): 16- to 64-row tiles, 32 to 128 columns, so that the launch still has ~20-150
      programs — the square 128-row tiles of before left 5-48 of them and took 1.5-2.8x longer;
    * larger trees of a large weight: 64- or 128-row tiles, 128 columns (compute-bound: weights
      read once per tile), measured at K >= 4096; mid-size weights keep the square 128-row tiles.
    Triton's CPU interpreter pays per program and per step: the largest tiles, BLOCK_K = block_k(K)."""
    if interpreted():
        return Tiles(16, min(triton.next_power_of_2(n), 128), block_k(k), 4, 4)
    wide = n > 16384  # the logits
    if m <= 16 or (m <= 64 and n * k <= 1 << 22 and not wide):
        if swiglu or wide:
            return Tiles(16, 64 if wide else 32, 64, 4, 4)
        if k >= 4096:
            return Tiles(16, 16 if n <= 4096 else 32, 128, 2, 4)
        return Tiles(16, 16 if n <= 768 else 32, 128, 4, 4)
    if m <= 64:
        if swiglu:
            return Tiles(64, 128, 64, 8, 3)
        if wide:
            return Tiles(64, 128, 64, 4, 3) if k > 1024 else Tiles(64, 64, 64, 4, 4)
        return Tiles(64, 32, 128, 4, 4) if n <= 4096 else Tiles(64, 64, 128, 8, 3)
    if n * k <= 1 << 22 or (wide and k <= 1024):  # a small weight's batched verification (SmolLM2: 72-288 rows)
        if wide:
            return Tiles(64, 128, 64, 4, 3)
        if swiglu:
            return Tiles(16, 64, 64, 8, 3) if m <= 96 else Tiles(16, 128, 64, 4, 3) if m <= 160 else Tiles(32, 128, 64, 8, 3)
        if n <= 768:
            return Tiles(16 if m <= 96 else 64, 32, 64, 4, 3)
        return Tiles(16, 64 if m <= 160 else 128, 64, 4, 3)
    if k < 4096:  # not measured past 64 rows for mid-size weights: the square tiles of before
        return Tiles(128, 64 if swiglu else 128, block_k(k), 8, 3)
    if swiglu:
        return Tiles(128, 128, 64, 8, 3)
    if wide:
        return Tiles(128, 128, 64, 4, 3)
    return Tiles(64, 128, 128 if n <= 4096 else 64, 4, 3)


@functools.lru_cache(maxsize=4096)
def _tiles(m: int, n: int, k: int, swiglu: bool, interp: bool) -> Tiles:
    """`launch_tiles`, remembered: an eager step launches ~120 projections, and the rules' Python
    (env lookups included) cost more than the launch's own. `interp` (whether Triton interprets)
    is part of the key: the rules follow it."""
    return launch_tiles(m, n, k, swiglu)


def k_chunks(k: int, chunk: int | None) -> int:
    """How many chunks a row's K products are summed in, P_0 + P_1 + ... in order (the split-K of
    `linear_chunk`, part of the reduction order): K / chunk where chunk divides K into two or more,
    else 1 (the whole row from k = 0 up)."""
    return k // chunk if chunk and k > chunk and k % chunk == 0 else 1


ACROSS_ROWS = 16  # up to this many rows a split row's chunks run as programs of their own (more programs
# streaming the weight, where a plain step's few column tiles leave SMs idle); past it a program sums its chunks in turn


def chunk_plan(m: int, n: int, k: int, chunk: int | None, t: Tiles,
               device: torch.device) -> tuple[Tiles, int, torch.Tensor | None]:
    """How a launch of M rows sums K in chunks -> (its tiles: a chunk is whole K tiles, 64 wide where 128
    does not divide it; S chunks; the arrival counters when each chunk is a program of its own, else None —
    past ACROSS_ROWS rows, or during a capture with too few counters: the same sums in turn)."""
    split = k_chunks(k, chunk)
    if split > 1 and (k // split) % t.block_k:  # 64 divides every chunk the option allows
        t = Tiles(t.block_m, t.block_n, 64, t.warps, t.stages)
    tiles = triton.cdiv(m, t.block_m) * triton.cdiv(n, t.block_n)
    return t, split, arrival_counters(device, tiles) if split > 1 and m <= ACROSS_ROWS else None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           out_dtype: torch.dtype | None = None, residual: torch.Tensor | None = None,
           norm: tuple[torch.Tensor, float] | None = None, chunk: int | None = None) -> torch.Tensor:
    """x [..., K] @ weight[N, K]^T (+ bias [N]) (+ residual [..., N]) -> [..., N] in `out_dtype`
    (default x's dtype; float32 returns the accumulator unrounded, as the logits want). With
    norm = (g [K], eps), rmsnorm(x, g, eps) takes x's place. `chunk`: K summed in chunks of this
    many (`k_chunks`); None: in one."""
    return launch(x, weight, bias, out_dtype or x.dtype, residual, norm, swiglu=False, chunk=chunk)


def swiglu(x: torch.Tensor, gate_up_weight: torch.Tensor, gate_up_bias: torch.Tensor | None = None,
           norm: tuple[torch.Tensor, float] | None = None, chunk: int | None = None) -> torch.Tensor:
    """x [..., K], gate_up_weight [2I, K] = [Wg | Wu] -> silu(x Wg^T + bg) * (x Wu^T + bu) [..., I].
    With norm = (g [K], eps), rmsnorm(x, g, eps) takes x's place. `chunk`: as `linear`'s."""
    return launch(x, gate_up_weight, gate_up_bias, x.dtype, None, norm, swiglu=True, chunk=chunk)


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
           residual: torch.Tensor | None, norm: tuple[torch.Tensor, float] | None, swiglu: bool,
           chunk: int | None = None, tiles: Tiles | None = None, norm_unroll: int = 0) -> torch.Tensor:
    """The one launch of `_linear_kernel` behind `linear` and `swiglu` (their arguments). `tiles`: other
    tiles than the rules' (`launch_tiles`), and `norm_unroll`: the norm statistic's chunks in flight
    together (0: `rmsnorm.unroll`'s rule) — for `bench/linear_tiles.py`, which times other variants
    exactly as the decoder launches its own."""
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    w = weight if weight.stride(-1) == 1 else weight.contiguous()
    m, n = x2.shape[0], w.shape[0] // 2 if swiglu else w.shape[0]
    y = torch.empty(m, n, dtype=out_dtype, device=x.device)  # [M, N]
    r = None
    if residual is not None:
        r = residual.reshape(m, n)  # [M, N]
        if r.stride(-1) != 1:
            r = r.contiguous()
    interp = interpreted()
    t, split, counters = chunk_plan(m, n, k, chunk, tiles or _tiles(m, n, k, swiglu, interp), x.device)
    across = counters is not None
    grid = (triton.cdiv(m, t.block_m), triton.cdiv(n, t.block_n)) + ((split,) if across else ())
    part = torch.empty(split, 2, m, n, dtype=torch.float32, device=x.device) if across else y  # [S, 2, M, N] P_s (and its up half)
    norm_weight, eps = norm if norm is not None else (w, 0.0)
    options = launch_options(x.device, math.prod(grid))
    lines, step = prefetch_lines(options, k // split if across else k, w, m)
    _linear_kernel[grid](
        x2, w, bias if bias is not None else w, r if r is not None else y, norm_weight, y, part,
        counters if across else y, m, n, k, k // split, eps,
        x2.stride(0), w.stride(0), r.stride(0) if r is not None else 0, y.stride(0),
        HAS_BIAS=bias is not None, RESIDUAL=r is not None, SWIGLU=swiglu, NORM=norm is not None, SPLIT=split, ACROSS=across,
        BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k, NORM_K=block_k(k),
        NORM_UNROLL=norm_unroll or unroll(k, block_k(k), t.warps, m, x2.element_size()), BY_SUM=interp,
        PREFETCH=lines, STEP=step, INPUTS_FIRST=m == 1, num_warps=t.warps, num_stages=t.stages, **options,
    )
    return y.view(*lead, n)
