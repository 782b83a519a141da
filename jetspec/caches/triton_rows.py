"""A staged commit's K/V move in one Triton launch (`stage_commit` of the dense and paged caches, on
CUDA; elsewhere their torch ops run, the reference; Triton's interpreter runs this for the tests).

For every layer l of each pool (K, and V when given: one launch for both), j < M:

    pool[l, row(start + j)] <- pool[l, row(start + keep[j])]     row(s) = s, or slots[s] (a slot map)

with every source row read before any row is written — the semantics of torch's
`pool[:, dst] = pool[:, src]` (the right side gathered first), so overlapping source and destination
rows are safe and the result is that of the torch ops bit for bit. Program (l, c) owns columns
[c * BLOCK_C, (c + 1) * BLOCK_C) of every row of layer l: programs never touch one element twice,
and inside a program a barrier puts all M loads before the M stores.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

ELEMENTS = 4096  # a program's tile, BLOCK_M x BLOCK_C: M rows held at once, so the column block narrows as M grows


@triton.jit
def _move_pool(pool_ptr, layer_base, src, dst, cols, live, width):
    """One pool's tile: load rows src [BLOCK_M] at cols [BLOCK_C], barrier, store them at rows dst."""
    mask = live[:, None] & (cols < width)[None, :]
    rows = pool_ptr + layer_base
    x = tl.load(rows + src[:, None] * width + cols[None, :], mask=mask)  # [BLOCK_M, BLOCK_C]
    tl.debug_barrier()  # every read of the tile before any write to it
    tl.store(rows + dst[:, None] * width + cols[None, :], x, mask=mask)


@triton.jit
def _move_seq(first_ptr, second_ptr, slots_ptr, keep, start, live, layer_base, cols, width,
              PAIRED: tl.constexpr, SLOTS: tl.constexpr, BLOCK_M: tl.constexpr):
    """One sequence's move: logical slots start + keep[j] -> start + j for the live j < BLOCK_M."""
    src = start + keep  # logical slots
    dst = start + tl.arange(0, BLOCK_M)
    if SLOTS:  # logical slot -> physical row
        src = tl.load(slots_ptr + src, mask=live, other=0)
        dst = tl.load(slots_ptr + dst, mask=live, other=0)
    src, dst = src.to(tl.int64), dst.to(tl.int64)
    _move_pool(first_ptr, layer_base, src, dst, cols, live, width)
    if PAIRED:
        _move_pool(second_ptr, layer_base, src, dst, cols, live, width)


@triton.jit(do_not_specialize=["start", "m"])  # they change every round: no compile per value class
def _move(first_ptr, second_ptr, slots_ptr, keep_ptr, start, m, layer_stride, width,
          PAIRED: tl.constexpr, SLOTS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    layer_base = tl.program_id(0).to(tl.int64) * layer_stride
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    j = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    live = j < m
    keep = tl.load(keep_ptr + j, mask=live, other=0)
    _move_seq(first_ptr, second_ptr, slots_ptr, keep, start, live, layer_base, cols, width, PAIRED, SLOTS, BLOCK_M)


@triton.jit(do_not_specialize=["s_count"])
def _move_many(first_ptr, second_ptr, slots_ptr, keep_ptr, meta_ptr, s_count, layer_stride, width,
               PAIRED: tl.constexpr, SLOTS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (l, c, s) moves sequence s's rows: meta [4, S] = where its keep indices start in
    keep_ptr, M_s, the largest index allowed (N_s - 1: indices are clamped into it), its start
    (in the slot table, or the flat rows)."""
    layer_base = tl.program_id(0).to(tl.int64) * layer_stride
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    s = tl.program_id(2)
    at = tl.load(meta_ptr + s)
    m = tl.load(meta_ptr + s_count + s)
    top = tl.load(meta_ptr + 2 * s_count + s)
    start = tl.load(meta_ptr + 3 * s_count + s)
    j = tl.arange(0, BLOCK_M)  # [BLOCK_M]
    live = j < m
    keep = tl.minimum(tl.maximum(tl.load(keep_ptr + at + j, mask=live, other=0), 0), top)
    _move_seq(first_ptr, second_ptr, slots_ptr, keep, start, live, layer_base, cols, width, PAIRED, SLOTS, BLOCK_M)


def _blocks(m: int, width: int) -> tuple[int, int]:
    block_m = max(16, triton.next_power_of_2(m))  # at least 16: few compiled variants, no 1-wide blocks
    return block_m, max(16, min(triton.next_power_of_2(width), ELEMENTS // block_m))


def move_rows(first: torch.Tensor, second: torch.Tensor | None, keep: torch.Tensor, start: int,
              slots: torch.Tensor | None = None) -> None:
    """In place, no host sync: rows start + j <- rows start + keep[j] (j < M, keep [M] int64 on the
    device) of every layer of `first` and `second` (contiguous, one shape [L, R, ...]: R rows of
    the remaining dims), through the slot map `slots` [>= start + M] int32 when given."""
    layers, rows = first.shape[0], first.shape[1]
    width = math.prod(first.shape[2:])  # elements per row
    keep, m = keep.contiguous(), keep.numel()  # (a no-op, no dispatch, for the pipeline's fresh index)
    block_m, block_c = _blocks(m, width)
    grid = (layers, triton.cdiv(width, block_c))
    _move[grid](first, first if second is None else second, keep if slots is None else slots, keep, start, m,
                rows * width, width, PAIRED=second is not None, SLOTS=slots is not None, BLOCK_M=block_m, BLOCK_C=block_c)


def move_rows_many(first: torch.Tensor, second: torch.Tensor | None, keeps: torch.Tensor,
                   moves: list[tuple[int, int, int, int]], slots: torch.Tensor | None = None) -> None:
    """Several sequences' `move_rows` in ONE launch: moves[s] = (offset of its keep indices in
    `keeps` [K] int64 on the device, M_s, N_s - 1 (indices are clamped into [0, N_s - 1]), its
    start), over the same pools and flat slot table; one small host-to-device copy of `moves`.
    Sequences must move disjoint rows (each its own pages)."""
    layers, rows = first.shape[0], first.shape[1]
    width = math.prod(first.shape[2:])
    s = len(moves)
    meta = torch.tensor(list(zip(*moves)), dtype=torch.int64, pin_memory=keeps.is_cuda).to(keeps.device, non_blocking=True)  # [4, S]
    block_m, block_c = _blocks(max(m for _, m, _, _ in moves), width)
    grid = (layers, triton.cdiv(width, block_c), s)
    _move_many[grid](first, first if second is None else second, keeps if slots is None else slots, keeps, meta, s,
                     rows * width, width, PAIRED=second is not None, SLOTS=slots is not None, BLOCK_M=block_m, BLOCK_C=block_c)
