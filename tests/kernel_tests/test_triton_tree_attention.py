"""The `triton` attention backend computes exactly the reference tree attention: for any tree,
committed prefix, page size, commit mode, GQA ratio, head dim, dtype and kernel tiling. On a CPU
the kernels run in Triton's interpreter (see conftest.py), so shapes here are small."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from jetspec.core.errors import IncompatibleError  # noqa: E402
from jetspec.core.interfaces import AttentionMeta  # noqa: E402
from jetspec.kernels.triton_backend import TritonAttention, TritonAttentionOptions, choose_config  # noqa: E402

from .cases import DEVICE, TOLERANCE, build_problem, random_tree, trees  # noqa: E402

ON_GPU = DEVICE.type == "cuda"
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (the compiled kernel); CPU runs use the interpreter")

tilings = st.one_of(
    st.just(TritonAttentionOptions()),  # the heuristic choice
    st.builds(
        TritonAttentionOptions,
        block_m=st.sampled_from([16, 32]),
        block_n=st.sampled_from([16, 32]),
        num_splits=st.integers(1, 4),
    ),
)


@settings(max_examples=150 if not ON_GPU else 60, deadline=None)  # GPU: each new tiling compiles
@given(
    tree=trees(max_nodes=40),
    prefix=st.integers(0, 150),
    kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 3, 4]),
    head_dim=st.sampled_from([16, 32]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    page_size=st.sampled_from([None, 1, 4, 16]),
    commit=st.sampled_from(["gather", "remap"]),
    options=tilings,
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_reference(tree, prefix, kv_heads, group, head_dim, dtype, page_size, commit, options, seed):
    p = build_problem(tree, prefix, kv_heads, group, head_dim, dtype, page_size, commit, seed)
    out = TritonAttention(options).attend(p.q, p.cache, 0, p.meta, p.scale)
    assert out.shape == p.q.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), p.reference(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


@pytest.mark.parametrize("commit", ["gather", "remap"])
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), 1e30])
def test_rows_the_slot_map_does_not_name_cannot_change_the_output(commit, poison):
    """Every pool row outside the live slot map, and every slot-table entry past T + N, is
    poisoned; the prefix length is not a multiple of the key block, so masked loads run."""
    tree = random_tree([0, 0, 1, 2, 2, 0, 6, 3, 3])
    p = build_problem(tree, 37, kv_heads=2, group=2, head_dim=16, dtype=torch.float32,
                      page_size=4, commit=commit, seed=1, extra_pages=3)
    expected = p.reference()
    live = torch.zeros(p.cache.k[0].view(-1, 2, 16).shape[0], dtype=torch.bool, device=DEVICE)
    live[p.cache.slot_mapping.long()] = True
    for pool in (p.cache.k, p.cache.v):
        pool[0].view(-1, 2, 16)[~live] = poison
    p.cache.slot_table[p.meta.prefix_len + tree.size :] = 2**30  # would fault if read
    for options in (TritonAttentionOptions(block_n=16, num_splits=1), TritonAttentionOptions(block_n=32, num_splits=3)):
        out = TritonAttention(options).attend(p.q, p.cache, 0, p.meta, p.scale)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)


def test_decode_and_prefill_are_the_chain_cases():
    for n, prefix in [(1, 50), (17, 0)]:
        p = build_problem(random_tree(list(range(n - 1))), prefix, 2, 4, 32, torch.float16, page_size=16)
        out = TritonAttention().attend(p.q, p.cache, 0, p.meta, p.scale)
        torch.testing.assert_close(out.float(), p.reference(), atol=4e-3, rtol=4e-3)


def test_custom_op_has_a_working_fake_implementation():
    from jetspec.kernels.triton_tree_attention import paged_tree_attention

    p = build_problem(random_tree([0, 1, 1]), 9, 1, 2, 16, torch.float32, page_size=4)
    sizes = p.meta.subtree_sizes.to(DEVICE, torch.int32)
    prefix = torch.tensor([9], dtype=torch.int32, device=DEVICE)
    k, v = (pool[0].view(-1, 1, 16) for pool in (p.cache.k, p.cache.v))
    args = (p.q, k, v, p.cache.slot_table, sizes, prefix, p.scale, 16, 16, 2, 4, 2)
    torch.library.opcheck(paged_tree_attention, args, test_utils=("test_schema", "test_faketensor"))
    compiled = torch.compile(lambda *a: torch.ops.jetspec.paged_tree_attention(*a) * 2, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), 2 * p.reference(), atol=2e-5, rtol=2e-5)


def test_unsupported_inputs_raise_one_line_errors(monkeypatch):
    p = build_problem(random_tree([0]), 4, 2, 2, 16, torch.float32, page_size=4)
    backend = TritonAttention()
    with pytest.raises(IncompatibleError, match="paged or dense"):
        backend.attend(p.q, object(), 0, p.meta, p.scale)  # type: ignore[arg-type]
    with pytest.raises(IncompatibleError, match="kv heads"):
        backend.attend(torch.zeros(2, 3, 16, device=DEVICE), p.cache, 0, p.meta, p.scale)
    with pytest.raises(IncompatibleError, match="head dims"):
        backend.attend(torch.zeros(2, 4, 8, device=DEVICE), p.cache, 0, p.meta, p.scale)
    with pytest.raises(IncompatibleError, match="attention meta"):
        backend.attend(p.q, p.cache, 0, AttentionMeta.for_chain(5, 4, DEVICE), p.scale)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(IncompatibleError, match="CUDA") as err:
        backend.attend(p.q.cpu(), p.cache, 0, p.meta, p.scale)
    assert "\n" not in str(err.value)


def test_importing_the_backend_does_not_import_triton():
    code = "import sys, jetspec.kernels.triton_backend, jetspec.caches.paged; assert 'triton' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_split_heuristic_fills_the_gpu():
    """Qwen3-8B shapes on a 132-SM H200: trees and decode both fill about one wave of programs
    (what autotuning measured fastest there)."""
    tree = choose_config(n=256, group=4, kv_heads=8, keys=16384 + 256, head_dim=128, num_sms=132)
    decode = choose_config(n=1, group=4, kv_heads=8, keys=16385, head_dim=128, num_sms=132)
    tree_programs = -(-256 * 4 // tree.block_m) * 8 * tree.num_splits  # tiles x kv heads x splits
    decode_programs = 1 * 8 * decode.num_splits
    assert 100 <= tree_programs <= 132, tree
    assert 100 <= decode_programs <= 132, decode
    assert (decode.block_n, decode.num_stages, tree.block_m, tree.block_n) == (128, 5, 128, 64)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("nodes,prefix", [(1, 4000), (64, 3000), (256, 2000), (512, 300)])
@pytest.mark.parametrize("commit", ["gather", "remap"])
def test_gpu_bf16_at_qwen3_8b_shapes(nodes, prefix, commit):
    g = torch.Generator().manual_seed(nodes)
    tree = random_tree([int(torch.randint(0, i, (1,), generator=g)) for i in range(1, nodes)])
    p = build_problem(tree, prefix, kv_heads=8, group=4, head_dim=128, dtype=torch.bfloat16, page_size=16, commit=commit)
    expected = p.reference()
    for options in (TritonAttentionOptions(), TritonAttentionOptions(autotune=True)):
        out = TritonAttention(options).attend(p.q, p.cache, 0, p.meta, p.scale)
        torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def test_fused_split_merge_leaves_its_counters_zeroed_for_the_next_launch():
    """The last split of each (tile, kv head) merges and resets its arrival counter, so repeated
    launches (CUDA-graph replays) with other split counts and tile counts stay exact."""
    from jetspec.core import invariant

    p = build_problem(random_tree([0, 0, 1, 2]), 70, kv_heads=2, group=2, head_dim=16, dtype=torch.float32, page_size=4)
    expected = p.reference()
    for splits, block_n in [(3, 16), (5, 16), (2, 32), (3, 16)]:
        out = TritonAttention(TritonAttentionOptions(block_m=16, block_n=block_n, num_splits=splits)).attend(
            p.q, p.cache, 0, p.meta, p.scale)
        torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
        assert int(invariant._COUNTERS[out.device].abs().sum()) == 0
