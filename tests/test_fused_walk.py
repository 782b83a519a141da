"""The fused greedy walk is the walk: for any tree and any target choices, the one Triton launch
(`verifiers/triton_walk.py`) writes the very [2D + 3] integers of the torch ops (`walk_ops`),
padding included, whose path and tokens are the host walk's (`accept_greedy`). On a CPU the kernel
runs in Triton's interpreter (conftest.py) on CPU tensors; on a GPU machine, compiled, on CUDA
tensors, where `walk_on_device` launches it. And a whole pipeline through this kernel and the
staged K/V move's (`caches/triton_rows.py`) stays exact."""

from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import jetspec  # noqa: E402
from jetspec.caches import triton_rows  # noqa: E402
from jetspec.core import on_device  # noqa: E402
from jetspec.core.on_device import TreeUpload, unpack  # noqa: E402
from jetspec.core.tree import DraftTree  # noqa: E402
from jetspec.testing.models import TinyDecoder  # noqa: E402
from jetspec.testing.strategies import trees_and_choices  # noqa: E402
from jetspec.verifiers import triton_walk  # noqa: E402
from jetspec.verifiers.greedy import accept_greedy, walk_on_device, walk_ops  # noqa: E402
from jetspec.verifiers.triton_walk import walk  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"  # where the kernel runs: compiled on a GPU machine, else the interpreter
VOCAB = 96


@settings(max_examples=60, deadline=None)
@given(case=trees_and_choices(vocab=VOCAB, max_nodes=70), junk=st.lists(st.integers(0, VOCAB - 1), max_size=5),
       prefix=st.integers(0, 50))
def test_the_kernel_writes_what_the_torch_walk_writes(case, junk, prefix):
    tree, choice = case
    dtree = TreeUpload(DEVICE, capacity=8)(tree, prefix)  # views of a larger buffer once it regrows
    padded = torch.tensor(choice + junk, device=DEVICE)  # [N + junk]: rows past N (a padded forward's) are not read
    packed = walk(dtree, padded).cpu()
    assert torch.equal(packed, walk_ops(TreeUpload("cpu")(tree, prefix), torch.tensor(choice)))
    assert torch.equal(walk(dtree, padded.repeat_interleave(2)[::2]).cpu(), packed)  # a strided choice: the same
    acc = accept_greedy(tree, choice)
    assert unpack(packed.tolist()) == (acc.path, acc.new_tokens(tree))


def test_a_tree_of_hundreds_of_nodes_fits_one_program():
    g = torch.Generator().manual_seed(0)
    n = 300
    parents = [-1] + [int(torch.randint(max(0, i - 3), i, (1,), generator=g)) for i in range(1, n)]  # deep
    tree = DraftTree.from_parents(list(range(n)), parents)  # distinct tokens: siblings differ
    node, choice = int(tree.depths.argmax()), [7] * n  # the target follows the drafts to the deepest node
    while node:
        parent = int(tree.parents[node])
        choice[parent], node = int(tree.tokens[node]), parent
    dtree = TreeUpload(DEVICE)(tree, 0)
    packed = walk(dtree, torch.tensor(choice, device=DEVICE)).cpu()
    assert torch.equal(packed, walk_ops(TreeUpload("cpu")(tree, 0), torch.tensor(choice)))
    assert packed[0] == dtree.max_depth + 1 > 20


def test_plain_decoding_is_the_root_alone():
    dtree = TreeUpload(DEVICE)(DraftTree.root_only(5), 12)
    assert walk(dtree, torch.tensor([9], device=DEVICE)).tolist() == [1, 0, 9]


@pytest.mark.parametrize("cache, options", [("dense", {}), ("paged", {"page_size": 4}), ("paged", {"commit": "remap"})])
def test_a_round_through_both_kernels_commits_what_plain_greedy_decoding_does(cache, options):
    """The device path as CUDA runs it — the walk and the staged K/V move one launch each (on a CPU
    in the interpreter) — commits plain decoding's tokens."""
    prompt = [5, 6, 7, 5, 6, 7, 5, 6]
    pipe = (jetspec.builder().target(TinyDecoder(1, device=DEVICE)).drafter("ngram").kv_cache(cache, **options)
            .generation(budget=8, max_new_tokens=24, accept_on_device="always").build())
    plain = pipe.generate_plain(prompt)
    with (patch.object(on_device, "fused", lambda x: True), patch.object(triton_walk, "walk", wraps=triton_walk.walk) as w,
          patch.object(triton_rows, "move_rows", wraps=triton_rows.move_rows) as m):
        result = pipe.generate(prompt)
    assert result.tokens == plain.tokens
    assert 0 < w.call_count == m.call_count <= result.stats.rounds  # each round with drafts; the root alone is one cat
    assert result.stats.tau > 1  # drafts were accepted: the kernels' paths were longer than the root


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU: walk_on_device launches the compiled kernel on CUDA tensors only")
@settings(max_examples=40, deadline=None)
@given(case=trees_and_choices(vocab=VOCAB, max_nodes=300))
def test_on_cuda_the_device_walk_is_the_kernel_and_writes_what_the_torch_walk_writes(case):
    tree, choice = case
    dtree = TreeUpload("cuda")(tree, 3)
    packed = walk_on_device(dtree, torch.tensor(choice, device="cuda"))
    host = walk_ops(TreeUpload("cpu")(tree, 3), torch.tensor(choice))
    assert torch.equal(packed.cpu(), host)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU: the kit's device check runs the compiled walk on CUDA only")
@pytest.mark.parametrize("name, options", [("greedy", None), ("sampling", {"temperature": 0.0})])
def test_the_kit_finds_the_built_in_verifiers_device_path_on_cuda_equal_to_their_host_path(name, options):
    from jetspec.testing.on_device import check_accepts_on_device
    from jetspec.testing.protocol import build
    from jetspec.testing.subject import resolve

    s = resolve("verifier", name, options, jetspec.default_registry())
    check_accepts_on_device(s, lambda: build(s), examples=40, seed=0, device="cuda")
