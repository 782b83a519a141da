"""Exact mode in a batch (issue #20, part 3): with `exact = true` our decoder's packed forward of S
sequences (`forward_batch`) gives every row the bits of its own sequence's forward alone — its
logits (`torch.equal`) and the K/V it writes into the shared page pool — for Llama / Qwen2 / Qwen3
decoders with GQA, in fp32 and bf16, for any mix of trees and prefill chains over committed
contexts of any lengths (across key blocks, pages and split-K ranges), pages in any order, either
commit strategy. A sequence's own forward is bit for bit plain decoding (tests/targets/test_exact.py),
so batch size cannot change a bit. On this CPU the Triton kernels run in the interpreter;
tests/targets/test_exact_batched_gpu.py states the same on a GPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.errors import IncompatibleError
from jetspec.core.interfaces import AttentionMeta
from jetspec.core.tree import DraftTree
from jetspec.testing.exactness import first_inexact_node, packed_and_alone
from support.hf_checkpoints import COMMON, EXACT_FAMILIES as MODELS, exact_and_fast_targets

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-interpreter form; the GPU form is "
                                                                   "test_exact_batched_gpu.py")

VOCAB, CAPACITY, PAGE = COMMON["vocab_size"], 192, 16


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """(family, dtype, split_keys) -> (exact target, the same weights with torch's kernels)."""
    return exact_and_fast_targets(tmp_path_factory, seed=3)


@st.composite
def sequences(draw) -> tuple[int, DraftTree | int]:
    """(committed context length, a draft tree — chains and bushes — or the length of a prefill chain)."""
    context = draw(st.integers(0, 150))
    if draw(st.integers(0, 2)) == 0:
        return context, draw(st.integers(1, 12))
    n = draw(st.integers(1, 12))
    parents = [-1] + [draw(st.one_of(st.just(i - 1), st.integers(0, i - 1))) for i in range(1, n)]
    return context, DraftTree.from_parents(draw(st.permutations(range(VOCAB)))[:n], parents)


def shared_caches(target, count: int, commit: str, page_order: list[int]) -> list[PagedKVCache]:
    """`count` paged caches over one pool whose pages are handed out in `page_order`."""
    caches = PagedKVCache(target.info, CAPACITY, PagedCacheOptions(page_size=PAGE, commit=commit)).sequences(count)
    pages = caches[0].allocator.allocate(caches[0].num_pages)
    caches[0].allocator.release([pages[i] for i in reversed(page_order)])  # LIFO: page_order[0] first
    return caches


# 16 examples (~5-15 s each in the Triton interpreter); the GPU form runs more
@settings(max_examples=16)
@given(
    family=st.sampled_from(sorted(MODELS)),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    split_keys=st.sampled_from([64, 512]),
    commit=st.sampled_from(["gather", "remap"]),
    batch=st.lists(sequences(), min_size=1, max_size=4),
    data=st.data(),
)
def test_each_packed_row_gets_the_bits_of_its_own_sequence_alone(targets, family, dtype, split_keys, commit, batch, data):
    target, fast = targets(family, dtype, split_keys)
    order = data.draw(st.permutations(range(len(batch) * CAPACITY // PAGE)), label="page order")
    caches = shared_caches(target, len(batch), commit, order)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="token seed"))
    metas, tokens = [], []
    for cache, (context, what) in zip(caches, batch):
        if context:  # any committed K/V will do: written by torch's kernels
            cache.begin(context)
            fast.forward(torch.randint(0, VOCAB, (context,), generator=g), AttentionMeta.for_chain(context, 0), cache)
            cache.commit(range(context))
        if isinstance(what, int):
            metas.append(AttentionMeta.for_chain(what, context))
            tokens.append(torch.randint(0, VOCAB, (what,), generator=g))
        else:
            metas.append(AttentionMeta.for_tree(what, context))
            tokens.append(what.tokens)
    packed, alone, differ = packed_and_alone(target, caches, metas, tokens)
    assert first_inexact_node(packed, alone) is None, first_inexact_node(packed, alone, "their sequences alone")
    assert differ == [], f"sequences {differ} hold other K/V than when they ran alone"


def test_exact_batches_refuse_separate_caches_in_one_line(targets):
    """The in-place K/V write addresses one pool: sequences with caches of their own are refused."""
    from jetspec.caches.dense import DenseKVCache
    from jetspec.core.batch import BatchMeta

    target, _ = targets("llama", "float32", 512)
    caches = [DenseKVCache(target.info, 16), DenseKVCache(target.info, 16)]
    for c in caches:
        c.begin(1)
    with pytest.raises(IncompatibleError, match=r"^exact = true writes a batch's K/V into one page pool its sequences "
                                                r"share \(kv_cache 'paged'\); these sequences have separate caches$"):
        target.forward_batch(torch.tensor([1, 2]), BatchMeta.make_dummy([1, 1], [0, 0]), caches)
