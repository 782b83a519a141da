"""Compile every Triton kernel of jetspec for Hopper (sm_90) without a GPU; prints one line per
kernel. Run in a process of its own: the kernels must not be defined in interpreter mode."""

import os
import sys

assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from jetspec.kernels import triton_tree_attention as kernels  # noqa: E402

STRIDES = ["stride_qn", "stride_qh", "stride_kr", "stride_kh", "stride_vr", "stride_vh", "stride_on", "stride_oh"]
SMEM = 227 * 1024  # Hopper's shared memory per block


def compile_for_sm90(fn, types: dict, consts: dict, num_warps: int = 4):
    names = fn.arg_names
    signature = {n: types.get(n, "constexpr") for n in names}
    constexprs = {(names.index(n),): v for n, v in consts.items()}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": 2})


for dtype, head_dim, block_m, split in [("bf16", 128, 128, True), ("fp16", 64, 16, False), ("fp32", 64, 64, True)]:
    types = dict(Q=f"*{dtype}", K=f"*{dtype}", V=f"*{dtype}", SLOTS="*i32", SIZES="*i32", PREFIX="*i32", O=f"*{dtype}",
                 O_PART="*fp32", LSE_PART="*fp32", n_queries="i32", qk_scale="fp32", **{s: "i32" for s in STRIDES})
    consts = dict(GROUP=4, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=64, SPLIT=split,
                  PRECISION="ieee" if dtype == "fp32" else "tf32", UPCAST=False)
    k = compile_for_sm90(kernels._tree_attention_fwd, types, consts, num_warps=8 if block_m == 128 else 4)
    assert k.metadata.shared <= SMEM, k.metadata.shared
    print(f"tree_attention {dtype} d{head_dim} m{block_m} split={split}: ok, {k.metadata.shared} B shared")

types = dict(O_PART="*fp32", LSE_PART="*fp32", O="*bf16", n_rows="i32", num_heads="i32", num_splits="i32",
             stride_on="i32", stride_oh="i32")
assert compile_for_sm90(kernels._combine_splits, types, dict(HEAD_DIM=128, BLOCK_R=32)).asm["ptx"]
print("combine_splits: ok")
sys.exit(0)
