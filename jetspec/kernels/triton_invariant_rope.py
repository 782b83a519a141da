"""A plain step's RoPE and K/V write inside its attention launch (`invariant_rope_attention`): exact mode's
one-token step of one sequence without a q/k norm, one kernel a layer fewer than `rope_write` then the attention.

    program (tile 0, kv head h, split s) of `_invariant_attention_fwd` with ROPE:
      q rows     its GROUP heads' q from the q/k/v row, rope(x) = x * cos + rotate_half(x) * sin, rounded as
                 `rope_write` rounds (each product to the dtype, then the sum): the same bits as its q
      s = s_T    (the split whose blocks hold position T, the step's own key) also k_h = rope(k), v_h from the
                 row, written to the pool row slot(T) — then a barrier, so that its blocks read them back
      then       the attention as ever: the same keys, in the same order, the same bits

Exactly one program of each kv head writes (s_T is one split); no other split reads row slot(T). The
barrier orders the program's own stores before its loads (`bar.sync`: the CTA's global writes are
visible to its threads after it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .invariant_launch_forms import TAIL_ROWS


@triton.jit
def _roped(x, x_partner, cos, sin, offs, D, dtype: tl.constexpr):
    """rope(x) in `dtype`, as `rope_write._norm_rope` computes it (no norm): x, x_partner float32 (the
    rotate_half partner's features), cos, sin float32, offs the features."""
    rotated = tl.where(offs < D // 2, -x_partner, x_partner)  # rotate_half(x) = [-x_hi, x_lo]
    return ((x * cos).to(dtype).to(tl.float32) + (rotated * sin).to(dtype).to(tl.float32)).to(dtype)


@triton.jit
def _rope_q(QKV, COS, SIN, q, head, row_ok, stride_qh, HEAD_DIM: tl.constexpr):
    """q [BLOCK_M, D] as loaded from the q/k/v row (its heads' raw features) -> rope(q) [BLOCK_M, D]."""
    offs_d = tl.arange(0, HEAD_DIM)
    partner = tl.where(offs_d < HEAD_DIM // 2, offs_d + HEAD_DIM // 2, offs_d - HEAD_DIM // 2)
    x_partner = tl.load(QKV + head[:, None] * stride_qh + partner[None, :], mask=row_ok[:, None], other=0.0)
    cos = tl.load(COS + offs_d).to(tl.float32)[None, :]  # [1, D]
    sin = tl.load(SIN + offs_d).to(tl.float32)[None, :]
    return _roped(q.to(tl.float32), x_partner.to(tl.float32), cos, sin, offs_d[None, :], HEAD_DIM, q.dtype)


@triton.jit
def _write_pending(QKV, COS, SIN, K, V, SLOTS, prefix_len, kvh, split, hq, hkv, stride_kr, stride_kh, stride_vr, stride_vh,
                   HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_BLOCKS: tl.constexpr):
    """The program of split s_T writes kv head `kvh`'s k = rope(k), v of the step's token to the pool row
    slot(T); every program then meets the barrier."""
    if split == (prefix_len // BLOCK_N) // SPLIT_BLOCKS:
        offs_d = tl.arange(0, HEAD_DIM)
        partner = tl.where(offs_d < HEAD_DIM // 2, offs_d + HEAD_DIM // 2, offs_d - HEAD_DIM // 2)
        row = QKV + (hq + kvh) * HEAD_DIM
        x = tl.load(row + offs_d)
        x_partner = tl.load(row + partner).to(tl.float32)
        v = tl.load(QKV + (hq + hkv + kvh) * HEAD_DIM + offs_d)  # [D]
        cos = tl.load(COS + offs_d).to(tl.float32)
        sin = tl.load(SIN + offs_d).to(tl.float32)
        slot = tl.load(SLOTS + prefix_len).to(tl.int64)
        k = _roped(x.to(tl.float32), x_partner, cos, sin, offs_d, HEAD_DIM, x.dtype)  # [D]
        tl.store(K + slot * stride_kr + kvh * stride_kh + offs_d, k)
        tl.store(V + slot * stride_vr + kvh * stride_vh + offs_d, v)
    tl.debug_barrier()


def invariant_rope_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_rows: torch.Tensor,
                             v_rows: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, ancestors: torch.Tensor,
                             prefix_len: torch.Tensor, scale: float, split_blocks: int, head_dim: int,
                             chain: bool) -> torch.Tensor:
    """`rope_write` (no q/k norm) then `invariant_tree_attention` of one token, in one launch: qkv [1, Hq·D + 2·Hkv·D];
    cos, sin [1, D] (or [1, 1, D]); k_rows, v_rows [R, Hkv, D] (the step's K/V written to row slots[T]); slots,
    positions [1], ancestors [1, 1], prefix_len [1], chain as `invariant_tree_attention` takes them -> [1, Hq, D]."""
    from .triton_invariant_attention import _launch

    q = qkv.view(1, -1, head_dim)  # [1, Hq + 2 Hkv, D]: q heads, k heads, v heads
    cs = (cos.reshape(-1), sin.reshape(-1))  # [D] each
    assert q.shape[1] > 2 * k_rows.shape[1] and cs[0].numel() == head_dim and cs[0].stride(0) == cs[1].stride(0) == 1
    return _launch(q, k_rows, v_rows, slots, positions, ancestors, prefix_len, None, None, (1, 1), slots.numel(), scale,
                   split_blocks, chain, True, TAIL_ROWS, 4, 0, -1, rope=cs)
