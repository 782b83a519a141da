"""From the fused q/k/v projection to attention's inputs in one kernel, row-invariant:

    q, k, v = split(qkv)                          qkv [N, Hq·D + 2·Hkv·D]
    q, k    = q_norm(q), k_norm(k)                Qwen3 only: RMSNorm over each head's D features
    q, k    = rope(q), rope(k)                    rope(x) = x * cos + rotate_half(x) * sin
    K[slot(T + j)], V[slot(T + j)] = k[j], v[j]   pending token j's row of the layer's pool
    return q                                      [N, Hq, D]

One program per token, all its heads; a head's norm reduces its D features as a fixed binary tree
(`core/invariant.norm_rope`, whatever the layout), and RoPE is elementwise, so a token's bits do not
depend on N — nor on which kernel does it (the attention's fused form shares `norm_rope`). Rounding
follows the unfused composition: the norm as `rmsnorm` (`rms_scale`), then x * cos and
rotate_half(x) * sin each rounded to the dtype, then their sum.

The pool rows come from the cache the way the attention kernels read it (`kernels/row_inputs.py`):
`k`, `v` [L, ..., Hkv, D] with token rows in between, an int32 `slot_table` (logical token ->
row; a dense cache has none: row = logical token), and T read from device memory, so a CUDA graph
replayed at another T writes where `cache.begin` reserved. A packed batch of several sequences
(`core/batch.py`) passes each token's pool row instead (`rows`, from `PackedKV.shared_rows`):
token r's K/V go to row rows[r], its own sequence's pending slot in the pool they share.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ....core.invariant import after_previous_kernel, launch_options, norm_rope, rope_heads, rope_weights


@triton.jit
def _rope_write_kernel(
    QKV, COS, SIN, QW, KW, Q, K_ROWS, V_ROWS, SLOTS, PREFIX, eps,
    stride_qkv, stride_cos, stride_q, stride_row, Hq, Hkv, D,
    BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_D: tl.constexpr,
    QK_NORM: tl.constexpr, HAS_SLOTS: tl.constexpr, PER_ROW: tl.constexpr, PDL: tl.constexpr,
):
    after_previous_kernel(PDL)
    # Every load before any store, the slot's chain (T, then the slot map) begun first: after the wait the
    # program waits on two memory latencies (its inputs together, then the slot map), not one per store —
    # loads in program order are not moved past a store to memory they might share.
    tok = tl.program_id(0)  # one program per token: all its heads
    if PER_ROW:  # a packed batch: SLOTS holds each token's pool row; -1: a CUDA graph's pad row, written nowhere
        slot = tl.load(SLOTS + tok).to(tl.int64)
    else:
        t = tl.load(PREFIX) + tok  # logical slot of pending token `tok`
    offs = tl.arange(0, BLOCK_D)[None, :]
    d_ok = offs < D
    row = QKV + tok * stride_qkv  # [q heads | k heads | v heads], D features each
    cos = tl.load(COS + tok * stride_cos + offs, mask=d_ok, other=0.0).to(tl.float32)  # [1, BLOCK_D]
    sin = tl.load(SIN + tok * stride_cos + offs, mask=d_ok, other=0.0).to(tl.float32)
    hq_ids, hkv_ids = tl.arange(0, BLOCK_HQ), tl.arange(0, BLOCK_HKV)
    q_x, q_partner = rope_heads(row, hq_ids, hq_ids < Hq, D, BLOCK_D)  # [BLOCK_HQ, BLOCK_D] each
    k_x, k_partner = rope_heads(row + Hq * D, hkv_ids, hkv_ids < Hkv, D, BLOCK_D)  # [BLOCK_HKV, BLOCK_D] each
    kv_heads = hkv_ids[:, None]
    v = tl.load(row + (Hq + Hkv) * D + kv_heads * D + offs, mask=(kv_heads < Hkv) & d_ok)  # [BLOCK_HKV, BLOCK_D]
    qw, qw_partner = rope_weights(QW, D, BLOCK_D, QK_NORM)  # [1, BLOCK_D] each
    kw, kw_partner = rope_weights(KW, D, BLOCK_D, QK_NORM)
    if not PER_ROW:
        if HAS_SLOTS:
            slot = tl.load(SLOTS + t).to(tl.int64)
        else:
            slot = t.to(tl.int64)
    dtype = Q.dtype.element_ty

    q_heads = tl.arange(0, BLOCK_HQ)[:, None]
    q = norm_rope(q_x, q_partner, qw, qw_partner, cos, sin, D, eps, BLOCK_D, QK_NORM, dtype)
    tl.store(Q + tok * stride_q + q_heads * D + offs, q, mask=(q_heads < Hq) & d_ok)
    kv_ok = (kv_heads < Hkv) & d_ok & (kv_heads * 0 + slot >= 0)  # a block mask (a scalar one fails in the interpreter)
    slot = tl.maximum(slot, 0)
    k = norm_rope(k_x, k_partner, kw, kw_partner, cos, sin, D, eps, BLOCK_D, QK_NORM, dtype)
    tl.store(K_ROWS + slot * stride_row + kv_heads * D + offs, k, mask=kv_ok)
    tl.store(V_ROWS + slot * stride_row + kv_heads * D + offs, v, mask=kv_ok)


def rope_write(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, cos: torch.Tensor, sin: torch.Tensor,
               q_norm: torch.Tensor | None, k_norm: torch.Tensor | None, eps: float,
               k_rows: torch.Tensor, v_rows: torch.Tensor, slots: torch.Tensor | None,
               prefix: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """qkv [N, Hq·D + 2·Hkv·D]; cos, sin [N, 1, D] or [N, D]; q_norm, k_norm [D] or None (no
    norm); k_rows, v_rows [R, Hkv, D] (the layer's pool, written in place); slots [>= T + N] int32
    or None (row = logical slot); prefix [1] int32 T on the device -> q [N, Hq, D]. Or, for the
    packed tokens of several sequences, rows [N] int32: token j's pool row, or -1 (its K/V are not
    written: a CUDA graph's pad row; its q is computed as any row's) (slots, prefix unused)."""
    n, d = qkv.shape[0], k_rows.shape[-1]
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    cos, sin = cos.reshape(n, d), sin.reshape(n, d)  # [N, D] views of the gathered table rows
    assert cos.stride(-1) == 1 and sin.stride() == cos.stride() and k_rows.is_contiguous() and v_rows.is_contiguous()
    q = torch.empty(n, num_heads, d, dtype=qkv.dtype, device=qkv.device)  # [N, Hq, D]
    has_slots, per_row = slots is not None, rows is not None
    if per_row:  # SLOTS: each token's pool row; PREFIX unread
        slots = prefix = rows
    if n:
        _rope_write_kernel[(n,)](
            qkv, cos, sin, q_norm if q_norm is not None else qkv, k_norm if k_norm is not None else qkv,
            q, k_rows, v_rows, slots if slots is not None else prefix, prefix, eps,
            qkv.stride(0), cos.stride(0), q.stride(0), k_rows.stride(0), num_heads, num_kv_heads, d,
            BLOCK_HQ=triton.next_power_of_2(num_heads), BLOCK_HKV=triton.next_power_of_2(num_kv_heads),
            BLOCK_D=triton.next_power_of_2(d), QK_NORM=q_norm is not None, HAS_SLOTS=has_slots,
            PER_ROW=per_row, num_warps=4, **launch_options(qkv.device, n),
        )
    return q
