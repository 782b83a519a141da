"""The `cute` attention backend (CuTe DSL, Hopper): a warp-MMA and a warpgroup-MMA kernel.

On any machine with nvidia-cutlass-dsl: both kernels and the split merge compile for sm_90a
(cute.compile needs no GPU: pointers are fake addresses, the stream a fake stream) and their PTX
holds the tensor-core MMAs and async copies they are written with.
On an sm_90 GPU: the kernels equal the fp32 reference over random trees, contexts, GQA ratios,
head dims, commit modes, tilings, and pools whose unused rows are poisoned."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.core.errors import IncompatibleError
from jetspec.kernels.cute_backend import (
    CuteAttention,
    CuteAttentionOptions,
    unavailable,
)

from .cases import DEVICE, build_problem, random_tree, trees

HAVE_CUTLASS = importlib.util.find_spec("cutlass") is not None
needs_cutlass = pytest.mark.skipif(not HAVE_CUTLASS, reason="needs nvidia-cutlass-dsl (pip install 'jetspec[cute]')")
REASON = unavailable()  # None on an sm_90 GPU with cutlass
needs_hopper = pytest.mark.skipif(REASON is not None, reason=f"GPU test: {REASON}")
TOL = 3e-2  # bf16


def test_importing_jetspec_and_the_backend_does_not_import_cutlass():
    code = ("import sys, jetspec, jetspec.builtins, jetspec.kernels.cute_backend; "
            "assert 'cutlass' not in sys.modules and 'cutlass.cute' not in sys.modules")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


@pytest.mark.skipif(REASON is None, reason="this machine can run the cute backend")
def test_selecting_cute_where_it_cannot_run_is_a_one_line_incompatible_error():
    from jetspec.builtins import _cute_attention

    with pytest.raises(IncompatibleError) as err:
        _cute_attention(CuteAttentionOptions())
    assert "\n" not in str(err.value) and "cute" in str(err.value)


@needs_cutlass
@pytest.mark.parametrize("head_dim,group,kv_heads,warps", [(128, 4, 8, 1), (128, 4, 8, 4), (128, 1, 2, 2), (64, 2, 4, 4)])
def test_kernel_compiles_for_sm90_without_a_gpu(tmp_path, head_dim, group, kv_heads, warps):
    from jetspec.kernels.cute_tree_attention import compile_kernel

    compiled = compile_kernel(head_dim, group, kv_heads, warps, 64, pipelined=False,
                              options=f"--keep-ptx --keep-cubin --dump-dir {tmp_path}")
    art = compiled.artifacts
    assert art.CUBIN and len(art.CUBIN) > 1000  # ptxas ran: a real sm_90a binary
    ptx = art.PTX
    assert re.search(r"\.target sm_90a", ptx)
    # S = QK^T and O += PV on tensor cores: (16 x 64 x D) + (16 x D x 64) per warp, m16n8k16 each
    assert ptx.count("mma.sync.aligned.m16n8k16") == 2 * (64 // 8) * (head_dim // 16)
    assert "ldmatrix" in ptx
    assert re.search(r"ld\.global[\w.]*\.v4", ptx)  # 16-byte gathers of K/V rows


@needs_cutlass
@pytest.mark.parametrize("head_dim,group,kv_heads,warps", [(128, 4, 8, 4), (128, 4, 8, 8), (64, 2, 4, 2)])
def test_pipelined_kernel_gathers_with_cp_async_and_keeps_the_same_mmas(tmp_path, head_dim, group, kv_heads, warps):
    """`pipelined=True`: K and V rows are gathered with 16-byte cp.async (cg: L2 only) in commit
    groups waited on before use, instead of synchronous loads; the tensor-core work is unchanged."""
    from jetspec.kernels.cute_tree_attention import compile_kernel

    sync = compile_kernel(head_dim, group, kv_heads, warps, 64, options=f"--keep-ptx --dump-dir {tmp_path}", pipelined=False).artifacts.PTX
    ptx = compile_kernel(head_dim, group, kv_heads, warps, 64, options=f"--keep-ptx --dump-dir {tmp_path}", pipelined=True).artifacts.PTX
    assert ptx.count("mma.sync.aligned.m16n8k16") == sync.count("mma.sync.aligned.m16n8k16") == 2 * (64 // 8) * (head_dim // 16)
    chunks = 64 * head_dim // 8 // (32 * warps)  # 16-byte chunks of one K (or V) block per thread
    assert len(re.findall(r"cp\.async\.cg\.shared\.global(?:\.L2::\w+)?\s*\[", ptx)) == 3 * chunks  # K(first), V(b), K(b + 1)
    assert "cp.async.commit_group" in ptx and "cp.async.wait_group" in ptx
    assert "cp.async" not in sync


@needs_cutlass
@pytest.mark.parametrize("specialized,pingpong", [(True, True), (True, False), (False, False)],
                         ids=["pingpong", "specialized", "shared"])
@pytest.mark.parametrize("head_dim,group,kv_heads,warps,block_n,stages",
                         [(128, 4, 8, 8, 128, 2), (128, 4, 8, 4, 64, 3), (64, 3, 3, 8, 64, 2)])
def test_warpgroup_kernel_compiles_to_wgmma_and_cp_async(tmp_path, head_dim, group, kv_heads, warps, block_n, stages,
                                                         specialized, pingpong):  # fmt: skip
    """mma="warpgroup": per block, S = Q K^T is D/16 wgmma m64nBLOCK_Nk16 and O += P V is
    BLOCK_N/16 wgmma m64nDk16 (one warpgroup's instructions; each warpgroup runs its own 64
    rows); K and V arrive by 16-byte cp.async, fenced to the async proxy before wgmma reads them.
    specialized: one gather site in a producer warpgroup of 128 threads, an mbarrier ring
    (cp.async.mbarrier.arrive) and setmaxnreg; shared: every thread gathers, in the unrolled
    prologue (stages - 1 blocks) and in the loop. pingpong (two computing warpgroups): the first
    block's S and the last block's PV are peeled off the loop, so each wgmma appears twice, and
    the turns pass through named barriers (bar.arrive)."""
    from jetspec.kernels.cute_tree_attention import compile_kernel

    compiled = compile_kernel(head_dim, group, kv_heads, warps, block_n, mma="warpgroup", stages=stages,
                              specialized=specialized, pingpong=pingpong,
                              options=f"--keep-ptx --keep-cubin --dump-dir {tmp_path}")
    assert len(compiled.artifacts.CUBIN) > 1000
    ptx = compiled.artifacts.PTX
    turns = pingpong and warps == 8
    sites = 2 if turns else 1
    qk, pv = (f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16" for n in (block_n, head_dim))
    if qk == pv:
        assert ptx.count(qk) == sites * (head_dim // 16 + block_n // 16)
    else:
        assert (ptx.count(qk), ptx.count(pv)) == (sites * head_dim // 16, sites * block_n // 16)
    assert ("bar.arrive" in ptx) == turns
    assert "mma.sync" not in ptx and "ldmatrix" not in ptx
    copies = len(re.findall(r"cp\.async\.cg\.shared\.global(?:\.L2::\w+)?\s*\[", ptx))
    if specialized:
        assert copies == 2 * block_n * head_dim // 8 // 128  # K and V chunks of one block per producer thread
        assert "cp.async.mbarrier.arrive.noinc" in ptx and "mbarrier.try_wait" in ptx
        assert "setmaxnreg.dec" in ptx and "setmaxnreg.inc" in ptx
    else:
        chunks = block_n * head_dim // 8 // (32 * warps)
        assert copies == 2 * chunks * stages
        assert "mbarrier" not in ptx
    assert "fence.proxy.async.shared::cta" in ptx and "wgmma.wait_group" in ptx


@needs_cutlass
def test_split_merge_compiles(tmp_path):
    from jetspec.kernels.cute_tree_attention import compile_merge

    assert len(compile_merge(128, options=f"--keep-cubin --dump-dir {tmp_path}").artifacts.CUBIN) > 1000


def test_tiling_heuristic():
    from jetspec.kernels import cute_tree_attention as kernels

    t = kernels.choose_tiling
    assert t(1, 4, 8, 16385, 132) == ("warp", 1, 64, 16)  # decode: split until 132 SMs are filled
    assert t(12, 4, 8, 16385, 132) == ("warp", 4, 64, 16)  # 48 rows: warp MMA, 8 CTAs: 16 splits
    assert t(16, 4, 8, 4112, 132) == ("warpgroup", 4, 128, 16)  # 64 rows: one warpgroup; 8 CTAs, 16 splits
    assert t(64, 4, 8, 16448, 132) == ("warpgroup", 8, 128, 8)  # 2 x 128 rows x 8 kv heads: 8 splits fill 132 SMs
    assert t(256, 4, 8, 16640, 132) == ("warpgroup", 8, 128, 2)  # 64 CTAs: 2 splits
    assert t(256, 4, 8, 1280, 132)[3] == 2
    assert t(512, 4, 8, 812, 132)[3] == 1  # 128 CTAs fill the SMs once
    assert t(1, 1, 1, 100, 132)[3] == 2  # never more splits than key blocks
    assert t(64, 1, 1, 100, 132)[3] == 1


def test_options_name_what_each_kernel_takes():
    with pytest.raises(ValueError, match="4 or 8 warps"):
        CuteAttentionOptions(mma="warpgroup", num_warps=2)
    with pytest.raises(ValueError, match="block_n 64 or 128"):
        CuteAttentionOptions(mma="warpgroup", block_n=32)
    with pytest.raises(ValueError):
        CuteAttentionOptions(stages=4)


def test_a_tiling_past_shared_memory_is_a_one_line_error_before_any_launch():
    from jetspec.core.interfaces import AttentionMeta
    from jetspec.core.tree import DraftTree

    tree = DraftTree.from_parents(list(range(64)), [-1] + list(range(63)))
    meta = AttentionMeta.for_tree(tree, 100, "cpu")
    q, k_rows = torch.zeros(64, 8, 128), torch.zeros(300, 2, 128)
    backend = CuteAttention(CuteAttentionOptions(mma="warpgroup", num_warps=8, block_n=128, stages=3))
    assert backend.tiling(q, k_rows, meta).mma == "warpgroup"  # 224 KiB: fits
    with pytest.raises(IncompatibleError, match="shared memory") as err:
        backend.tiling(torch.zeros(64, 8, 256), torch.zeros(300, 2, 256), meta)
    assert "\n" not in str(err.value)


def test_a_warp_tiling_whose_block_is_smaller_than_a_copy_pass_is_a_one_line_error():
    """8 warps copy 32 key rows per pass: a 16-key block would read past its slot map in shared
    memory (an illegal address on the H200, 2026-12-02). Refused before any launch."""
    from jetspec.core.interfaces import AttentionMeta
    from jetspec.core.tree import DraftTree

    meta = AttentionMeta.for_tree(DraftTree.from_parents([0, 1], [-1, 0]), 10, "cpu")
    backend = CuteAttention(CuteAttentionOptions(mma="warp", num_warps=8, block_n=16))
    with pytest.raises(IncompatibleError, match="multiple of that") as err:
        backend.tiling(torch.zeros(2, 8, 128), torch.zeros(30, 2, 128), meta)
    assert "\n" not in str(err.value)
    assert CuteAttention(CuteAttentionOptions(mma="warp", num_warps=4, block_n=16)).tiling(
        torch.zeros(2, 8, 128), torch.zeros(30, 2, 128), meta).block_n == 16


def test_fixed_fields_only_the_warp_kernel_takes_select_it():
    from jetspec.core.interfaces import AttentionMeta
    from jetspec.core.tree import DraftTree

    tree = DraftTree.from_parents(list(range(64)), [-1] + list(range(63)))
    meta = AttentionMeta.for_tree(tree, 100, "cpu")
    q, k_rows = torch.zeros(64, 8, 128), torch.zeros(300, 2, 128)  # 256 rows per kv head
    assert CuteAttention().tiling(q, k_rows, meta).mma == "warpgroup"
    assert CuteAttention(CuteAttentionOptions(num_warps=2)).tiling(q, k_rows, meta).mma == "warp"
    assert CuteAttention(CuteAttentionOptions(block_n=32)).tiling(q, k_rows, meta).mma == "warp"
    assert CuteAttention(CuteAttentionOptions(mma="warp")).tiling(q, k_rows, meta)[:3] == ("warp", 4, 64)


test_tiling_heuristic = needs_cutlass(test_tiling_heuristic)


# ---------------------------------------------------------------------------- GPU (sm_90)
tilings = st.one_of(
    st.just(CuteAttentionOptions()),
    st.just(CuteAttentionOptions(mma="warp", pipelined=False)),
    st.builds(CuteAttentionOptions, mma=st.just("warp"), num_warps=st.sampled_from([1, 2, 4, 8]),
              block_n=st.sampled_from([16, 32, 64]), num_splits=st.integers(1, 4), pipelined=st.booleans())
    .filter(lambda o: o.block_n % (4 * o.num_warps) == 0),  # whole copy passes (see the test below)
    st.builds(CuteAttentionOptions, mma=st.just("warpgroup"), num_warps=st.sampled_from([4, 8]),
              block_n=st.sampled_from([64, 128]), num_splits=st.integers(1, 4), stages=st.sampled_from([2, 3]),
              specialized=st.booleans(), pingpong=st.booleans()),
)


@needs_hopper
@pytest.mark.gpu
@settings(max_examples=60, deadline=None)  # each new tiling compiles (~3 s)
@given(
    tree=trees(max_nodes=48),
    prefix=st.integers(0, 300),
    kv_heads=st.sampled_from([1, 2, 8]),
    group=st.sampled_from([1, 3, 4]),
    head_dim=st.sampled_from([64, 128]),
    page_size=st.sampled_from([None, 16]),
    commit=st.sampled_from(["gather", "remap"]),
    options=tilings,
    seed=st.integers(0, 2**16),
)
def test_gpu_kernel_equals_reference(tree, prefix, kv_heads, group, head_dim, page_size, commit, options, seed):
    p = build_problem(tree, prefix, kv_heads, group, head_dim, torch.bfloat16, page_size, commit, seed)
    out = CuteAttention(options).attend(p.q, p.cache, 0, p.meta, p.scale)
    assert out.shape == p.q.shape and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), p.reference(), atol=TOL, rtol=TOL)


@needs_hopper
@pytest.mark.gpu
@pytest.mark.parametrize("commit", ["gather", "remap"])
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_gpu_rows_the_slot_map_does_not_name_cannot_change_the_output(commit, poison):
    tree = random_tree([0, 0, 1, 2, 2, 0, 6, 3, 3])
    kvh, d = 2, 128
    p = build_problem(tree, 37, kv_heads=kvh, group=2, head_dim=d, dtype=torch.bfloat16,
                      page_size=16, commit=commit, seed=1, extra_pages=3)
    expected = p.reference()
    live = torch.zeros(p.cache.k[0].view(-1, kvh, d).shape[0], dtype=torch.bool, device=DEVICE)
    live[p.cache.slot_mapping.long()] = True
    for pool in (p.cache.k, p.cache.v):
        pool[0].view(-1, kvh, d)[~live] = poison
    p.cache.slot_table[p.meta.prefix_len + tree.size:] = 2**30  # would fault if read
    for options in (CuteAttentionOptions(block_n=16, num_splits=1), CuteAttentionOptions(block_n=64, num_splits=3),
                    CuteAttentionOptions(mma="warp", block_n=64, num_splits=3, pipelined=False),
                    CuteAttentionOptions(mma="warpgroup", num_warps=4, block_n=64, num_splits=2, stages=3),
                    CuteAttentionOptions(mma="warpgroup", num_warps=8, block_n=128, num_splits=1),
                    CuteAttentionOptions(mma="warpgroup", num_warps=8, block_n=64, num_splits=2, specialized=False)):
        out = CuteAttention(options).attend(p.q, p.cache, 0, p.meta, p.scale)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), expected, atol=TOL, rtol=TOL)


@needs_hopper
@pytest.mark.gpu
@pytest.mark.parametrize("nodes,prefix", [(1, 4000), (1, 16384), (64, 3000), (256, 2000), (512, 300)])
@pytest.mark.parametrize("commit", ["gather", "remap"])
def test_gpu_bf16_at_qwen3_8b_shapes(nodes, prefix, commit):
    g = torch.Generator().manual_seed(nodes)
    tree = random_tree([int(torch.randint(0, i, (1,), generator=g)) for i in range(1, nodes)])
    p = build_problem(tree, prefix, kv_heads=8, group=4, head_dim=128, dtype=torch.bfloat16, page_size=16, commit=commit)
    for options in (CuteAttentionOptions(), CuteAttentionOptions(mma="warp"), CuteAttentionOptions(mma="warp", pipelined=False),
                    CuteAttentionOptions(mma="warpgroup", num_warps=4), CuteAttentionOptions(mma="warpgroup", stages=3),
                    CuteAttentionOptions(mma="warpgroup", specialized=False), CuteAttentionOptions(pingpong=False)):
        out = CuteAttention(options).attend(p.q, p.cache, 0, p.meta, p.scale)
        torch.testing.assert_close(out.float(), p.reference(), atol=2e-2, rtol=2e-2)


@needs_hopper
@pytest.mark.gpu
def test_gpu_unsupported_inputs_raise_one_line_errors():
    p = build_problem(random_tree([0]), 4, 2, 2, 64, torch.bfloat16, page_size=16)
    backend = CuteAttention()
    with pytest.raises(IncompatibleError, match="bf16"):
        backend.attend(p.q.float(), p.cache, 0, p.meta, p.scale)
    with pytest.raises(IncompatibleError, match="kv heads"):
        backend.attend(torch.zeros(2, 3, 64, device=DEVICE, dtype=torch.bfloat16), p.cache, 0, p.meta, p.scale)


# ---------------------------------------------------------------------------- position-invariant mode
@needs_cutlass
@pytest.mark.parametrize("head_dim,group,kv_heads", [(128, 4, 8), (64, 3, 3)])
def test_invariant_kernel_compiles_to_one_warp_of_mma_sync_and_cp_async(tmp_path, head_dim, group, kv_heads):
    """exact = true: one warp per (token, kv head, split), 64-key blocks: per block D/16 k-steps of
    8 m16n8k16 MMAs for S and 4 x D/8 for P V; K/V gathered with cp.async at three sites (first K,
    V(b), K(b + 1))."""
    from jetspec.kernels.cute_invariant_attention import compile_invariant

    compiled = compile_invariant(head_dim, group, kv_heads, options=f"--keep-ptx --keep-cubin --dump-dir {tmp_path}")
    assert len(compiled.artifacts.CUBIN) > 1000
    ptx = compiled.artifacts.PTX
    assert ptx.count("mma.sync.aligned.m16n8k16") == 2 * (64 // 8) * (head_dim // 16)
    chunks = 64 * head_dim // 8 // 32  # 16-byte chunks of one K (or V) block per thread
    assert len(re.findall(r"cp\.async\.cg\.shared\.global(?:\.L2::\w+)?\s*\[", ptx)) == 3 * chunks


def test_the_cute_backend_has_a_position_invariant_mode():
    from jetspec.core.interfaces import PositionInvariantAttention

    backend = CuteAttention(CuteAttentionOptions(split_keys=256))
    assert isinstance(backend, PositionInvariantAttention)
    exact = backend.position_invariant()
    assert exact.invariant and not backend.invariant and exact.options.split_keys == 256
    with pytest.raises(ValueError):
        CuteAttentionOptions(split_keys=100)  # whole 64-key blocks


@needs_hopper
@pytest.mark.gpu
@settings(max_examples=30, deadline=None)  # each new (head dim, group, kv heads) compiles (~5 s)
@given(
    tree=trees(max_nodes=48),
    prefix=st.integers(0, 1200),
    kv_heads=st.sampled_from([1, 8]),
    group=st.sampled_from([1, 3, 4]),
    head_dim=st.sampled_from([64, 128]),
    page_size=st.sampled_from([None, 16]),
    commit=st.sampled_from(["gather", "remap"]),
    split_keys=st.sampled_from([64, 128, 512]),
    seed=st.integers(0, 2**16),
)
def test_gpu_invariant_kernel_equals_reference(tree, prefix, kv_heads, group, head_dim, page_size, commit, split_keys, seed):
    p = build_problem(tree, prefix, kv_heads, group, head_dim, torch.bfloat16, page_size, commit, seed)
    out = CuteAttention(CuteAttentionOptions(split_keys=split_keys)).position_invariant().attend(
        p.q, p.cache, 0, p.meta, p.scale)
    assert out.shape == p.q.shape and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), p.reference(), atol=TOL, rtol=TOL)


@needs_hopper
@pytest.mark.gpu
@pytest.mark.parametrize("nodes,prefix", [(1, 16384), (64, 3000), (256, 2000)])
def test_gpu_invariant_kernel_at_qwen3_8b_shapes_and_poisoned_rows(nodes, prefix):
    g = torch.Generator().manual_seed(nodes)
    tree = random_tree([int(torch.randint(0, i, (1,), generator=g)) for i in range(1, nodes)])
    p = build_problem(tree, prefix, kv_heads=8, group=4, head_dim=128, dtype=torch.bfloat16, page_size=16,
                      commit="remap", extra_pages=2)
    expected = p.reference()
    live = torch.zeros(p.cache.k[0].view(-1, 8, 128).shape[0], dtype=torch.bool, device=DEVICE)
    live[p.cache.slot_mapping.long()] = True
    for pool in (p.cache.k, p.cache.v):
        pool[0].view(-1, 8, 128)[~live] = float("nan")
    out = CuteAttention().position_invariant().attend(p.q, p.cache, 0, p.meta, p.scale)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
