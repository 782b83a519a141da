"""The packed forward's CUDA-graph form (`targets/decoder/batch_graphs.py`, issue #20) pads a batch
of R rows to its bucket, pads the attention tile tables with empty tiles and reads every sequence's
slot map from the pool's one table, at the sequence's row. None of that may change a bit: for any
mix of trees and chains over any contexts, in a batch of any subset of the pool's sequences, its
logits and everything it writes into the page pool equal the eager packed forward's, step after
step through the same static buffers. Here the static-buffer forward runs without the capture
(`capture=False`: no CUDA on this machine) in the Triton interpreter; the GPU tests
(test_exact_batched_gpu.py) run it captured and replayed."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.batch import BatchMeta
from jetspec.core.interfaces import AttentionMeta
from jetspec.core.tree import DraftTree
from jetspec.kernels.invariant_launch_forms import key_bytes
from jetspec.targets.decoder.batch_graphs import BatchGraphForward
from support.hf_checkpoints import COMMON, exact_and_fast_targets

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-interpreter form; the GPU form is "
                                                                   "test_exact_batched_gpu.py")

VOCAB, CAPACITY, PAGE, POOL = COMMON["vocab_size"], 160, 16, 4


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    return exact_and_fast_targets(tmp_path_factory, seed=5)


@st.composite
def step(draw) -> list[tuple[int, int | list[int]]]:
    """One packed forward: (the pool's sequence it runs, what it verifies: a chain's length or a
    tree's parents) for a non-empty subset of the pool's sequences, in any order."""
    who = draw(st.lists(st.integers(0, POOL - 1), min_size=1, max_size=POOL, unique=True))
    out = []
    for s in who:
        if draw(st.booleans()):
            out.append((s, draw(st.integers(1, 9))))
        else:
            n = draw(st.integers(1, 9))
            out.append((s, [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]))
    return out


# ~10-30 s per example in the interpreter
@settings(max_examples=4, deadline=None)
@given(family=st.sampled_from(["llama", "qwen3"]), dtype=st.sampled_from(["float32", "bfloat16"]),
       contexts=st.lists(st.integers(0, 130), min_size=POOL, max_size=POOL), steps=st.lists(step(), min_size=2, max_size=3),
       seed=st.integers(0, 2**16))
def test_padded_static_forwards_give_the_eager_packed_forwards_bits(targets, family, dtype, contexts, steps, seed):
    exact, fast = targets(family, dtype, 512)
    g = torch.Generator().manual_seed(seed)
    eager = PagedKVCache(exact.info, CAPACITY, PagedCacheOptions(page_size=PAGE, commit="remap")).sequences(POOL)
    for cache, context in zip(eager, contexts):  # committed K/V from torch's kernels (fast)
        if context:
            cache.begin(context)
            fast.forward(torch.randint(0, VOCAB, (context,), generator=g), AttentionMeta.for_chain(context, 0), cache)
            cache.commit(range(context))
    static = copy.deepcopy(eager)  # the same pool, slot-map table and pages, copied together
    info = exact.info
    graphs = BatchGraphForward(torch.device("cpu"), exact.attention, exact.cfg.num_heads // exact.cfg.num_kv_heads,
                               info.kv_heads_here, key_bytes(info.kv_heads_here, info.head_dim, info.dtype.itemsize),
                               max_rows=64, capture=False)
    for batch in steps:
        metas, tokens = [], []
        for s, what in batch:
            n = what if isinstance(what, int) else len(what)
            toks = torch.randperm(VOCAB, generator=g)[:n]  # distinct: a tree's sibling tokens must differ
            t = eager[s].committed
            if isinstance(what, int):
                metas.append(AttentionMeta.for_chain(n, t))
            else:
                metas.append(AttentionMeta.for_tree(DraftTree.from_parents(toks.tolist(), what), t))
            tokens.append(toks)
            eager[s].begin(n)
            static[s].begin(n)
        meta, toks = BatchMeta.pack(metas), torch.cat(tokens)
        assert graphs.handles(meta, [static[s] for s, _ in batch])
        want = exact.forward_batch(toks, meta, [eager[s] for s, _ in batch]).logits
        got = graphs.forward(toks, meta, [static[s] for s, _ in batch], (), exact._forward).logits
        assert got.shape == want.shape and torch.equal(got, want), "the padded forward's logits differ from the eager one's"
        assert torch.equal(static[0].k, eager[0].k) and torch.equal(static[0].v, eager[0].v), \
            "the padded forward wrote other K/V (a pad row wrote somewhere, or a row went to another slot)"
        for s, _ in batch:  # commit the first node of each: the next step sees a longer context
            eager[s].commit([0])
            static[s].commit([0])


def test_a_batch_over_separate_pools_is_not_graphed(targets):
    """The graph reads one slot-map table and one pool: caches of two pools stay eager."""
    exact, _ = targets("llama", "float32", 512)
    graphs = BatchGraphForward(torch.device("cpu"), exact.attention, 3, 1, 768, max_rows=64, capture=False)
    one = PagedKVCache(exact.info, CAPACITY).sequences(2)
    other = PagedKVCache(exact.info, CAPACITY).sequences(1)
    meta = BatchMeta.make_dummy([1, 1], [0, 0])
    assert graphs.handles(meta, one)
    assert not graphs.handles(meta, [one[0], other[0]])
    assert not graphs.handles(BatchMeta.make_dummy([40, 40], [0, 0]), one), "80 rows exceed the largest bucket (64)"
