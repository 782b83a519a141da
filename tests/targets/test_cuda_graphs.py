"""The fast GPU path: our decoder replaying CUDA graphs (Triton attention, dense or paged KV)
gives the same tokens as eager execution, and speculative == plain greedy through it."""

from unittest.mock import patch

import pytest
import torch

import jetspec
from jetspec.core.plain_ahead import plain_ahead as plain_ahead_fn
from support.models import tiny_hf_model
from support.registry import make_test_registry

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU; this machine has none")]
REG = make_test_registry()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-d16")
    tiny_hf_model("llama", seed=3, hidden=64, layers=3).save_pretrained(path)  # head dim 16
    return path


def pipe(folder, cache, graphs, drafter="ngram", budget=32, **drafter_options):
    return (
        jetspec.builder(REG)
        .target("decoder", path=str(folder), dtype="float32", device="cuda", cuda_graphs=graphs)
        .attention("triton")
        .kv_cache(cache)
        .drafter(drafter, **drafter_options)
        .generation(budget=budget, max_new_tokens=64)
        .build()
    )


@pytest.mark.parametrize("cache", ["dense", "paged"])
def test_graph_replay_equals_eager(folder, cache):
    prompts = [[5, 6, 7, 5, 6, 7, 5], [9], list(range(10, 50))]
    eager, graphed = pipe(folder, cache, False), pipe(folder, cache, True)
    assert graphed.target.graphs is not None and eager.target.graphs is None
    for p in prompts:
        reference = eager.generate_plain(p).tokens
        assert graphed.generate_plain(p).tokens == reference
        assert graphed.generate(p).tokens == reference


@pytest.mark.parametrize("cache", ["dense", "paged"])
@pytest.mark.parametrize("graphs", [False, True])
def test_plain_decoding_with_the_next_step_queued_ahead_gives_the_step_by_step_tokens(folder, cache, graphs):
    """`plain_ahead` (the default on CUDA): each forward queued before the read-back of the step
    before, its token written on the device — through graphs, the same tokens as one step at a time."""
    ahead, step_by_step = pipe(folder, cache, graphs), pipe(folder, cache, graphs)
    step_by_step.config.generation.plain_ahead = False
    with patch("jetspec.core.pipeline.plain_ahead", wraps=plain_ahead_fn) as used:
        for p, max_new in (([5, 6, 7, 5, 6, 7, 5], 64), ([9], 1), ([9], 2), (list(range(10, 50)), 33)):
            reference = step_by_step.generate_plain(p, max_new_tokens=max_new).tokens
            assert ahead.generate_plain(p, max_new_tokens=max_new).tokens == reference
            stop = reference[len(reference) // 2]
            assert ahead.generate_plain(p, max_new_tokens=max_new, stop_token_ids=[stop]).tokens == reference[: reference.index(stop) + 1]
    assert used.call_count == 8


@pytest.mark.parametrize("budget", [1, 7, 64, 255])
def test_speculative_equals_plain_through_graphs_with_an_oracle(folder, budget):
    p = [1, 2, 3, 4, 1, 2]
    reference = pipe(folder, "paged", False).generate_plain(p).tokens
    for corrupt in (0.0, 0.3, 1.0):
        graphed = pipe(folder, "paged", True, drafter="oracle", budget=budget, reference=reference, corrupt_p=corrupt,
                       vocab_size=96)
        assert graphed.generate(p).tokens == reference


@pytest.mark.parametrize("drafter,options", [
    ("jetspec", {"block_size": 6, "lookup": False, "checkpoint": "random"}),
    ("jetspec", {"block_size": 6, "lookup": True, "checkpoint": "random"}),
    ("eagle", {"depth": 3, "top_k": 3, "frontier": 2, "checkpoint": "random"}),  # only its context append is graphed
])  # fmt: skip
def test_speculative_equals_plain_with_graphed_head_drafting(folder, drafter, options):
    """The heads' per-round steps replayed from their own CUDA graphs, beside the target's."""
    prompts = [[5, 6, 7, 5, 6, 7, 5], list(range(10, 50)), [3] * 30]
    graphed = pipe(folder, "paged", True, drafter=drafter, budget=48, **options)
    assert graphed.drafter.graphs is not None
    kept = []  # jetspec: the rounds whose head context was appended ahead, from device data (`DraftsAhead`)
    observe = type(graphed.drafter).observe

    def counted(drafter, state, hidden):
        observe(drafter, state, hidden)
        kept.append(drafter.kept_ahead)

    with patch.object(type(graphed.drafter), "observe", counted):
        for p in prompts:
            assert graphed.generate(p).tokens == graphed.generate_plain(p).tokens
    assert graphed.drafter.graphs.graphs  # captured, not silently eager
    assert any(kept) == (drafter == "jetspec")  # on a GPU the head drafts ahead through its graphs


def test_propose_reads_the_draft_queued_ahead_only_once_its_copy_is_done(folder):
    """The round's read-back is queued before the drafter's next round (`DraftsAhead`), so the host
    reads a round's result while the device still drafts: the draft `propose` hands on must be the
    one the device drafted, never the previous round's left in the host buffer. A 10 ms GPU spin
    after every draft makes reading the buffer before its copy is done certain to be caught."""
    from jetspec.drafters.head.drafter import HeadDrafter

    spec = pipe(folder, "paged", True, drafter="jetspec", budget=16, block_size=6, lookup=False, checkpoint="random")
    drafted, checked = [], []
    draft, propose = HeadDrafter._draft, HeadDrafter.propose

    def slow_draft(drafter, *args):
        logp, tokens = draft(drafter, *args)
        drafted.append(tokens.clone())  # [depths, k] on the device, queued behind the draft
        torch.cuda._sleep(20_000_000)
        return logp, tokens

    def checked_propose(drafter, state, budget):
        proposal = propose(drafter, state, budget)
        truth = drafted[-1].tolist()  # waits for the device
        checked.append([[t for t, _ in proposal.children((0,) * d)] for d in range(len(truth))] == truth)
        return proposal

    with patch.object(HeadDrafter, "_draft", slow_draft), patch.object(HeadDrafter, "propose", checked_propose):
        prompt = [5, 6, 7, 5, 6, 7, 5]
        assert spec.generate(prompt).tokens == spec.generate_plain(prompt).tokens
    assert len(checked) > 3 and all(checked)


def test_a_padded_replay_keeps_its_bits_after_a_larger_tree_in_the_same_bucket(folder):
    """A tree of N < B nodes replays bucket B's graph after a 31-node tree filled B's columns: its N
    real rows are bitwise those of the same forward right after the capture (the pads are rewritten)."""
    from jetspec.core.interfaces import AttentionMeta
    from jetspec.core.tree import DraftTree

    def tree(n: int, seed: int) -> DraftTree:  # random parents, each before its child; distinct tokens
        g = torch.Generator().manual_seed(seed)
        parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
        return DraftTree.from_parents((torch.randperm(90, generator=g)[:n] + 1).tolist(), parents)

    def forward(p, cache, t: DraftTree, prefix: int) -> torch.Tensor:
        cache.begin(p.target.pending_for(t.size, cache))
        out = p.target.forward(t.tokens.cuda(), AttentionMeta.for_tree(t, prefix, "cuda"), cache).logits.clone()
        cache.commit([])
        return out

    small, big = tree(20, 1), tree(31, 2)  # both in bucket 32; big is a deeper, wider tree
    prompt = torch.randint(1, 90, (8,), generator=torch.Generator().manual_seed(0)).cuda()  # bucket 8: columns 8.. untouched
    outs = []
    for after_big in (False, True):
        p = pipe(folder, "paged", True)
        cache = p.new_cache(256)
        cache.begin(8)
        p.target.forward(prompt, AttentionMeta.for_chain(8, 0, "cuda"), cache)  # captures every bucket
        cache.commit(range(8))
        if after_big:
            forward(p, cache, big, 8)
        outs.append(forward(p, cache, small, 8))
        assert cache.pending == 0 and p.target.graphs.graphs  # replayed, not eager
    assert torch.equal(outs[0], outs[1])


def test_a_round_reserves_its_padded_bucket_once(folder):
    """The pipeline reserves each forward's graph bucket (`pending_for`), the prompt's too: the graphed
    forward begins nothing more."""
    from jetspec.caches.paged import PagedKVCache

    p = pipe(folder, "paged", True, budget=20)
    prompt = [5, 6, 7, 5, 6, 7, 5]
    p.generate(prompt)  # captures
    begin, counts = PagedKVCache.begin, []

    def counted(cache, n):
        counts.append(n)
        begin(cache, n)

    with patch.object(PagedKVCache, "begin", counted):
        result = p.generate(prompt)
    assert len(counts) == result.stats.rounds + 1  # the prompt's, then one per round
    assert all(n in p.target.graphs.buckets for n in counts)  # 8 for the prompt's 6 tokens
