"""Exact mode in a batch on a GPU (issue #20, part 3), at Qwen3-8B shapes (hidden 4096, 32 query /
8 kv heads of dim 128, MLP 12288, q/k norm; two layers of random bf16 weights): the packed forward
of up to 8 sequences gives every row the bits of its own sequence's forward alone — logits and the
K/V written — for mixes of trees up to 64 nodes and prefill chains over contexts across key blocks
and 512-key split-K ranges, pages in any order (the kernels' tiles then follow the batch's largest
tree, not the sequence's: no bit may depend on it); and every prompt's output at batch size B
equals its plain batch-1 output through CUDA graphs, token for token, with the packed forward
eager and replayed from its own CUDA graphs (`batch_graphs.py`), which give the eager bits."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.batch import BatchMeta
from jetspec.core.config import GenerationConfig, PipelineConfig
from jetspec.core.interfaces import AttentionMeta
from jetspec.core.pipeline import Pipeline
from jetspec.core.tree import DraftTree
from jetspec.drafters.ngram import NgramDrafter, NgramOptions
from jetspec.scorers.best_first import BestFirstScorer
from jetspec.testing.exactness import first_inexact_node, packed_and_alone
from jetspec.testing.oracle import OracleDrafter, OracleOptions
from jetspec.verifiers.greedy import GreedyVerifier

from support.gpu_exact import QWEN3_8B_LIKE, exact_graphed_fast, fill

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU test: bf16 Triton kernels on CUDA; this machine has no GPU"),
]

CAPACITY, PAGE = 4096, 16


@pytest.fixture(scope="module")
def models():
    return exact_graphed_fast()


@st.composite
def sequences(draw) -> tuple[int, DraftTree | int]:
    """(committed context, a tree of up to 64 nodes or the length of a prefill chain)."""
    context = draw(st.integers(0, 3000))
    if draw(st.integers(0, 3)) == 0:
        return context, draw(st.integers(1, 64))
    n = draw(st.integers(1, 64))
    parents = [-1] + [draw(st.one_of(st.just(i - 1), st.integers(0, i - 1))) for i in range(1, n)]
    return context, DraftTree.from_parents(draw(st.permutations(range(1000)))[:n], parents)


def verified(what: DraftTree | int, context: int) -> tuple[AttentionMeta, torch.Tensor]:
    """What one sequence verifies after `context` committed tokens: a tree, or a prefill chain of
    `what` random tokens -> (its meta, its tokens [N] on the GPU)."""
    if isinstance(what, int):
        return AttentionMeta.for_chain(what, context, "cuda"), torch.randint(0, QWEN3_8B_LIKE.vocab_size, (what,), device="cuda")
    return AttentionMeta.for_tree(what, context, "cuda"), what.tokens.cuda()


@settings(max_examples=25, deadline=None)
@given(batch=st.lists(sequences(), min_size=1, max_size=8), commit=st.sampled_from(["gather", "remap"]), data=st.data())
def test_each_packed_row_gets_the_bits_of_its_own_sequence_alone(models, batch, commit, data):
    exact, _, fast = models
    caches = PagedKVCache(exact.info, CAPACITY, PagedCacheOptions(page_size=PAGE, commit=commit)).sequences(len(batch))
    order = data.draw(st.permutations(range(caches[0].num_pages)), label="page order")
    pages = caches[0].allocator.allocate(caches[0].num_pages)
    caches[0].allocator.release([pages[i] for i in reversed(order)])  # LIFO: order[0] first
    metas, tokens = [], []
    for s, (cache, (context, what)) in enumerate(zip(caches, batch)):
        fill(fast, cache, context, seed=context + s)
        meta, toks = verified(what, context)
        metas.append(meta)
        tokens.append(toks)
    packed, alone, differ = packed_and_alone(exact, caches, metas, tokens)
    assert first_inexact_node(packed, alone) is None, first_inexact_node(packed, alone, "their sequences alone")
    assert differ == [], f"sequences {differ} hold other K/V than when they ran alone"


@st.composite
def steps(draw) -> list[list[tuple[int, DraftTree | int]]]:
    """Packed forwards over one pool of 8 sequences: each a subset of them, in any order, with a
    tree of up to 64 nodes or a chain each."""
    out = []
    for _ in range(draw(st.integers(2, 4))):
        who = draw(st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True))
        out.append([(s, draw(sequences())[1]) for s in who])
    return out


@settings(max_examples=10, deadline=None)
@given(contexts=st.lists(st.integers(0, 3000), min_size=8, max_size=8), batches=steps(),
       commit=st.sampled_from(["gather", "remap"]))
def test_the_packed_forwards_cuda_graphs_give_its_eager_bits(models, contexts, batches, commit):
    """`batch_graphs.py`: the packed forward replayed from a captured graph (rows padded to a
    bucket, tile tables padded, slot maps read from the pool's table) gives the eager packed
    forward's logits and writes the same K/V, step after step."""
    exact, graphed, fast = models
    eager = PagedKVCache(exact.info, CAPACITY, PagedCacheOptions(page_size=PAGE, commit=commit)).sequences(8)
    for s, (cache, context) in enumerate(zip(eager, contexts)):
        fill(fast, cache, context, seed=context + s)
    replayed = copy.deepcopy(eager)
    for batch in batches:
        metas, tokens = [], []
        for s, what in batch:
            meta, toks = verified(what, eager[s].committed)
            metas.append(meta)
            tokens.append(toks)
            eager[s].begin(tokens[-1].numel())
            replayed[s].begin(tokens[-1].numel())
        meta, toks = BatchMeta.pack(metas), torch.cat(tokens)
        assert graphed.batch_graphs.handles(meta, [replayed[s] for s, _ in batch])
        want = exact.forward_batch(toks, meta, [eager[s] for s, _ in batch]).logits
        got = graphed.forward_batch(toks, meta, [replayed[s] for s, _ in batch]).logits
        assert first_inexact_node(got, want) is None, first_inexact_node(got, want, "the eager packed forward")
        assert torch.equal(replayed[0].k, eager[0].k) and torch.equal(replayed[0].v, eager[0].v), "other K/V written"
        for s, _ in batch:  # keep the first node: the next step sees a longer context
            eager[s].commit([0])
            replayed[s].commit([0])
    assert graphed.batch_graphs is not None and len(graphed.batch_graphs.graphs) > 0, "no graph was captured"


prompts = st.lists(st.integers(0, 999), min_size=1, max_size=8).flatmap(
    lambda base: st.lists(st.sampled_from(base), min_size=1, max_size=200))


@settings(max_examples=8, deadline=None)
@given(batch=st.lists(prompts, min_size=1, max_size=12), batch_size=st.integers(1, 8), budget=st.integers(1, 64),
       drafter=st.sampled_from(["ngram", "random-trees"]), data=st.data())
def test_each_prompt_of_an_exact_batch_decodes_as_plain_decoding_alone(models, batch, batch_size, budget, drafter, data):
    exact, graphed, _ = models
    cap = data.draw(st.one_of(st.none(), st.integers(batch_size, 8 * batch_size)), label="max_verify_rows")
    overlap = data.draw(st.booleans(), label="overlap")  # two halves of the slots, one step of each in flight

    def pipeline(target, size: int) -> Pipeline:
        def new_drafter():
            if drafter == "ngram":
                return NgramDrafter(NgramOptions())
            return OracleDrafter(OracleOptions(reference=[], extra_branches=6, depth=8, vocab_size=1000))

        gen = GenerationConfig(budget=budget, max_new_tokens=48, batch_size=size, max_verify_rows=cap, overlap=overlap)
        return Pipeline(target=target, drafter=new_drafter(), scorer=BestFirstScorer(), verifier=GreedyVerifier(),
                        new_cache=lambda c: PagedKVCache(target.info, c, PagedCacheOptions(page_size=PAGE)),
                        config=PipelineConfig(generation=gen), new_drafter=new_drafter, new_verifier=GreedyVerifier)

    plain = [pipeline(graphed, 1).generate_plain(p).tokens for p in batch]  # batch 1, CUDA graphs
    for target in (exact, graphed):  # the packed forward eager, then replayed from CUDA graphs
        results = pipeline(target, batch_size).generate_many(batch)
        assert [r.tokens for r in results] == plain


@pytest.mark.parametrize("build_on_device", [True, False])
def test_overlapped_halves_give_a_head_drafter_the_same_hidden_rows(models, build_on_device):
    """With `overlap` the other half's forward is queued before a step's commit reads its hidden rows
    (a CUDA graph's output buffers, shared by equal-sized steps): a head drafter (random weights,
    observing the target's hidden states) must draft from the same rows as one step at a time — the
    same candidates and log-probs at every (prompt, length) — and the output is plain decoding's."""
    import jetspec

    _, graphed, _ = models
    prompts = [[(7 * i + j) % 1000 for j in range(5 + 3 * i)] for i in range(6)]

    def run(overlap: bool) -> tuple[list, dict]:
        # each drafter drafting ahead on its own: pooled jobs of 4 (alone) and 2 + 2 (overlapped) could round
        # apart in bf16, and this test compares bits (tests/test_context_pool.py checks pooled drafting)
        pipe = (jetspec.builder().target(graphed).drafter("jetspec", checkpoint="random", lookup=False, target_layers=[0, 1],
                                                          draft_together=False)
                .kv_cache("paged", page_size=PAGE).generation(budget=8, max_new_tokens=24, batch_size=4, overlap=overlap,
                                                              build_on_device=build_on_device)
                .build())
        drafted, make = {}, pipe.new_drafter

        def new_drafter():  # logs each proposal's first three depths under (prompt, committed length)
            d = make()
            real, real_on_device = d.propose, d.propose_on_device

            def propose(state, budget):
                p = real(state, budget)
                drafted[(tuple(state.tokens[: state.prompt_len]), len(state.tokens))] = [tuple(p.children((0,) * k)) for k in range(3)]
                return p

            def propose_on_device(state, budget):  # the trees grown on the device: the rows stay there
                p = real_on_device(state, budget)
                drafted[(tuple(state.tokens[: state.prompt_len]), len(state.tokens))] = [
                    tuple(zip(p.tokens[k].tolist(), p.logp[k].float().tolist())) for k in range(3)]
                return p

            d.propose, d.propose_on_device = propose, propose_on_device
            return d

        pipe.new_drafter = new_drafter
        results = pipe.generate_many(prompts)
        assert [r.tokens for r in results] == [pipe.generate_plain(p, max_new_tokens=24).tokens for p in prompts]
        return results, drafted

    alone, drafted_alone = run(False)
    overlapped, drafted_overlapped = run(True)
    assert len(drafted_alone) > len(prompts) and drafted_overlapped == drafted_alone


@pytest.mark.parametrize("drafter", ["ngram", "jetspec", "jetspec-lookup-on-device"])
@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("graphs", [True, False])
def test_a_batched_run_waits_for_the_device_only_at_its_read_backs(models, overlap, graphs, drafter):
    """With acceptance on the device, a batched run (admissions and packed prefills, then steps:
    drafts, trees, the upload, the packed forward — replayed from CUDA graphs, or eager with its
    tables made per step — the acceptance, the K/V moves, commits) makes no synchronizing CUDA call
    outside a graph's capture — torch's sync debug mode reports none: the host waits for the device
    only through each step's one read-back (an event). A synchronizing call would make the host wait
    for the whole queue at every step; with `overlap`, for the other half's forward, which is what
    the halves are there to hide. `jetspec`: a random head drafting ahead in a pool, whose prompts of
    more than 32 tokens are appended to its context eagerly, its trees grown on the device (a tree
    built on the host needs a sequence's first draft there: that wait is the host build's own)."""
    import threading
    import traceback
    import warnings

    import jetspec

    exact, graphed, _ = models
    prompts = [[(11 * i + 3 * j) % 1000 for j in range(6 + 5 * i)] + [7, 8, 9] * 4 for i in range(6)]
    head = dict(checkpoint="random", lookup=False, target_layers=[0, 1])
    options = {"ngram": {}, "jetspec": head, "jetspec-lookup-on-device": head | dict(lookup=True, lookup_on_device=True)}[drafter]
    assert max(len(p) for p in prompts) > 33  # a prompt's context append of more than 32 rows (the eager one)
    pipe = (jetspec.builder().target(graphed if graphs else exact).drafter(drafter.split("-")[0], **options)
            .kv_cache("paged", page_size=PAGE)
            .generation(budget=8, max_new_tokens=40, batch_size=4, overlap=overlap, accept_on_device="always",
                        build_on_device=drafter != "ngram").build())
    first = pipe.generate_many(prompts)  # compiles and autotunes every kernel the run launches
    syncs: set[str] = set()

    def record(message, category, filename, lineno, file=None, line=None):  # called where the warning is raised
        stack = traceback.extract_stack()[:-1]
        if "synchronizing CUDA operation" in str(message) and not any(f.name == "capture" and f.filename.endswith("cuda_graphs.py") for f in stack):
            ours = [f"{f.filename.split('jetspec/')[-1]}:{f.lineno} {f.name}" for f in stack if "/jetspec/" in "/" + f.filename]
            where = ours[-4:] or [f"{f.filename}:{f.lineno} {f.name}" for f in stack[-6:]]  # outside jetspec: say where
            syncs.add(f"[{threading.current_thread().name}] {message} at " + " <- ".join(reversed(where)))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            again = pipe.generate_many(prompts)
            assert not syncs, "synchronizing CUDA calls: " + " | ".join(sorted(syncs))
            torch.ones(1, device="cuda").item()  # the control: a read-back the mode must report
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert len(syncs) == 1, "torch's sync debug mode did not report a read-back: this check sees nothing"
    assert [r.tokens for r in again] == [r.tokens for r in first]


@pytest.mark.parametrize("overlap", [False, True])
def test_the_lookup_on_the_device_grows_the_host_lookups_trees_through_cuda_graphs(models, overlap):
    """`lookup_on_device`: each slot's history grown in the pooled job and its tries made in a CUDA
    graph (the host lookup's tries entry for entry: tests/test_lookup_device.py; the same trees where
    no scores tie: tests/test_pooled_lookup.py) — every output plain decoding's."""
    from unittest.mock import patch

    import jetspec
    from jetspec.drafters.head import pool_lookup

    _, graphed, _ = models
    prompts = [[(7 * i + j % 5) % 1000 for j in range(12 + 4 * i)] * 2 for i in range(6)]  # repeats: the lookup matches
    pipe = (jetspec.builder().target(graphed).drafter("jetspec", checkpoint="random", lookup=True, lookup_on_device=True,
                                                      target_layers=[0, 1])
            .kv_cache("paged", page_size=PAGE)
            .generation(budget=8, max_new_tokens=40, batch_size=4, overlap=overlap, accept_on_device="always",
                        build_on_device=True).build())
    steps, step = [], pool_lookup.PooledLookup.step
    with patch.object(pool_lookup.PooledLookup, "step", lambda self, *a: steps.append(1) or step(self, *a)):
        results = pipe.generate_many(prompts)
    assert steps and [r.tokens for r in results] == [pipe.generate_plain(p).tokens for p in prompts]
