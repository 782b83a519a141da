"""The exactness rule on a GPU: at Qwen3-8B shapes (hidden 4096, 32 query / 8 kv heads of dim
128, MLP 12288, q/k norm; two layers of random bf16 weights), every tree node's logits equal plain
one-token steps along its path bit for bit — contexts across key blocks and 512-key split-K ranges,
pages in any order, trees up to 64 nodes, padding rows — and CUDA-graph replay gives the eager
forward's bits. Both attention backends: `triton` (the default, with CUDA graphs) and `cute` (eager;
where the CuTe DSL and a Hopper GPU are there)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.core.interfaces import AttentionMeta
from jetspec.kernels.cute_backend import CuteAttention, unavailable
from jetspec.core.tree import DraftTree
from jetspec.testing.exactness import first_inexact_node, padded_tree_logits, paged_cache, plain_logits

from support.gpu_exact import exact_graphed_fast, fill

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU test: bf16 Triton kernels on CUDA; this machine has no GPU"),
]

CAPACITY = 4096


@pytest.fixture(scope="module")
def models():
    return exact_graphed_fast()


@st.composite
def trees(draw) -> DraftTree:
    n = draw(st.integers(1, 64))
    parents = [-1] + [draw(st.one_of(st.just(i - 1), st.integers(0, i - 1))) for i in range(1, n)]
    tokens = draw(st.permutations(range(1000)))[:n]
    return DraftTree.from_parents(tokens, parents)


@settings(max_examples=40)
@given(context=st.integers(1, 3000), tree=trees(), pads=st.integers(0, 7), commit=st.sampled_from(["gather", "remap"]),
       data=st.data())
def test_every_tree_node_gets_the_logits_of_plain_decoding_bit_for_bit(models, context, tree, pads, commit, data):
    exact, _, fast = models
    check_tree(exact, fast, context, tree, pads, commit, data)


CUTE = unavailable()


@pytest.mark.skipif(CUTE is not None, reason=f"GPU test: {CUTE}")
@settings(max_examples=30, deadline=None)
@given(context=st.integers(1, 3000), tree=trees(), pads=st.integers(0, 7), commit=st.sampled_from(["gather", "remap"]),
       data=st.data())
def test_with_cute_attention_every_tree_node_gets_the_logits_of_plain_decoding_bit_for_bit(models, context, tree, pads,
                                                                                          commit, data):
    exact, _, fast = models
    cute = type(exact)(exact.model, CuteAttention().position_invariant(), exact.info, cuda_graphs=False)
    check_tree(cute, fast, context, tree, pads, commit, data)


def check_tree(exact, fast, context, tree, pads, commit, data) -> None:
    pages = CAPACITY // 16
    cache = paged_cache(exact, CAPACITY, commit, data.draw(st.permutations(range(pages)), label="page order"))
    fill(fast, cache, context, seed=context)
    expected = plain_logits(exact, cache, tree)
    got = padded_tree_logits(exact, cache, tree, pads)
    assert first_inexact_node(got, expected) is None, first_inexact_node(got, expected)


@settings(max_examples=10)
@given(context=st.integers(1, 2000), tree=trees())
def test_graph_replay_gives_the_eager_forward_bits(models, context, tree):
    exact, graphed, fast = models
    check_replay(exact, graphed, fast, context, tree)


def check_replay(exact, graphed, fast, context, tree) -> None:
    """The graphed target's replay of `tree` after `context` committed tokens gives the eager target's bits."""
    cache = paged_cache(exact, CAPACITY, "gather")
    fill(fast, cache, context, seed=context)
    eager = padded_tree_logits(exact, cache, tree)
    cache.begin(tree.size)  # the graphs key on the cache object: replay on this one
    replayed = graphed.forward(tree.tokens.cuda(), AttentionMeta.for_tree(tree, context, "cuda"), cache).logits
    assert graphed.graphs is not None and graphed.graphs.graphs, "no graph was captured"
    assert first_inexact_node(replayed, eager) is None, first_inexact_node(replayed, eager)


def test_a_bucket_whose_tree_takes_the_other_launch_form_at_a_longer_context_is_captured_in_that_form(models):
    """The exact attention runs a 40-node tree (48-node bucket, 4 query heads a KV head: 192 rows) as one
    launch in 12 tiles at a short context, as two at a long one (`invariant_launch_forms.py`); a
    graph records one form, so the bucket gets a graph per form, and each replay has the eager bits."""
    from jetspec.kernels.invariant_launch_forms import one_launch_for

    exact, graphed, fast = models
    tree = DraftTree.from_parents(list(range(40)), [-1] + [i // 2 for i in range(39)])
    forms = {}
    for context in (100, 2000):
        forms[context] = exact.attention.launch_form(48 * 4, context, False, 2 * 8 * 128 * 2)  # K, V: 8 heads x 128, bf16
        assert forms[context] == one_launch_for([192], [context], 128, False, 4096) == exact.launch_form(48, context)
        cache = paged_cache(exact, CAPACITY, "gather")
        fill(fast, cache, context, seed=context)
        eager = padded_tree_logits(exact, cache, tree)
        cache.begin(tree.size)
        replayed = graphed.forward(tree.tokens.cuda(), AttentionMeta.for_tree(tree, context, "cuda"), cache).logits
        assert (id(cache), (), 48, forms[context]) in graphed.graphs.graphs, "the replay's graph is not its form's"
        assert first_inexact_node(replayed, eager) is None, first_inexact_node(replayed, eager)
    assert forms == {100: 1, 2000: 0}


@pytest.fixture(scope="module")
def chunked(models):
    """The exact decoder of `models` with its projections' K in 1024-wide chunks (`linear_chunk`: K = 4096 in 4,
    the down projection's 12288 in 12), eager and graphed."""
    exact, _, _ = models
    return tuple(type(exact)(exact.model, exact.attention, exact.info, cuda_graphs=g, linear_chunk=1024) for g in (False, True))


@settings(max_examples=25)
@given(context=st.integers(1, 3000), tree=trees(), pads=st.integers(0, 7), commit=st.sampled_from(["gather", "remap"]),
       data=st.data())
def test_with_projections_summed_in_k_chunks_every_tree_node_gets_the_logits_of_plain_decoding_bit_for_bit(
        models, chunked, context, tree, pads, commit, data):
    """Up to 16 rows a chunk is a program of its own and the last to arrive adds the chunks; past 16 rows a
    program adds them in turn: plain steps take the first way, most trees the second, and the bits agree."""
    _, _, fast = models
    check_tree(chunked[0], fast, context, tree, pads, commit, data)


@settings(max_examples=8)
@given(context=st.integers(1, 2000), tree=trees())
def test_with_k_chunks_graph_replay_gives_the_eager_forward_bits(models, chunked, context, tree):
    check_replay(*chunked, models[2], context, tree)
