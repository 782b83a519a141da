"""The `triton` backend's packed form (`attend_batch`, batched decoding): the rows of several
sequences over one shared page pool, in one launch, equal each sequence's reference tree attention
over its own cache — for any trees, prefixes, page size, commit mode, GQA ratio and tiling; in the
position-invariant mode (exact = true) bit for bit what the backend computes for each sequence
alone. On a CPU the kernels run in Triton's interpreter (conftest.py), so shapes are small."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from jetspec.caches.dense import DenseKVCache  # noqa: E402
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache  # noqa: E402
from jetspec.core.batch import BatchMeta  # noqa: E402
from jetspec.core.errors import IncompatibleError  # noqa: E402
from jetspec.core.interfaces import AttentionMeta  # noqa: E402
from jetspec.kernels.reference import TorchAttention  # noqa: E402
from jetspec.kernels.triton_backend import TritonAttention, TritonAttentionOptions  # noqa: E402

from .cases import DEVICE, target_info, trees  # noqa: E402


def fill(cache, prefix: int, tree, kv_heads: int, head_dim: int, g: torch.Generator) -> AttentionMeta:
    """`prefix` committed keys (written in a few rounds, some entries dropped, so pages scatter),
    then the tree's pending K/V; -> the tree's meta."""
    rand = lambda n: torch.randn(n, kv_heads, head_dim, generator=g).to(DEVICE, cache.k.dtype)  # noqa: E731
    while cache.committed < prefix:
        n = min(5, prefix - cache.committed + 2)
        cache.begin(n)
        cache.write(0, rand(n), rand(n))
        cache.commit([j for j in range(n) if j != 1][: prefix - cache.committed])
    cache.begin(tree.size)
    cache.write(0, rand(tree.size), rand(tree.size))
    return AttentionMeta.for_tree(tree, prefix, DEVICE)


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.tuples(trees(max_nodes=12), st.integers(0, 40)), min_size=1, max_size=4),
    kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 4]),
    page_size=st.sampled_from([1, 4, 16]),
    commit=st.sampled_from(["gather", "remap"]),
    options=st.one_of(st.just(TritonAttentionOptions()),
                      st.builds(TritonAttentionOptions, block_m=st.sampled_from([16, 32]), block_n=st.just(16),
                                num_splits=st.integers(1, 3))),
    seed=st.integers(0, 2**16),
)
def test_packed_sequences_equal_each_sequence_alone(shapes, kv_heads, group, page_size, commit, options, seed):
    head_dim, g = 16, torch.Generator().manual_seed(seed)
    info = target_info(kv_heads, head_dim, torch.float32)
    caches = PagedKVCache(info, 64, PagedCacheOptions(page_size=page_size, commit=commit)).sequences(len(shapes))
    metas = [fill(c, prefix, tree, kv_heads, head_dim, g) for c, (tree, prefix) in zip(caches, shapes)]
    meta = BatchMeta.pack(metas)
    q = torch.randn(meta.num_queries, kv_heads * group, head_dim, generator=g).to(DEVICE)  # [R, Hq, D]
    out = TritonAttention(options).attend_batch(q, caches, 0, meta, 0.25)
    for s, cache in enumerate(caches):
        want = TorchAttention().attend(q[meta.rows(s)], cache, 0, metas[s], 0.25)
        torch.testing.assert_close(out[meta.rows(s)], want, atol=1e-4, rtol=1e-4)


@settings(max_examples=12, deadline=None)
@given(
    shapes=st.lists(st.tuples(trees(max_nodes=12), st.integers(0, 150)), min_size=1, max_size=4),
    chains=st.booleans(),  # where every tree is a chain: as prefill chains (the kernel's CHAIN form)
    kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 3, 4]),
    page_size=st.sampled_from([1, 16]),
    commit=st.sampled_from(["gather", "remap"]),
    split_keys=st.sampled_from([64, 128, 512]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_packed_invariant_rows_equal_each_sequence_alone_bit_for_bit(shapes, chains, kv_heads, group, page_size, commit,
                                                                     split_keys, dtype, seed):
    head_dim, g = 16, torch.Generator().manual_seed(seed)
    info = target_info(kv_heads, head_dim, dtype)
    caches = PagedKVCache(info, 192, PagedCacheOptions(page_size=page_size, commit=commit)).sequences(len(shapes))
    metas = [fill(c, prefix, tree, kv_heads, head_dim, g) for c, (tree, prefix) in zip(caches, shapes)]
    if chains and all(m.subtree_sizes.tolist() == list(range(m.num_queries, 0, -1)) for m in metas):
        metas = [AttentionMeta.for_chain(m.num_queries, m.prefix_len, DEVICE) for m in metas]
    meta = BatchMeta.pack(metas)
    q = torch.randn(meta.num_queries, kv_heads * group, head_dim, generator=g).to(DEVICE, dtype)  # [R, Hq, D]
    options = TritonAttentionOptions(split_keys=split_keys)
    out = TritonAttention(options, invariant=True).attend_batch(q, caches, 0, meta, 0.25)
    for s, cache in enumerate(caches):
        alone = TritonAttention(options, invariant=True).attend(q[meta.rows(s)], cache, 0, metas[s], 0.25)
        assert torch.equal(out[meta.rows(s)], alone), f"sequence {s} of {len(caches)}"


def test_separate_caches_are_refused_in_one_line():
    info = target_info(1, 16, torch.float32)
    g = torch.Generator().manual_seed(0)
    caches = [DenseKVCache(info, 16), DenseKVCache(info, 16)]
    metas = [fill(c, 3, trees_chain(2), 1, 16, g) for c in caches]
    meta = BatchMeta.pack(metas)
    q = torch.randn(4, 1, 16).to(DEVICE)
    for invariant in (False, True):
        with pytest.raises(IncompatibleError, match=r"^the triton attention backend verifies a batch whose sequences share "
                                                    r"one page pool \(kv_cache 'paged'\); these sequences have separate caches$"):
            TritonAttention(invariant=invariant).attend_batch(q, caches, 0, meta, 0.25)


def trees_chain(n):
    from jetspec.core.tree import DraftTree

    return DraftTree.chain(list(range(n)))


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 3), batch_size=st.integers(2, 4), data=st.data())
def test_batched_decoding_through_the_packed_kernel_is_lossless(seed, batch_size, data):
    """TinyDecoder with triton attention over one paged pool: every prompt's output at batch B is
    its plain greedy output (reference parts, one sequence at a time)."""
    from jetspec.testing.batched import PromptOracle, assemble_batched
    from jetspec.testing.lossless import PROMPTS, plain_greedy
    from jetspec.testing.models import TinyDecoder

    prompts = data.draw(st.lists(PROMPTS, min_size=1, max_size=5))
    target = TinyDecoder(seed, attention=TritonAttention(), device=DEVICE)
    answer = lambda p: plain_greedy("decoder", seed, p)  # noqa: E731
    pipe = assemble_batched(target, lambda: PromptOracle(answer, corrupt_p=0.3, seed=seed), batch_size=batch_size,
                            new_cache=lambda c: PagedKVCache(target.info, c, PagedCacheOptions(page_size=4)))
    results = pipe.generate_many([list(p) for p in prompts], max_new_tokens=10, budget=8)
    assert [tuple(r.tokens) for r in results] == [answer(tuple(p))[:10] for p in prompts]
