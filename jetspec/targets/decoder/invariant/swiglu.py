"""silu(g) * u from the fused gate/up projection [g | u], elementwise in one kernel (the rounding
steps of F.silu(g) * u: silu rounded to the input dtype, then the product rounded)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ....core.invariant import LAUNCH

BLOCK = 1024


@triton.jit
def _silu_mul_kernel(GU, Y, n, I, stride_gu, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat index into Y [M, I]
    ok = offs < n
    g_ptr = GU + (offs // I) * stride_gu + offs % I
    g = tl.load(g_ptr, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(g_ptr + I, mask=ok, other=0.0).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(Y.dtype.element_ty)
    tl.store(Y + offs, (s.to(tl.float32) * u).to(Y.dtype.element_ty), mask=ok)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [..., 2I] = [g | u] -> silu(g) * u [..., I]."""
    lead, i = gate_up.shape[:-1], gate_up.shape[-1] // 2
    gu = gate_up.reshape(-1, 2 * i)
    if gu.stride(-1) != 1:
        gu = gu.contiguous()
    y = torch.empty(gu.shape[0], i, dtype=gate_up.dtype, device=gate_up.device)  # [M, I]
    n = y.numel()
    if n:
        _silu_mul_kernel[(triton.cdiv(n, BLOCK),)](gu, y, n, i, gu.stride(0), BLOCK=BLOCK, num_warps=4, **LAUNCH)
    return y.view(*lead, i)
