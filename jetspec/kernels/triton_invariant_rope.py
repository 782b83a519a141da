"""A plain step's RoPE (and q/k norm) and K/V write inside its attention launch (`invariant_rope_attention`):
exact mode's one-token step of one sequence, one kernel a layer fewer than `rope_write` then the attention.

    program (tile 0, kv head h, split s) of `_invariant_attention_fwd` with ROPE:
      q rows     its GROUP heads' q from the q/k/v row, rope(norm(x)) by `core/invariant.norm_rope`, as
                 `rope_write` computes it: the same bits as its q
      s = s_T    (the split whose blocks hold position T, the step's own key) first k_h = rope(norm(k)) and
                 v_h from the row, written to the pool row slot(T) — then a barrier, so that its blocks read them back
      then       the attention as ever: the same keys, in the same order, the same bits

Exactly one program of each kv head writes (s_T is one split); no other split reads row slot(T). The
barrier orders the program's own stores before its loads (`bar.sync`: the CTA's global writes are
visible to its threads after it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.invariant import norm_rope, rope_heads, rope_weights
from .invariant_launch_forms import TAIL_ROWS


@triton.jit
def _rope_step(QKV, COS, SIN, QW, KW, eps, K, V, SLOTS, head, row_ok, prefix_len, kvh, split, hq, hkv, stride_kr,
               stride_kh, stride_vr, stride_vh, QK_NORM: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_N: tl.constexpr, SPLIT_BLOCKS: tl.constexpr):
    """This program's q rows (heads `head` [BLOCK_M]) = rope(norm(q)) from the q/k/v row -> [BLOCK_M, D]; the program of
    split s_T first writes kv head `kvh`'s k = rope(norm(k)), v to the pool row slot(T); all meet the barrier."""
    offs_d = tl.arange(0, HEAD_DIM)
    cos = tl.load(COS + offs_d).to(tl.float32)[None, :]  # [1, D]
    sin = tl.load(SIN + offs_d).to(tl.float32)[None, :]
    if split == (prefix_len // BLOCK_N) // SPLIT_BLOCKS:
        kv = kvh + tl.zeros([1], tl.int32)  # [1]
        x, x_partner = rope_heads(QKV + hq * HEAD_DIM, kv, kv >= 0, HEAD_DIM, HEAD_DIM)  # [1, D]
        w, w_partner = rope_weights(KW, HEAD_DIM, HEAD_DIM, QK_NORM)
        k = norm_rope(x, x_partner, w, w_partner, cos, sin, HEAD_DIM, eps, HEAD_DIM, QK_NORM, K.dtype.element_ty)
        v = tl.load(QKV + (hq + hkv + kvh) * HEAD_DIM + offs_d[None, :])  # [1, D]
        slot = tl.load(SLOTS + prefix_len).to(tl.int64)
        tl.store(K + slot * stride_kr + kvh * stride_kh + offs_d[None, :], k)
        tl.store(V + slot * stride_vr + kvh * stride_vh + offs_d[None, :], v)
    x, x_partner = rope_heads(QKV, head, row_ok, HEAD_DIM, HEAD_DIM)  # [BLOCK_M, D]
    w, w_partner = rope_weights(QW, HEAD_DIM, HEAD_DIM, QK_NORM)
    q = norm_rope(x, x_partner, w, w_partner, cos, sin, HEAD_DIM, eps, HEAD_DIM, QK_NORM, K.dtype.element_ty)
    tl.debug_barrier()
    return q


def invariant_rope_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None, k_rows: torch.Tensor,
                             v_rows: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, ancestors: torch.Tensor,
                             prefix_len: torch.Tensor, scale: float, split_blocks: int, head_dim: int,
                             chain: bool) -> torch.Tensor:
    """`rope_write` then `invariant_tree_attention` of one token, in one launch: qkv [1, Hq·D + 2·Hkv·D]; cos, sin
    [1, D] (or [1, 1, D]); qk_norm (q weight [D], k weight [D], eps) or None; k_rows, v_rows [R, Hkv, D] (the
    step's K/V written to row slots[T]); slots, positions [1], ancestors [1, 1], prefix_len [1], chain as
    `invariant_tree_attention` takes them -> [1, Hq, D]."""
    from .triton_invariant_attention import _launch

    q = qkv.view(1, -1, head_dim)  # [1, Hq + 2 Hkv, D]: q heads, k heads, v heads
    cos, sin = cos.reshape(-1), sin.reshape(-1)  # [D] each
    assert q.shape[1] > 2 * k_rows.shape[1] and cos.numel() == head_dim and cos.stride(0) == sin.stride(0) == 1
    q_w, k_w, eps = qk_norm if qk_norm is not None else (cos, cos, 0.0)  # unread without a norm
    return _launch(q, k_rows, v_rows, slots, positions, ancestors, prefix_len, None, None, (1, 1), slots.numel(), scale,
                   split_blocks, chain, True, TAIL_ROWS, 4, 0, -1, rope=(cos, sin, q_w, k_w, eps, qk_norm is not None))
