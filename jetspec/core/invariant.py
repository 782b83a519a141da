"""The rule behind `exact = true`, and the one Triton helper every invariant kernel shares.

Floating-point sums depend on their order. A kernel is **row-invariant** when the order in which
it reduces one row (one token) is fixed by the shapes of the weights alone — never by how many
rows the launch has, where in a tile the row lands, or what the other rows hold. Then the logits
a tree verification computes for a node are bit for bit those of a one-token step at the same
prefix, and speculative output equals plain output in any dtype.

What breaks it, and what each invariant kernel does instead:
* a matmul library picks its tiling and split-K from M: ours loops over K in fixed BLOCK_K steps,
  tile shapes chosen from (N, K) alone, no split-K;
* a reduction library splits rows across threads by how many rows there are: ours reduces a
  row in one program with a layout fixed by the row length;
* the compiler contracts a*b + c into one FMA in one loop body and not in another: invariant
  kernels are launched with `enable_fp_fusion=False`, so every product and sum rounds as written;
* Triton's CPU interpreter computes `tl.dot` with numpy's BLAS, whose result for a row depends on
  the row's position in the tile (OpenBLAS's edge kernels): under the interpreter `mm` below
  reduces with a plain sum over the shared axis instead, which numpy adds in order.

Imports triton: only kernel modules import this module.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

LAUNCH = {"enable_fp_fusion": False}  # launch options of every invariant kernel


def interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


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
