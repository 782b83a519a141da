"""RMSNorm, row-invariant, and the pieces of it that every invariant kernel that normalises shares:

    y = w * (x / sqrt(mean(x^2) + eps))      statistic in float32, product in x's dtype

* `sum_squares`: a tile of rows' sum of x^2, in the one order fixed by the row length H:

      lanes[m, j] = x[m, j]^2 + x[m, BK + j]^2 + x[m, 2BK + j]^2 + ...    BK = block_k(H), chunks from 0 up
      sum[m]      = pairwise_sum(lanes[m, :])                             a fixed binary tree over the BK lanes

  never by how many rows the tile has, so `rmsnorm` (one row a program) and the prologue of
  `linear(..., norm=)` (a tile of rows that follows M) get the same bits for a row;
* `rms_denominator` (core/invariant.py): sqrt(sum / H + eps);
* `rms_scale` (core/invariant.py): the quotient rounded to the dtype, then the weight's product rounded to the dtype,
  as `TorchOps.rmsnorm` (Hugging Face) rounds.

`rope_write`'s per-head q/k norm reduces its D features with `tl.sum` in a layout fixed by
(heads, D) — one program per token — and shares the other two steps.

The decoder launches this kernel nowhere in its forward: each RMSNorm there is the prologue of the
projection that follows it (`linear.py`). It is the unfused form, the composition the prologue is
tested against, and a norm for callers that want the normed rows themselves.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ....core.invariant import after_previous_kernel, block_k, launch_options, pairwise_sum, rms_denominator, rms_scale


@triton.jit
def sum_squares(X, rows, rows_ok, stride_x, H, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, UNROLL: tl.constexpr = 1):
    """rows [BLOCK_M] of X (row r at X + r * stride_x, H features; rows_ok masks them) ->
    sum_k x[r, k]^2 [BLOCK_M, 1] float32 in the order above. UNROLL chunks are loaded side by side
    (independent loads in flight together, not one memory latency per chunk; `unroll`), then added
    in order; a chunk past H adds 0, which leaves every lane as it was: the same bits for any UNROLL."""
    lanes = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
    for k0 in range(0, H, BLOCK_K * UNROLL):
        for u in tl.static_range(UNROLL):
            kk = k0 + u * BLOCK_K + tl.arange(0, BLOCK_K)
            x = tl.load(X + rows[:, None] * stride_x + kk[None, :], mask=rows_ok[:, None] & (kk < H)[None, :], other=0.0)
            x = x.to(tl.float32)  # [BLOCK_M, BLOCK_K]
            lanes = lanes + x * x
    return pairwise_sum(lanes, BLOCK_M)


def unroll(h: int, block_k: int, warps: int, rows: int, itemsize: int = 2) -> int:
    """`sum_squares`' chunks in flight together in a launch of `rows` rows of h features, each chunk block_k
    elements of `itemsize` bytes. For one row (a plain step, whose time is this chain of loads) as many as
    256 bytes of that row a thread holds (64 registers), at most all of them: SmolLM2's 576 bf16 features,
    9 chunks of 64, and Qwen3-8B's 4096, 32 chunks of 128 in tiles of 2 warps — one memory latency instead
    of 9 or 32. Counted for the one row, not the tile's: on a GPU a launch's M = 1 is a constant (Triton's
    JIT specializes an integer argument equal to 1, as tests/kernel_tests/aot_sm90.py compiles it), so the
    tile's other rows fold away. More rows: one at a time (trees ran slower with this and the weights'
    prefetch together: bench/RESULTS.md, 2026-12-08)."""
    if rows > 1:
        return 1
    fits = (256 * warps * 32) // (block_k * itemsize)
    return max(1, min(triton.cdiv(h, block_k), fits))


@triton.jit
def _rmsnorm_kernel(X, W, Y, H, eps, stride_x, stride_y, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    after_previous_kernel(PDL)
    row = tl.program_id(0) + tl.zeros([1], tl.int32)  # [1]: one program per row
    denominator = rms_denominator(sum_squares(X, row, row >= 0, stride_x, H, 1, BLOCK_K), H, eps)  # [1, 1]
    for k0 in range(0, H, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)[None, :]
        ok = kk < H
        x = tl.load(X + row[:, None] * stride_x + kk, mask=ok, other=0.0).to(tl.float32)  # [1, BLOCK_K]
        y = rms_scale(x, tl.load(W + kk, mask=ok, other=0.0), denominator, Y.dtype.element_ty)
        tl.store(Y + row[:, None] * stride_y + kk, y.to(Y.dtype.element_ty), mask=ok)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., H], weight [H] -> [..., H] in x's dtype."""
    h = x.shape[-1]
    x2 = x.reshape(-1, h)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)  # [rows, H]
    if x2.shape[0]:
        _rmsnorm_kernel[(x2.shape[0],)](x2, weight, y, h, eps, x2.stride(0), y.stride(0),
                                        BLOCK_K=block_k(h), num_warps=4, **launch_options(x.device, x2.shape[0]))
    return y.view(x.shape)
