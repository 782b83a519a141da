"""The exactness rule (`exact = true`): the logits our decoder computes for every node of a
verified tree equal, bit for bit (`torch.equal`), those of plain one-token steps along that
node's path — for Llama / Qwen2 / Qwen3 decoders with GQA, in fp32 and bf16, through the paged KV
cache (pages in any order, either commit strategy) and the `triton` backend's position-invariant
kernel, with contexts that cross key blocks (64), pages (16) and split-K ranges, trees of up to
64 nodes, and CUDA-graph-style padding rows after the tree. On this CPU the Triton kernels run in
the interpreter (tests/conftest.py); tests/targets/test_exact_gpu.py states the same on a GPU."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from jetspec.core.errors import IncompatibleError
from jetspec.core.interfaces import AttentionMeta
from jetspec.core.tree import DraftTree
from jetspec.testing.exactness import first_inexact_node, padded_tree_logits, paged_cache, plain_logits
from support.hf_checkpoints import COMMON, EXACT_FAMILIES as MODELS, exact_and_fast_targets, random_hf_model

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-interpreter form; the GPU form is test_exact_gpu.py")

VOCAB = COMMON["vocab_size"]


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """(family, dtype, split_keys) -> (exact target, the same weights with torch's kernels)."""
    return exact_and_fast_targets(tmp_path_factory, seed=1)


@st.composite
def trees(draw, max_nodes: int = 64) -> DraftTree:
    """Mostly small trees (the interpreter's one-token steps cost ~0.3 s each), one in ten up to
    `max_nodes`; chains and bushes."""
    n = draw(st.integers(1, max_nodes if draw(st.integers(0, 9)) == 0 else 12))
    parents = [-1] + [draw(st.one_of(st.just(i - 1), st.integers(0, i - 1))) for i in range(1, n)]  # chains and bushes
    tokens = draw(st.permutations(range(VOCAB)))[:n]  # distinct, so siblings differ
    return DraftTree.from_parents(tokens, parents)


# 60 examples by default (~6 s each in the Triton interpreter: the suite's longest test); EXACT_EXAMPLES=N for more
@settings(max_examples=int(os.environ.get('EXACT_EXAMPLES', 60)))
@given(
    family=st.sampled_from(sorted(MODELS)),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    split_keys=st.sampled_from([64, 512]),
    commit=st.sampled_from(["gather", "remap"]),
    context=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=150),
    tree=trees(),
    pads=st.integers(0, 3),
    data=st.data(),
)
def test_every_tree_node_gets_the_logits_of_plain_decoding_bit_for_bit(targets, family, dtype, split_keys, commit,
                                                                        context, tree, pads, data):
    target, fast = targets(family, dtype, split_keys)
    order = data.draw(st.permutations(range(16)), label="page order")
    cache = paged_cache(target, 256, commit, order)
    cache.begin(len(context))
    fast.forward(torch.tensor(context), AttentionMeta.for_chain(len(context), 0), cache)  # any committed K/V will do
    cache.commit(range(len(context)))
    expected = plain_logits(target, cache, tree)  # [N, V]
    got = padded_tree_logits(target, cache, tree, pads)  # [N, V]
    assert first_inexact_node(got, expected) is None, first_inexact_node(got, expected)


def test_the_default_is_exact_only_where_kernels_run_and_exact_needs_an_invariant_backend(tmp_path):
    cls_name, fields = MODELS["llama"]
    random_hf_model(cls_name, fields).save_pretrained(tmp_path)
    cpu = jetspec.builder().target("decoder", path=str(tmp_path), device="cpu").attention("triton").drafter("ngram").build().target
    assert not cpu.info.exact  # no GPU: auto keeps torch's kernels
    with pytest.raises(IncompatibleError, match="position-invariant mode"):
        (jetspec.builder().target("decoder", path=str(tmp_path), device="cpu", exact=True).attention("torch")
         .drafter("ngram").build())
