"""Rotary position embeddings (RoPE), with the scaling variants Llama / Qwen configs declare.

For head dim D and pair index i < D/2, the base frequency is  f_i = theta^(-2i/D). A token at
position p rotates the pair (x_i, x_{i+D/2}) by the angle p * f_i:

    rope(x)_i       = x_i cos(p f_i) - x_{i+D/2} sin(p f_i)
    rope(x)_{i+D/2} = x_{i+D/2} cos(p f_i) + x_i sin(p f_i)
    i.e.  rope(x) = x * cos + rotate_half(x) * sin,  rotate_half(x) = [-x_hi, x_lo]

Scaling variants change only f_i (and, for yarn, multiply cos/sin by an attention factor):
* linear:  f_i / factor                                          (position interpolation)
* llama3:  wavelength 2 pi / f_i  > L/low_freq_factor   -> f_i / factor
                                  < L/high_freq_factor  -> f_i
           in between: smooth mix (1 - s) f_i / factor + s f_i,
           s = (L / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
           (L = original_max_positions)
* yarn:    per-pair mix of f_i and f_i / factor by a linear ramp over the pair index between the
           dims that make beta_fast and beta_slow full rotations in L positions; cos/sin are
           scaled by 0.1 ln(factor) + 1 (or the configured attention_factor).
The cos/sin table of every position is computed once (float32 math, then cast to the model
dtype, as transformers does) and gathered by position in forward: no host sync. The math itself
(f_i, the angles, rotate_half) lives in `core.layer_math`, with Hugging Face's roundings.
"""

from __future__ import annotations

import math

import torch

from ...core.layer_math import rope_cos_sin, rope_frequencies, rope_powers
from .config import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> tuple[torch.Tensor, float]:
    """-> (f [D/2] float32, attention_scale)."""
    d = head_dim
    inv_freq = rope_frequencies(d, rope.theta, reciprocal=True)  # [D/2] 1 / theta^(2i/D)
    if rope.rope_type == "default":
        return inv_freq, 1.0
    if rope.rope_type == "linear":
        return inv_freq / rope.factor, 1.0
    if rope.rope_type == "llama3":
        return _llama3(inv_freq, rope), 1.0
    if rope.rope_type == "yarn":
        return _yarn(rope_powers(d, rope.theta), rope, d)
    raise AssertionError(rope.rope_type)  # DecoderConfig validated the type


def _llama3(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    old_len = rope.original_max_positions
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq  # [D/2]
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    mixed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, mixed, scaled)


def _yarn(base: torch.Tensor, rope: RopeConfig, d: int) -> tuple[torch.Tensor, float]:
    factor, old_len = rope.factor, rope.original_max_positions

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = rope.attention_factor
    if attention is None:
        if rope.mscale and rope.mscale_all_dim:
            attention = mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
        else:
            attention = mscale(factor)

    def correction_dim(rotations: float) -> float:  # pair index making `rotations` turns in old_len
        return (d * math.log(old_len / (rotations * 2 * math.pi))) / (2 * math.log(rope.theta))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # [D/2]
    extrapolation = 1 - ramp  # 1: keep f_i (high-frequency pairs), 0: f_i / factor
    inv_freq = (1.0 / (factor * base)) * (1 - extrapolation) + (1.0 / base) * extrapolation
    return inv_freq, float(attention)


class RotaryTable:
    """cos/sin of every position 0..max_positions-1: 2 x [P, D] in the model dtype."""

    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int, dtype: torch.dtype, device: torch.device):
        inv_freq, scale = inverse_frequencies(rope, head_dim)
        cos, sin = rope_cos_sin(torch.arange(max_positions), inv_freq, scale)  # [P, D] float32, angle p * f_i
        self.cos = cos.to(dtype=dtype, device=device)  # [P, D]
        self.sin = sin.to(dtype=dtype, device=device)  # [P, D]

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [N] int64 (on the table's device) -> cos, sin [N, 1, D] (broadcast over heads)."""
        return self.cos[positions][:, None, :], self.sin[positions][:, None, :]

