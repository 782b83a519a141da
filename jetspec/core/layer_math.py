"""RMSNorm and rotary position embeddings (RoPE): the one home of the math that our decoder, the
draft heads and the kit's `TinyDecoder` share (their Triton kernels mirror it; `ops.py` of the
decoder states which rounding each kernel follows).

    rms_norm(x) = weight * x / sqrt(mean(x^2) + eps)            the statistic in float32
    rope(x)     = x * cos + rotate_half(x) * sin                 rotate_half(x) = [-x_hi, x_lo]
    cos, sin    = cos(p f_i), sin(p f_i) for the pair i and its twin i + D/2,   f_i = theta^(-2i/D)

Two callers round differently, and both roundings are kept, each behind an explicit parameter,
because each is fixed by something outside the code:

* the decoder follows Hugging Face Llama / Qwen bit for bit (its exact path, `exact = true`, and
  the identity tests against `transformers` check it): the normalised x is rounded to x's dtype
  before the weight multiplies it (`scale_in_float32=False`), RoPE is applied in x's dtype
  (`in_float32=False`) and f_i = 1 / theta^(2i/D) (`reciprocal=True`);
* the draft heads were trained with the weight multiplied in float32 (`scale_in_float32=True`),
  RoPE in float32 (`in_float32=True`) and f_i = theta^(-2i/D) computed directly
  (`reciprocal=False`, one ulp away from the reciprocal for some i): the shipped checkpoints give
  the same outputs only with that math.

In float32 the two RMSNorm roundings agree bit for bit; they part in bf16 / fp16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, *, scale_in_float32: bool) -> torch.Tensor:
    """x [..., H], weight [H] or None (no scale) -> [..., H] in x's dtype (the weight's, if wider,
    when `scale_in_float32` is False). The statistic and the division run in float32; then
    `scale_in_float32=False`: round to x's dtype, multiply by the weight in that dtype (Hugging Face);
    `scale_in_float32=True`: multiply by the weight in float32, round once (the draft heads). There the
    statistic is torch's rms_norm of the float32 x: on the CPU the same passes as below, bit for bit;
    on CUDA one fused kernel, whose sum may round differently. A weight narrower than float32 is
    widened inside the multiply (type promotion: exact, and no float32 copy of it)."""
    if scale_in_float32:
        y = F.rms_norm(x.float(), x.shape[-1:], eps=eps)  # x / sqrt(mean(x^2) + eps) in float32
        return (y if weight is None else y * weight).to(x.dtype)
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is None:
        return y.to(x.dtype)
    return weight * y.to(x.dtype)


def rope_powers(head_dim: int, theta: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """theta^(2i/D) for i < D/2 -> [D/2] float32: the reciprocals of the frequencies (yarn scales
    them before taking the reciprocal)."""
    return theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)


def rope_frequencies(head_dim: int, theta: float, *, reciprocal: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """f_i = theta^(-2i/D) for i < D/2 -> [D/2] float32, computed on `device`: as 1 / theta^(2i/D)
    (`reciprocal=True`, Hugging Face) or as theta^(-2i/D) directly (`reciprocal=False`, the draft heads)."""
    if reciprocal:
        return 1.0 / rope_powers(head_dim, theta, device)
    return theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)


def rope_cos_sin(positions: torch.Tensor, frequencies: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [...] (any integer or float dtype), frequencies [D/2] float32 -> cos, sin [..., D]
    float32 of the angles p * f_i, the D/2 angles repeated for the second half (times `scale`:
    yarn's attention factor)."""
    angles = positions.float()[..., None] * frequencies.to(positions.device)  # [..., D/2]
    angles = torch.cat([angles, angles], dim=-1)  # [..., D]
    if scale == 1.0:
        return angles.cos(), angles.sin()
    return angles.cos() * scale, angles.sin() * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, in_float32: bool) -> torch.Tensor:
    """x [..., D], cos / sin broadcastable to x -> x * cos + rotate_half(x) * sin in x's dtype:
    computed in x's dtype (`in_float32=False`: cos / sin given in it; Hugging Face) or in float32
    and rounded once (`in_float32=True`: the draft heads; x is widened inside the multiplies by the
    float32 cos / sin, which is exact: no float32 copy of x, and rotate_half moves x's own values)."""
    dtype = x.dtype
    if in_float32:
        cos, sin = cos.float(), sin.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(dtype)
