"""RMSNorm, row-invariant: one program per row, the row's sum of squares reduced in one layout
fixed by the row length.

    y = w * (x / sqrt(mean(x^2) + eps))      statistic in float32, product in x's dtype
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ....core.invariant import LAUNCH


@triton.jit
def _rmsnorm_kernel(X, W, Y, H, eps, stride_x, stride_y, BLOCK_H: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_H)
    ok = offs < H
    x = tl.load(X + row * stride_x + offs, mask=ok, other=0.0).to(tl.float32)  # [BLOCK_H]
    mean_sq = tl.sum(x * x, axis=0) / H
    normed = (x / tl.sqrt(mean_sq + eps)).to(Y.dtype.element_ty)
    w = tl.load(W + offs, mask=ok, other=0.0)
    y = w.to(tl.float32) * normed.to(tl.float32)
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
