"""The rule behind `exact = true`, and the Triton helpers the invariant kernels share.

Floating-point sums depend on their order. A kernel is **row-invariant** when the order in which
it reduces one row (one token) is fixed by the shapes of the weights alone — never by how many
rows the launch has, where in a tile the row lands, or what the other rows hold. Then the logits
a tree verification computes for a node are bit for bit those of a one-token step at the same
prefix, and speculative output equals plain output in any dtype.

What breaks it, and what each invariant kernel does instead:
* a matmul library picks its tiling and split-K from M: ours loops over K from 0 up, in chunks
  (a split-K) fixed by K and the model's `linear_chunk` alone, whatever the tiles M picks;
* a reduction library splits rows across threads by how many rows there are: ours reduces a
  row in one program with a layout fixed by the row length — or, where a program holds a tile of
  rows whose shape follows M (a norm in a projection's prologue), in `block_k(K)` chunks from 0
  up and then an explicit pairwise tree (`pairwise_sum`), an order no tile shape or layout changes;
* the compiler contracts a*b + c into one FMA in one loop body and not in another: invariant
  kernels are launched with `enable_fp_fusion=False`, so every product and sum rounds as written;
* Triton's CPU interpreter computes `tl.dot` with numpy's BLAS, whose result for a row depends on
  the row's position in the tile (OpenBLAS's edge kernels): under the interpreter `mm` below
  reduces with a plain sum over the shared axis instead, which numpy adds in order.

Imports triton: only kernel modules import this module.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LAUNCH = {"enable_fp_fusion": False}  # compile options of every invariant kernel


_LAUNCH_ON: dict[tuple[str, int | None], tuple[dict, dict, int]] = {}  # device -> (in turn, early, SMs)
PDL_DEFAULT = "1"


def launch_options(device: torch.device, programs: int = 0) -> dict:
    """The launch keywords of an invariant kernel of `programs` programs on `device`: LAUNCH, the
    constexpr PDL, and whether it may be launched early (programmatic dependent launch, PDL).

    PDL = 1 where the GPU has it (Hopper and later, outside the interpreter) and `JETSPEC_PDL`
    (default PDL_DEFAULT) does not say 0: every kernel then begins with `after_previous_kernel`,
    which waits until the kernel before it on the stream has finished and its writes are visible
    (griddepcontrol.wait), then lets the next one launch. A kernel launched early (`launch_pdl`)
    has its programs scheduled while the previous kernel still runs: its launch and prologue
    overlap that kernel's tail instead of following it. Nothing a kernel computes can change: the
    same instructions read the same bytes, in the same order.

    Only a grid of at most one program per SM is launched early. Early programs are placed on the
    SMs while the previous kernel still holds them; a projection of a few hundred programs (the 8B
    shape at one token) placed so ran slower than launched in turn (bench/RESULTS.md, 2026-12-06).
    Launched in turn, its wait returns at once."""
    key = (device.type, device.index)
    entry = _LAUNCH_ON.get(key)
    if entry is None:
        mode = os.environ.get("JETSPEC_PDL", PDL_DEFAULT)
        if mode not in ("0", "1"):
            raise ValueError(f"JETSPEC_PDL={mode!r}: allowed are 0 (off) and 1 (small grids launched early)")
        hopper = device.type == "cuda" and not interpreted() and torch.cuda.get_device_capability(device) >= (9, 0)
        pdl = int(mode) if hopper else 0
        sms = torch.cuda.get_device_properties(device).multi_processor_count if pdl else 0
        entry = _LAUNCH_ON[key] = (dict(LAUNCH, launch_pdl=False, PDL=pdl), dict(LAUNCH, launch_pdl=pdl > 0, PDL=pdl), sms)
    in_turn, early, sms = entry
    return early if programs <= sms else in_turn


@triton.jit
def after_previous_kernel(PDL: tl.constexpr):
    """An invariant kernel's first statement (`launch_options`): wait until the kernel before it
    on the stream has finished and its writes are visible, then let the next one start launching.
    No load or store may come before it: the previous kernel may still be writing (or reading) the
    same buffers. Only hints may: `prefetch_l2` of lines the kernel will read (and, to aim them, reads
    that bypass L1, whose values nothing but the hint uses)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def prefetch_l2(ptrs):
    """Ask the L2 cache for the 128-byte lines holding `ptrs` (any shape): `prefetch.global.L2`, a
    hint — nothing is read into a register, so no value any kernel computes can change, and L2 is
    the one point every SM reads through, so a line it holds is never stale. What it buys: an
    early-launched kernel (`launch_options`) asks for its weights while the kernel before it still
    runs, and reads them from L2 after its wait instead of from memory. Only on a GPU (PTX)."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs],
                              dtype=tl.int32, is_pure=False, pack=1)


def prefetch_lines(options: dict, per_row: int, tensor: torch.Tensor, rows: int) -> tuple[int, int]:
    """(PREFETCH, STEP) of a launch of `rows` rows with these `launch_options`, for a kernel that asks L2
    (`prefetch_l2`) for `per_row` elements of `tensor` a row before its wait (a projection: its weight tile's
    K; the attention: a key's D): a power of 2 >= those elements' 128-byte lines, and STEP, elements a
    line. PREFETCH = 0 where the launch is not early (launched in turn, its wait returns at once: nothing
    to overlap) or has more than one row (trees: see `targets/decoder/invariant/rmsnorm.unroll`)."""
    step = 128 // tensor.element_size()
    return (triton.next_power_of_2(triton.cdiv(per_row, step)) if options["launch_pdl"] and rows == 1 else 0), step


_COUNTERS: dict[torch.device, torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # outgrown counters: graphs captured on them still read them, so never freed


def arrival_counters(device: torch.device, needed: int) -> torch.Tensor | None:
    """The arrival counters of a split launch's last-program merge (split-K attention, split-K
    projections): a zeroed int32 buffer per device that every launch leaves zeroed again, shared by
    every kernel (launches on one stream run one after another). Grown, never shrunk, outside CUDA
    graph capture (an outgrown buffer is kept: graphs captured on it read it); during capture a
    too-small buffer cannot be made safely (its zeroing would only happen on replay), so None and
    the caller takes a path without counters. One stream at a time per device: two split launches
    running concurrently on different streams would share counters."""
    buf = _COUNTERS.get(device)
    if buf is not None and buf.numel() >= needed:
        return buf
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    if buf is not None:
        _RETIRED.append(buf)
    _COUNTERS[device] = buf = torch.zeros(max(needed, 4096), dtype=torch.int32, device=device)
    return buf


def interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def block_k(k: int) -> int:
    """BLOCK_K, the chunk in which invariant kernels reduce a row of length K (a projection's dot
    products, a norm's sum of squares): a function of K alone, so the order is. The machine picks
    the rule: Triton's CPU interpreter pays per step, so it takes the largest chunks."""
    if interpreted():
        return min(triton.next_power_of_2(k), 128)
    return 64 if k <= 1024 else 128


@triton.jit
def pairwise_sum(lanes, BLOCK_M: tl.constexpr):
    """lanes [BLOCK_M, W] float32, W a power of 2 -> [BLOCK_M, 1]: each row summed as one fixed
    binary tree, neighbours first (lanes 2j and 2j + 1, then pairs of those sums, ...).

    tl.sum's order follows the tile's register layout, which the compiler picks from the tile
    shape and the warps — from BLOCK_M, i.e. from M. Here every addition is written out: a row's
    bits depend on W alone (a + b == b + a, so no layout reorders them)."""
    for _ in tl.static_range(16):  # log2(W) halvings; W <= 2^16
        if lanes.shape[1] > 1:
            even, odd = tl.split(tl.reshape(lanes, [BLOCK_M, lanes.shape[1] // 2, 2]))
            lanes = even + odd  # [BLOCK_M, W / 2]
    return lanes


@triton.jit
def mm(a, b, acc, BY_SUM: tl.constexpr):
    """acc [M, N] + a [M, K] @ b [K, N], fp32, in an order fixed per output element.
    BY_SUM (the interpreter): products summed over K in order; else the tensor-core dot, which
    accumulates each output element from its own row and column alone."""
    if BY_SUM:
        return acc + tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
    elif a.dtype == tl.float32:  # fp32 models: full-precision products, not tf32
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def rms_denominator(sum_sq, n, eps):
    """sum_sq float32 (sum of x^2 over n features) -> sqrt(sum_sq / n + eps)."""
    return tl.sqrt(sum_sq / n + eps)


@triton.jit
def rms_scale(x, w, denominator, dtype: tl.constexpr):
    """x float32, w the weight -> w * (x / denominator): the quotient rounded to `dtype`, then the
    product rounded to `dtype`; returned in float32."""
    normed = (x / denominator).to(dtype)
    return (w.to(tl.float32) * normed.to(tl.float32)).to(dtype).to(tl.float32)


@triton.jit
def rope_heads(ROW, heads, ok, D, BLOCK_D: tl.constexpr):
    """Heads `heads` [H] of a q/k/v row (head h's D features at ROW + h * D; `ok` [H] masks them) -> x and its
    rotate_half partners [H, BLOCK_D] float32 (x_partner[h, i] = x[h, i + D/2 or i - D/2]): `norm_rope`'s inputs."""
    offs = tl.arange(0, BLOCK_D)[None, :]
    partner = tl.where(offs < D // 2, offs + D // 2, offs - D // 2)
    mask = ok[:, None] & (offs < D)
    x = tl.load(ROW + heads[:, None] * D + offs, mask=mask, other=0.0).to(tl.float32)
    x_partner = tl.load(ROW + heads[:, None] * D + partner, mask=mask, other=0.0).to(tl.float32)
    return x, x_partner


@triton.jit
def rope_weights(W, D, BLOCK_D: tl.constexpr, QK_NORM: tl.constexpr):
    """A head norm's weight [D] at each feature and at its rotate_half partner -> two [1, BLOCK_D] float32
    (exact widenings: `rms_scale` takes w in float32; zeros, unread, without a norm)."""
    offs = tl.arange(0, BLOCK_D)[None, :]
    if QK_NORM:
        partner = tl.where(offs < D // 2, offs + D // 2, offs - D // 2)
        return (tl.load(W + offs, mask=offs < D, other=0.0).to(tl.float32),
                tl.load(W + partner, mask=offs < D, other=0.0).to(tl.float32))
    return tl.zeros((1, BLOCK_D), tl.float32), tl.zeros((1, BLOCK_D), tl.float32)


@triton.jit
def norm_rope(x, x_partner, w, w_partner, cos, sin, D, eps, BLOCK_D: tl.constexpr, QK_NORM: tl.constexpr,
              dtype: tl.constexpr):
    """Heads x, their rotate_half partners x_partner [H, BLOCK_D] float32 (x_partner[h, i] = x[h, i ± D/2])
    -> rope(norm(x)) in `dtype`, rounded as the unfused composition rounds (each product to the dtype, then
    the sum). QK_NORM: each head's RMSNorm first (w, w_partner [1, BLOCK_D] its weight at x's and the
    partners' features), its statistic a `pairwise_sum` over the BLOCK_D features — an order of D alone, so
    `rope_write` (all heads of a token) and the attention's fused form (`kernels/triton_invariant_rope.py`,
    one kv head's group) get the same bits. cos, sin [1, BLOCK_D] float32."""
    offs = tl.arange(0, BLOCK_D)[None, :]
    if QK_NORM:
        denominator = rms_denominator(pairwise_sum(x * x, x.shape[0]), D, eps)  # [H, 1]: one statistic per head
        x = rms_scale(x, w, denominator, dtype)
        x_partner = rms_scale(x_partner, w_partner, denominator, dtype)
    rotated = tl.where(offs < D // 2, -x_partner, x_partner)  # rotate_half(x) = [-x_hi, x_lo]
    return ((x * cos).to(dtype).to(tl.float32) + (rotated * sin).to(dtype).to(tl.float32)).to(dtype)
