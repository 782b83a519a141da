"""`fuse_rope` (the triton backend, exact = true): a one-token step's RoPE and K/V write run inside its attention
launch (`kernels/triton_invariant_rope.py`) — the step's logits and the K/V it leaves in the cache are bit for bit
those of `rope_write` then the attention (q/k norm included), so a tree verified the two-launch way still gets every
plain step's logits.
CPU interpreter (tests/conftest.py), and on a GPU at the SmolLM2 shape (the last test)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.core.interfaces import AttentionMeta
from jetspec.core.tree import DraftTree
from jetspec.testing.exactness import first_inexact_node, padded_tree_logits, paged_cache, plain_logits, step
from support.hf_checkpoints import COMMON, exact_and_fast_targets

pytest.importorskip("triton")
cpu_form = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-interpreter form; the GPU's is the last test")

VOCAB = COMMON["vocab_size"]


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    return exact_and_fast_targets(tmp_path_factory, seed=2)


def filled(target, fast, context: list[int], order: list[int]):
    cache = paged_cache(target, 256, "gather", order)
    cache.begin(len(context))
    fast.forward(torch.tensor(context), AttentionMeta.for_chain(len(context), 0), cache)
    cache.commit(range(len(context)))
    return cache


@cpu_form
@settings(max_examples=10, deadline=None)
@given(family=st.sampled_from(["llama", "qwen3"]), dtype=st.sampled_from(["float32", "bfloat16"]),
       split_keys=st.sampled_from([64, 512]), context=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=150),
       token=st.integers(0, VOCAB - 1), order=st.permutations(range(16)))
def test_a_fused_step_leaves_the_logits_and_the_cache_of_the_two_launches(targets, family, dtype, split_keys, context,
                                                                          token, order):
    """Llama (RoPE alone) and Qwen3 (each head's q/k norm first: `core/invariant.norm_rope` in both kernels)."""
    fused, fast = targets(family, dtype, split_keys, fuse_rope=True)
    apart, _ = targets(family, dtype, split_keys)
    a, b = filled(fused, fast, context, order), filled(apart, fast, context, order)
    got, want = step(fused, a, token), step(apart, b, token)  # the step committed in each
    assert torch.equal(got, want)
    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)  # the step's K/V row, written where the slot map says


@cpu_form
@settings(max_examples=6, deadline=None)
@given(dtype=st.sampled_from(["float32", "bfloat16"]), context=st.lists(st.integers(0, VOCAB - 1), min_size=60, max_size=140),
       parents=st.lists(st.integers(0, 6), min_size=1, max_size=7))
def test_a_tree_gets_the_logits_of_fused_plain_steps(targets, dtype, context, parents):
    """Fused plain steps (one token) against the tree's one forward (the two launches), over split boundaries."""
    fused, fast = targets("llama", dtype, 64, fuse_rope=True)
    tree = DraftTree.from_parents(list(range(3, 4 + len(parents))), [-1] + [min(p, i) for i, p in enumerate(parents)])
    cache = filled(fused, fast, context, list(range(16)))
    got, want = padded_tree_logits(fused, cache, tree, 1), plain_logits(fused, cache, tree)
    assert first_inexact_node(got, want) is None, first_inexact_node(got, want)


@cpu_form
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_a_one_token_step_of_one_sequence_takes_the_fused_launch_in_every_layer(targets, family, monkeypatch):
    from jetspec.kernels import triton_invariant_rope

    fused, fast = targets(family, "float32", 64, fuse_rope=True)
    launched = []
    real = triton_invariant_rope.invariant_rope_attention
    monkeypatch.setattr(triton_invariant_rope, "invariant_rope_attention", lambda *a: launched.append(1) or real(*a))
    cache = filled(fused, fast, [5, 6, 7], list(range(16)))
    step(fused, cache, 9)
    assert len(launched) == fused.info.num_layers
    padded_tree_logits(fused, cache, DraftTree.from_parents([9, 4], [-1, 0]))  # a tree: the two launches
    assert len(launched) == fused.info.num_layers


SMOLLM2_LIKE = dict(architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=2,
                    num_heads=9, num_kv_heads=3, head_dim=64, max_positions=8192, rms_norm_eps=1e-5)


@pytest.fixture(scope="module")
def gpu_models():
    """(two launches, fused, fused with CUDA graphs, torch's kernels) over one set of random bf16 SmolLM2-shaped weights."""
    from jetspec.kernels.reference import TorchAttention
    from jetspec.kernels.triton_backend import TritonAttention, TritonAttentionOptions
    from jetspec.targets.decoder.config import DecoderConfig, RopeConfig
    from jetspec.targets.decoder.ops import TorchOps
    from jetspec.testing.exactness import random_decoder

    apart = random_decoder(DecoderConfig(**SMOLLM2_LIKE, rope=RopeConfig(theta=1e5)), "cuda", torch.bfloat16, exact=True,
                           split_keys=256)
    fused_attention = TritonAttention(TritonAttentionOptions(split_keys=256, fuse_rope=True), invariant=True)
    fused = type(apart)(apart.model, fused_attention, apart.info, cuda_graphs=False)
    graphed = type(apart)(apart.model, fused_attention, apart.info, cuda_graphs=True)
    fast = type(apart)(apart.model, apart.attention, apart.info, cuda_graphs=False)
    fast.ops, fast.attention = TorchOps(), TorchAttention()
    return apart, fused, graphed, fast


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU test: bf16 Triton kernels on CUDA; this machine has no GPU")
@settings(max_examples=30, deadline=None)
@given(context=st.integers(1, 2000), token=st.integers(0, 49151), graphs=st.booleans(), order=st.permutations(range(256)))
def test_on_a_gpu_a_fused_step_leaves_the_logits_and_the_cache_of_the_two_launches(gpu_models, context, token, graphs, order):
    """Every split's program races the one that writes the step's K/V only on a GPU: the writer is the split that reads it."""
    apart, fused, graphed, fast = gpu_models
    caches = []
    for _ in range(2):
        cache = paged_cache(apart, 4096, "gather", order)  # 256 pages of 16
        g = torch.Generator().manual_seed(context)
        ctx = torch.randint(0, 49152, (context,), generator=g).cuda()  # [context]
        cache.begin(context)
        fast.forward(ctx, AttentionMeta.for_chain(context, 0, "cuda"), cache)
        cache.commit(range(context))
        caches.append(cache)
    got, want = step(graphed if graphs else fused, caches[0], token), step(apart, caches[1], token)
    assert torch.equal(got, want)
    assert torch.equal(caches[0].k, caches[1].k) and torch.equal(caches[0].v, caches[1].v)
