"""RMSNorm, row-invariant: one program per row, the row's sum of squares reduced in one layout
fixed by the row length.

    y = w * (x / sqrt(mean(x^2) + eps))      statistic in float32, product in x's dtype

`rms_denominator` and `rms_scale` are the two halves every invariant kernel that normalises uses
(this one; `rope_write`'s per-head q/k norm), so the rounding steps are written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ....core.invariant import LAUNCH


@triton.jit
def rms_denominator(x, n, eps, AXIS: tl.constexpr):
    """x float32 (zeros past n along AXIS) -> sqrt(mean(x^2) + eps) over AXIS, kept as a size-1
    axis: one reduction of each whole row."""
    return tl.sqrt(tl.sum(x * x, axis=AXIS, keep_dims=True) / n + eps)


@triton.jit
def rms_scale(x, w, denominator, dtype: tl.constexpr):
    """x float32, w the weight -> w * (x / denominator): the quotient rounded to `dtype`, then the
    product rounded to `dtype`; returned in float32."""
    normed = (x / denominator).to(dtype)
    return (w.to(tl.float32) * normed.to(tl.float32)).to(dtype).to(tl.float32)


@triton.jit
def _rmsnorm_kernel(X, W, Y, H, eps, stride_x, stride_y, BLOCK_H: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_H)
    ok = offs < H
    x = tl.load(X + row * stride_x + offs, mask=ok, other=0.0).to(tl.float32)  # [BLOCK_H]
    w = tl.load(W + offs, mask=ok, other=0.0)
    y = rms_scale(x, w, rms_denominator(x, H, eps, 0), Y.dtype.element_ty)
    tl.store(Y + row * stride_y + offs, y.to(Y.dtype.element_ty), mask=ok)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., H], weight [H] -> [..., H] in x's dtype."""
    h = x.shape[-1]
    x2 = x.reshape(-1, h)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)  # [rows, H]
    if x2.shape[0]:
        _rmsnorm_kernel[(x2.shape[0],)](x2, weight, y, h, eps, x2.stride(0), y.stride(0),
                                        BLOCK_H=triton.next_power_of_2(h), num_warps=4, **LAUNCH)
    return y.view(x.shape)
