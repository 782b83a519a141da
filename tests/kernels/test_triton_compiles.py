"""The Triton kernels compile for Hopper (sm_90) ahead of time, on any machine: a CPU-only CI
catches what the interpreter forgives (e.g. a non-constexpr global read inside a kernel)."""

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from jetspec.kernels import triton_tree_attention as kernels  # noqa: E402

STRIDES = ["stride_qn", "stride_qh", "stride_kr", "stride_kh", "stride_vr", "stride_vh", "stride_on", "stride_oh"]


def compile_for_sm90(fn, types: dict, consts: dict, num_warps: int = 4):
    names = fn.arg_names
    signature = {n: types.get(n, "constexpr") for n in names}
    constexprs = {(names.index(n),): v for n, v in consts.items()}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": 2})


@pytest.mark.parametrize("dtype, head_dim, block_m, split", [("bf16", 128, 128, True), ("fp16", 64, 16, False), ("fp32", 64, 64, True)])
def test_tree_attention_kernel_compiles_for_sm90(dtype, head_dim, block_m, split):
    types = dict(Q=f"*{dtype}", K=f"*{dtype}", V=f"*{dtype}", SLOTS="*i32", SIZES="*i32", PREFIX="*i32", O=f"*{dtype}",
                 O_PART="*fp32", LSE_PART="*fp32", n_queries="i32", qk_scale="fp32", **{s: "i32" for s in STRIDES})
    consts = dict(GROUP=4, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=64, SPLIT=split,
                  PRECISION="ieee" if dtype == "fp32" else "tf32", UPCAST=False)
    compiled = compile_for_sm90(kernels._tree_attention_fwd, types, consts, num_warps=8 if block_m == 128 else 4)
    assert compiled.metadata.shared <= 227 * 1024  # fits Hopper's shared memory


def test_split_merge_kernel_compiles_for_sm90():
    types = dict(O_PART="*fp32", LSE_PART="*fp32", O="*bf16", n_rows="i32", num_heads="i32", num_splits="i32",
                 stride_on="i32", stride_oh="i32")
    assert compile_for_sm90(kernels._combine_splits, types, dict(HEAD_DIM=128, BLOCK_R=32)).asm["ptx"]
