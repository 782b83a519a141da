"""The decoder's reductions, in two implementations chosen once per target:

* `TorchOps`: torch's own kernels (cuBLAS / the CPU BLAS pick tilings and split-K per shape, so
  a token's bits can depend on how many tokens the forward has);
* `InvariantOps` (`exact = true`): our row-invariant Triton kernels (`invariant/`), so a token's
  bits depend on its own row alone (`jetspec.core.invariant`).

Elementwise steps (residual adds, RoPE, the embedding gather) are invariant as they are.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

MM_OUT_DTYPE = [True]  # torch.mm(..., out_dtype=float32) works here; [False] after its first failure


class LayerOps(Protocol):
    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [..., K] @ weight[N, K]^T (+ bias [N]) -> [..., N] in x's dtype."""
        ...

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x [..., H] -> weight * x / rms(x), statistic in float32, product in x's dtype."""
        ...

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """gate_up [..., 2I] = [g | u] -> silu(g) * u [..., I]."""
        ...

    def logits(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """h [..., H] @ weight[V, H]^T -> [..., V] float32 (the accumulator, not rounded to h's dtype)."""
        ...


class TorchOps:
    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return weight * xf.to(x.dtype)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        g, u = gate_up.chunk(2, dim=-1)
        return F.silu(g) * u

    def logits(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return fp32_logits(h, weight)


class InvariantOps:
    def __init__(self) -> None:
        from . import invariant  # imports triton

        self.kernels = invariant

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.kernels.linear(x, weight, bias)

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return self.kernels.rmsnorm(x, weight, eps)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self.kernels.silu_mul(gate_up)

    def logits(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.kernels.linear(h, weight, out_dtype=torch.float32)


def fp32_logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """h [..., H] @ weight[V, H]^T -> logits [..., V] float32.

    In bf16/fp16 on CUDA the GEMM's fp32 accumulator is returned as it is (`out_dtype`) instead of
    being rounded to bf16 first: bf16 logits keep 8 significant bits — steps of 0.125 around 20 —
    so two tokens would often tie exactly. Elsewhere: the product in the weights' dtype, upcast."""
    if not (h.is_cuda and h.dtype in (torch.bfloat16, torch.float16)):
        return F.linear(h, weight).float()
    if MM_OUT_DTYPE[0]:
        try:
            flat = h.reshape(-1, h.shape[-1])  # [n, H]
            return torch.mm(flat, weight.t(), out_dtype=torch.float32).view(*h.shape[:-1], weight.shape[0])
        except (RuntimeError, TypeError, NotImplementedError):  # a torch without mm's out_dtype on this GPU
            MM_OUT_DTYPE[0] = False
    return F.linear(h.float(), weight.float())
