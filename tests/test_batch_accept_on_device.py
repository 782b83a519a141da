"""One acceptance call for a whole packed step (`AcceptsBatchOnDevice`, the greedy verifier): its
per-sequence results are exactly those of one `accept_on_device` per sequence, for any mix of
trees and plain-decoding roots; the batched engine uses it only where every slot's verifier is of
one class that defines it no higher than `accept_on_device`, and asks once a step."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jetspec
from jetspec.core.interfaces import DecodeState, accepts_batch_on_device
from jetspec.core.on_device import TreeUpload
from jetspec.testing.models import tiny_decoder
from jetspec.testing.strategies import draft_trees
from jetspec.verifiers.greedy import GreedyVerifier
from jetspec.verifiers.sampling import SamplingVerifier
from support.registry import make_test_registry

VOCAB = 50


@settings(max_examples=60, deadline=None)
@given(trees=st.lists(st.one_of(draft_trees(vocab=VOCAB, max_nodes=12), st.just(None)), min_size=1, max_size=6),
       seed=st.integers(0, 2**16))
def test_one_call_for_the_step_gives_each_sequence_its_own_acceptance(trees, seed):
    from jetspec.core.tree import DraftTree

    trees = [DraftTree.root_only(7) if t is None else t for t in trees]  # None: a plain-decoding root
    dtrees = [TreeUpload("cpu")(t, prefix_len=3 * s) for s, t in enumerate(trees)]
    cu = [0]
    for t in trees:
        cu.append(cu[-1] + t.size)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(cu[-1], VOCAB, generator=g)  # [R, V]
    verifier, state = GreedyVerifier(), DecodeState(tokens=[1], prompt_len=1)
    batch = verifier.accept_batch_on_device(dtrees, logits, cu)
    alone = [verifier.accept_on_device(d, logits[cu[s] : cu[s + 1]], state) for s, d in enumerate(dtrees)]
    assert len(batch) == len(alone) and all(torch.equal(b, a) for b, a in zip(batch, alone))


@settings(max_examples=25, deadline=None)
@given(trees=st.lists(st.one_of(draft_trees(vocab=VOCAB, max_nodes=40), st.just(None)), min_size=1, max_size=6),
       seed=st.integers(0, 2**16))
def test_the_trees_of_one_upload_are_walked_in_one_launch_as_each_alone(trees, seed):
    """On CUDA (here: Triton's interpreter) a step's trees, uploaded end to end by `TreeUpload.many`,
    go through one `walk_many` launch whose results equal the one-tree walk's; trees uploaded
    one by one are not one block and go tree by tree."""
    from unittest.mock import patch

    from jetspec.core import on_device
    from jetspec.core.tree import DraftTree
    from jetspec.verifiers import triton_walk
    from jetspec.verifiers.greedy import walk_ops

    trees = [DraftTree.root_only(7) if t is None else t for t in trees]
    if all(t.size == 1 for t in trees):
        trees.append(DraftTree.chain([3, 4, 5]))  # a step of roots alone is packed by one op, not walked
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the kernel compiled on a GPU machine, else interpreted
    dtrees, _ = TreeUpload(device, capacity=8).many(trees, [3 * s for s in range(len(trees))])
    cu = [0]
    for t in trees:
        cu.append(cu[-1] + t.size)
    choice_logits = torch.randn(cu[-1], VOCAB, generator=torch.Generator().manual_seed(seed)).to(device)  # [R, V]
    host, _ = TreeUpload("cpu").many(trees, [3 * s for s in range(len(trees))])
    alone = [walk_ops(d, choice_logits[cu[s] : cu[s + 1]].argmax(-1).cpu()) for s, d in enumerate(host)]
    verifier = GreedyVerifier()
    with (patch.object(on_device, "fused", lambda x: True),
          patch.object(triton_walk, "walk_many", wraps=triton_walk.walk_many) as many):
        assert triton_walk.one_block(dtrees, cu)
        batch = verifier.accept_batch_on_device(dtrees, choice_logits, cu)
        assert many.call_count == 1
        singles = [TreeUpload(device)(t, 0) for t in trees]  # separate buffers: not one block
        assert len(trees) == 1 or not triton_walk.one_block(singles, cu)
    assert all(torch.equal(b.cpu(), a) for b, a in zip(batch, alone))


def test_the_step_call_needs_one_class_that_defines_it_with_the_one_sequence_form():
    class OwnDeviceRule(GreedyVerifier):  # overrides the one-sequence form alone: the batch form would not follow it
        def accept_on_device(self, tree, logits, state):
            return super().accept_on_device(tree, logits, state)

    assert accepts_batch_on_device([GreedyVerifier(), GreedyVerifier()])
    assert not accepts_batch_on_device([GreedyVerifier(), OwnDeviceRule()]), "two classes"
    assert not accepts_batch_on_device([OwnDeviceRule()])
    assert not accepts_batch_on_device([SamplingVerifier()]), "a sampling verifier draws per sequence"


def test_the_batched_engine_asks_once_a_step_and_decodes_as_without_it():
    """...and stages the step's K/V moves through the page pool's one call (`stage_commit_many`)."""
    calls: list[int] = []

    class Counting(GreedyVerifier):
        def accept_on_device(self, tree, logits, state):
            return super().accept_on_device(tree, logits, state)

        def accept_batch_on_device(self, trees, logits, cu_rows):
            calls.append(len(trees))
            return super().accept_batch_on_device(trees, logits, cu_rows)

    class OnePerSequence(GreedyVerifier):  # the one-sequence form alone: no step call
        def accept_on_device(self, tree, logits, state):
            return super().accept_on_device(tree, logits, state)

    from unittest.mock import patch

    from jetspec.caches.paged import PagedKVCache

    prompts = [[1, 2, 3, 1, 2, 3, 1], [4, 5, 6, 4, 5], [7, 8, 9], [3, 3, 3, 3]]
    outputs = {}
    for verifier in (Counting, OnePerSequence):
        pipe = (jetspec.builder(make_test_registry()).target(tiny_decoder(0)).drafter("ngram").kv_cache("paged")
                .generation(budget=4, max_new_tokens=12, accept_on_device="always").build())
        pipe.new_verifier = verifier
        with patch.object(PagedKVCache, "stage_commit_many", autospec=True, side_effect=PagedKVCache.stage_commit_many) as staged:
            outputs[verifier] = [r.tokens for r in pipe.generate_many(prompts, batch_size=3)]
        assert staged.call_count > 0, "a step's staged commits go through the pool's one call"
    steps = len(calls)
    assert steps > 0 and sum(calls) >= steps, "the step call was never made"
    assert max(calls) <= 3, "one call covers at most the batch's sequences"
    assert outputs[Counting] == outputs[OnePerSequence]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6), data=st.data())
def test_the_steps_committed_hidden_rows_are_each_sequences_path_rows_in_one_gather(sizes, data):
    from jetspec.core.batch import BatchMeta
    from jetspec.core.batch_accept import committed_rows
    from jetspec.core.errors import PluginError
    from jetspec.core.interfaces import Acceptance, AttentionMeta

    metas = [AttentionMeta(prefix_len=4, positions=torch.arange(n) + 4, subtree_sizes=torch.ones(n, dtype=torch.int64)) for n in sizes]
    meta = BatchMeta.pack(metas)
    hidden = torch.randn(sum(sizes), 2, 8)  # [R, k, H]
    accepted = []
    for n in sizes:  # a path through each sequence's rows, or a failed acceptance
        path = [0] + sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else [0]
        accepted.append(PluginError("bad path") if data.draw(st.booleans()) and data.draw(st.booleans()) else Acceptance(path=path, bonus=1))
    got = committed_rows(hidden, meta, accepted)
    for s, acc in enumerate(accepted):
        if isinstance(acc, PluginError):
            assert got[s] is None
        else:
            assert torch.equal(got[s], hidden[meta.rows(s)][acc.path])
    assert committed_rows(None, meta, accepted) == [None] * len(sizes)
