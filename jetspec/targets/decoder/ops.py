"""The decoder's per-layer steps, in two implementations chosen once per target:

* `TorchOps`: torch's own kernels (cuBLAS / the CPU BLAS pick tilings and split-K per shape, so
  a token's bits can depend on how many tokens the forward has), one per elementary step;
* `InvariantOps` (`exact = true`): our row-invariant Triton kernels (`invariant/`), so a token's
  bits depend on its own row alone (`jetspec.core.invariant`), with the elementwise steps fused
  into them: five launches per layer besides attention (four projections — the two norms run as
  the prologues of q/k/v and gate/up, the residual adds as the epilogues of o and down — and
  rope_write), and one for the final norm and the logits. A backend that `AttendsRoped` (the triton
  backend's `fuse_rope`) takes rope_write into its attention launch where a step allows (`rope_attend`).

A step's contract is the unfused composition written in its docstring; `TorchOps` is that
composition, and `InvariantOps` rounds where it rounds. `norm = (weight [K], eps)` on a
projection is an RMSNorm of x before it (`rmsnorm`): the residual stream stays un-normed.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from ...core.batch import PackedKV
from ...core.errors import IncompatibleError
from ...core.interfaces import AttentionMeta, KVCache, RowKVCache
from ...core.layer_math import apply_rope, rms_norm

MM_OUT_DTYPE = [True]  # torch.mm(..., out_dtype=float32) works here; [False] after its first failure
Norm = tuple[torch.Tensor, float]  # (weight [K], eps): an RMSNorm of a projection's input


class LayerOps(Protocol):
    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor | None = None, norm: Norm | None = None) -> torch.Tensor:
        """x [..., K] (rmsnorm(x, *norm) with `norm`) @ weight[N, K]^T (+ bias [N]), rounded to x's
        dtype, (+ residual [..., N]) -> [..., N]."""
        ...

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x [..., H] -> weight * x / rms(x), statistic in float32, product in x's dtype."""
        ...

    def swiglu(self, x: torch.Tensor, gate_up_weight: torch.Tensor, gate_up_bias: torch.Tensor | None,
               norm: Norm | None = None) -> torch.Tensor:
        """x [..., H], gate_up_weight [2I, H] -> silu(g) * u [..., I], [g | u] = linear(x, gate_up_weight,
        bias, norm=norm)."""
        ...

    def rope_write(self, qkv: torch.Tensor, heads: tuple[int, int, int], cos: torch.Tensor, sin: torch.Tensor,
                   qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None, cache: KVCache, layer: int,
                   meta: AttentionMeta) -> torch.Tensor:
        """qkv [N, Hq·D + 2·Hkv·D], heads (Hq, Hkv, D), cos/sin [N, 1, D] -> q [N, Hq, D]:
        split q, k, v; with qk_norm = (q weight [D], k weight [D], eps) RMSNorm each head of q
        and k; apply_rope to q and k; `cache.write(layer, k, v)`."""
        ...

    def logits(self, h: torch.Tensor, weight: torch.Tensor, norm: Norm | None = None) -> torch.Tensor:
        """h [..., H] (rmsnorm(h, *norm) with `norm`) @ weight[V, H]^T -> [..., V] float32 (the
        accumulator, not rounded to h's dtype)."""
        ...

    def rope_attend(self, qkv: torch.Tensor, heads: tuple[int, int, int], cos: torch.Tensor, sin: torch.Tensor,
                    qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None, cache: KVCache, layer: int,
                    meta: AttentionMeta, attention: object, scale: float) -> torch.Tensor | None:
        """`rope_write` then `attention.attend` in one step where the backend can (`AttendsRoped`) -> [N, Hq, D];
        None: the caller runs the two."""
        ...


@runtime_checkable
class AttendsRoped(Protocol):
    """An attention backend that takes a step's q/k/v row instead of q: it applies the q/k norm and RoPE as
    `rope_write` rounds them, writes the K/V into the cache and attends, in fewer launches. None: not this step."""

    def attend_roped(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None, head_dim: int, cache: KVCache,
                     layer: int, meta: AttentionMeta, scale: float) -> torch.Tensor | None:
        """qkv [N, Hq·D + 2·Hkv·D], cos/sin [N, 1, D], qk_norm as `rope_write`'s -> [N, Hq, D], the layer's K/V
        written; or None."""
        ...


class TorchOps:
    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor | None = None, norm: Norm | None = None) -> torch.Tensor:
        y = F.linear(self._normed(x, norm), weight, bias)
        return y if residual is None else residual + y

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm(x, weight, eps, scale_in_float32=False)

    def swiglu(self, x: torch.Tensor, gate_up_weight: torch.Tensor, gate_up_bias: torch.Tensor | None,
               norm: Norm | None = None) -> torch.Tensor:
        g, u = F.linear(self._normed(x, norm), gate_up_weight, gate_up_bias).chunk(2, dim=-1)  # [..., I] each
        return F.silu(g) * u

    def rope_write(self, qkv, heads, cos, sin, qk_norm, cache, layer, meta) -> torch.Tensor:
        n, (hq, hkv, d) = qkv.shape[0], heads
        q = qkv[:, : hq * d].view(n, hq, d)  # [N, Hq, D]
        k = qkv[:, hq * d : (hq + hkv) * d].view(n, hkv, d)  # [N, Hkv, D]
        v = qkv[:, (hq + hkv) * d :].view(n, hkv, d)  # [N, Hkv, D]
        if qk_norm is not None:
            q_weight, k_weight, eps = qk_norm
            q, k = self.rmsnorm(q, q_weight, eps), self.rmsnorm(k, k_weight, eps)
        q, k = apply_rope(q, cos, sin, in_float32=False), apply_rope(k, cos, sin, in_float32=False)
        cache.write(layer, k, v)
        return q

    def logits(self, h: torch.Tensor, weight: torch.Tensor, norm: Norm | None = None) -> torch.Tensor:
        return fp32_logits(self._normed(h, norm), weight)

    def rope_attend(self, qkv, heads, cos, sin, qk_norm, cache, layer, meta, attention, scale) -> None:
        return None

    def _normed(self, x: torch.Tensor, norm: Norm | None) -> torch.Tensor:
        return x if norm is None else self.rmsnorm(x, *norm)


class InvariantOps:
    def __init__(self, linear_chunk: int | None = None) -> None:
        from . import invariant  # imports triton

        self.kernels = invariant
        self.chunk = linear_chunk  # the projections' K chunks (`invariant.linear.k_chunks`); the logits sum in one
        self._prefix: tuple[AttentionMeta, torch.Tensor] | None = None  # eager forwards: (meta, T [1] int32)
        self._roped: tuple[object, bool] | None = None  # (the last attention backend, whether it is `AttendsRoped`)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor | None = None, norm: Norm | None = None) -> torch.Tensor:
        return self.kernels.linear(x, weight, bias, residual=residual, norm=norm, chunk=self.chunk)

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return self.kernels.rmsnorm(x, weight, eps)

    def swiglu(self, x: torch.Tensor, gate_up_weight: torch.Tensor, gate_up_bias: torch.Tensor | None,
               norm: Norm | None = None) -> torch.Tensor:
        return self.kernels.swiglu(x, gate_up_weight, gate_up_bias, norm=norm, chunk=self.chunk)

    def rope_write(self, qkv, heads, cos, sin, qk_norm, cache, layer, meta) -> torch.Tensor:
        """The K/V go straight into the cache's pool rows, where the attention kernels read them
        (`RowKVCache`: `k`, `v` [L, ..., Hkv, D], `slot_table`, or None for logical order); a
        packed batch's (`PackedKV`) each into its own sequence's pending row of the shared pool."""
        hq, hkv, _ = heads
        q_weight, k_weight, eps = qk_norm if qk_norm is not None else (None, None, 0.0)
        if isinstance(cache, PackedKV):
            k, v, rows = cache.shared_rows()  # pools [L, ..., Hkv, D], rows [R] int32
            slots = prefix = None
        elif isinstance(cache, RowKVCache):
            k, v, rows, slots = cache.k, cache.v, None, cache.slot_table
            prefix = self._prefix_tensor(meta, k.device)
        else:
            raise IncompatibleError(f"exact = true writes K/V into a paged or dense KV cache, not {type(cache).__name__}")
        k_rows = k[layer].view(-1, *k.shape[-2:])  # [R, Hkv, D]
        v_rows = v[layer].view(-1, *v.shape[-2:])  # [R, Hkv, D]
        return self.kernels.rope_write(qkv, hq, hkv, cos, sin, q_weight, k_weight, eps, k_rows, v_rows, slots, prefix,
                                       rows)

    def logits(self, h: torch.Tensor, weight: torch.Tensor, norm: Norm | None = None) -> torch.Tensor:
        return self.kernels.linear(h, weight, out_dtype=torch.float32, norm=norm)

    def rope_attend(self, qkv, heads, cos, sin, qk_norm, cache, layer, meta, attention, scale) -> torch.Tensor | None:
        """The backend's one launch where it `AttendsRoped` this step (one sequence's), else None."""
        if isinstance(cache, PackedKV):  # a batch's rows: the two launches
            return None
        if self._roped is None or self._roped[0] is not attention:  # a Protocol check per backend, not per layer
            self._roped = (attention, isinstance(attention, AttendsRoped))
        if not self._roped[1]:
            return None
        return attention.attend_roped(qkv, cos, sin, qk_norm, heads[2], cache, layer, meta, scale)

    def _prefix_tensor(self, meta: AttentionMeta, device: torch.device) -> torch.Tensor:
        """T [1] int32 on the device: a graph replay's static `meta.prefix_len_t`, else made once
        per forward (every layer's write reads it)."""
        if meta.prefix_len_t is not None:
            return meta.prefix_len_t
        if self._prefix is None or self._prefix[0] is not meta or self._prefix[1].device != device:
            self._prefix = (meta, torch.full((1,), meta.prefix_len, dtype=torch.int32, device=device))
        return self._prefix[1]


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
