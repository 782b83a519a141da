"""Head drafters on a tiny random target: what `propose` returns, the head's own context cache, and
parent-conditioned rescoring."""

import pytest
import torch

from head_fixtures import HeadTarget, assert_drafts_alike, observed, tiny_llama
from jetspec.core.errors import ConfigError, InputError
from jetspec.core.interfaces import DecodeState
from jetspec.core.proposal import DepthMarginals
from jetspec.drafters.eagle import eagle_drafter
from jetspec.drafters.head import DFlashOptions, EagleOptions, HeadOptions, dflash_drafter, jetspec_drafter
from jetspec.drafters.head.model import DraftHead, HeadConfig

PROMPT = [5, 17, 33, 8, 61, 12, 40, 9]


@pytest.fixture(scope="module")
def target():
    return HeadTarget(tiny_llama())


def test_head_forward_and_context_shapes():
    head = DraftHead(HeadConfig.for_target("causal", 64, 2, 16, 4, layers=2, target_layers=(1, 2), block_size=6))
    fused = head.fuse_context(torch.randn(3, 7, 2, 64))  # [Bt, T, k, H] -> [Bt, T, H]
    assert fused.shape == (3, 7, 64)
    ctx = head.context_kv(fused, torch.arange(7).expand(3, 7))
    assert len(ctx) == 2 and all(k.shape == v.shape == (3, 7, 2, 16) for k, v in ctx)
    out = head(torch.randn(3, 6, 64), torch.arange(7, 13).expand(3, 6), ctx, torch.ones(3, 6, 13, dtype=torch.bool))
    assert out.shape == (3, 6, 64)


def test_a_smollm2_sized_head_is_small():
    """SmolLM2-135M: H=576, 3 KV heads of 64; a 2-layer head must stay tens of MB in float32."""
    with torch.device("meta"):
        head = DraftHead(HeadConfig.for_target("causal", 576, 3, 64, 30, layers=2))
    assert head.config.num_heads == 9 and head.config.target_layers == (1, 27)
    assert head.num_parameters() * 4 < 40e6


@pytest.mark.parametrize("make,options", [(jetspec_drafter, HeadOptions(checkpoint="random", top_k=5, block_size=6)),
                                          (dflash_drafter, DFlashOptions(checkpoint="random", top_k=5, block_size=6))])  # fmt: skip
def test_parallel_head_proposes_the_same_top_k_at_each_depth_whatever_the_path(target, make, options):
    drafter = make(options, target)
    state = observed(drafter, target, PROMPT)
    proposal = drafter.propose(state, budget=16)
    assert isinstance(proposal, DepthMarginals) and proposal.depth == 5  # depths 1 .. B-1
    for depth in range(5):
        kids = proposal.children((7,) * depth)
        assert len(kids) == 5 and kids == proposal.children((1,) * depth)
        logps = [lp for _, lp in kids]
        assert logps == sorted(logps, reverse=True) and max(logps) <= 0
    assert proposal.children((1,) * 5) == []


def test_observing_in_pieces_equals_observing_at_once(target):
    """The head's context cache after prefill + rounds equals one prefill of the same tokens."""
    a = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6), target)
    b = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6), target)
    observed(a, target, PROMPT)
    state = DecodeState(tokens=PROMPT[:3], prompt_len=3)
    b.reset(state)
    hidden = target.hidden(PROMPT[:-1], b.hidden_layers)
    b.observe(state, hidden[:2])
    for end in (3, 5, 7):  # two rounds that committed 3 and 2 tokens
        state.tokens = PROMPT[: end + 1]
        b.observe(state, hidden[state_len(b) : end])
    final = DecodeState(tokens=PROMPT, prompt_len=len(PROMPT))
    pa, pb = a.propose(final, 8), b.propose(final, 8)
    for depth in range(5):
        assert [t for t, _ in pa.children((0,) * depth)] == [t for t, _ in pb.children((0,) * depth)]
        assert torch.allclose(torch.tensor([lp for _, lp in pa.children((0,) * depth)]),
                              torch.tensor([lp for _, lp in pb.children((0,) * depth)]), atol=1e-5)  # fmt: skip


def state_len(drafter) -> int:
    return drafter.cache.length


def test_observe_out_of_step_is_an_input_error(target):
    drafter = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6), target)
    state = DecodeState(tokens=PROMPT, prompt_len=len(PROMPT))
    drafter.reset(state)
    with pytest.raises(InputError, match="out of step"):
        drafter.observe(state, target.hidden(PROMPT[:-2], drafter.hidden_layers))  # one hidden state short


def test_rescoring_conditions_children_on_their_actual_parent(target):
    options = HeadOptions(checkpoint="random", top_k=4, block_size=6, rescore=True, rescore_top_k=2)
    drafter = jetspec_drafter(options, target)
    state = observed(drafter, target, PROMPT)
    trie = drafter.propose(state, budget=12)
    plain = jetspec_drafter(options.model_copy(update={"rescore": False}), target)
    marginals = plain.propose(observed(plain, target, PROMPT), budget=12)
    # the root's MASK query sees exactly what slot 1 sees in the first pass: the same distribution
    first = dict(marginals.children(()))
    for token, logp in trie.children(()):
        if token in first:
            assert logp == pytest.approx(first[token], abs=1e-4)
    # deeper, children depend on the path: two siblings' children are scored differently
    (t1, _), (t2, _) = trie.children(())[:2]
    kids1, kids2 = dict(trie.children((t1,))), dict(trie.children((t2,)))
    assert kids1 and kids2
    shared = set(kids1) & set(kids2)
    assert any(abs(kids1[t] - kids2[t]) > 1e-4 for t in shared) or set(kids1) != set(kids2)


def test_each_rescoring_pass_conditions_the_children_the_pass_before_proposed(target):
    """rescore_passes = 2: the second candidate tree is grown from the first pass's trie, so a child the
    first pass proposed (a token of its own conditional top-k, not among the marginals' candidates) is a
    node of the second tree, and the final trie scores that node's children given it."""
    options = HeadOptions(checkpoint="random", top_k=2, block_size=6, rescore=True, rescore_top_k=3, rescore_passes=2)
    drafter = jetspec_drafter(options, target)
    trees = []
    real = drafter.rescore

    def recording(tree, a):
        trees.append(tree)
        return real(tree, a)

    drafter.rescore = recording
    trie = drafter.propose(observed(drafter, target, PROMPT), budget=8)
    assert len(trees) == 2
    paths = [set(), set()]
    for tree, seen in zip(trees, paths):
        tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
        at = [()]
        for i in range(1, tree.size):
            at.append(at[parents[i]] + (tokens[i],))
        seen.update(at)
    new = paths[1] - paths[0]  # nodes only the first pass's conditioned children could have made
    assert new
    assert any(trie.children(path) for path in new if len(path) < 5)


def test_rescoring_needs_a_causal_head(target):
    with pytest.raises(ConfigError, match="causal"):
        jetspec_drafter(HeadOptions(checkpoint="random", causal=False, rescore=True), target)
    with pytest.raises(ValueError, match="causal"):
        DFlashOptions(checkpoint="random", rescore=True)


def test_eagle_expands_the_best_nodes_one_depth_per_forward(target):
    drafter = eagle_drafter(EagleOptions(checkpoint="random", depth=3, top_k=3, frontier=2), target)
    state = observed(drafter, target, PROMPT)
    trie = drafter.propose(state, budget=16)
    root_kids = trie.children(())
    assert len(root_kids) == 3
    expanded_at_depth_1 = [t for t, _ in root_kids if trie.children((t,))]
    assert len(expanded_at_depth_1) >= 1
    # frontier of 2 per depth: at most 2 expanded paths at depths 1 and 2, none at depth 3
    paths = [(t,) for t, _ in root_kids]
    for depth in (1, 2, 3):
        expanded = [p for p in paths if trie.children(p)]
        assert len(expanded) <= 2 and (depth < 3 or not expanded)
        paths = [p + (t,) for p in expanded for t, _ in trie.children(p)]


def test_a_draft_over_the_whole_padded_buffer_equals_the_draft_over_the_exact_context(target):
    """What a CUDA graph computes (attention over the cache's whole buffer, keys >= the anchor
    masked) is the eager draft over the exact context: rows past `length` — zeros, or an earlier
    generation's K/V after a reset — get no weight."""
    drafter = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=5), target)
    drafter.cache = type(drafter.cache)(drafter.config.num_layers, drafter.config.num_kv_heads,
                                        drafter.config.head_dim, torch.float32, torch.device("cpu"), capacity=4)  # fmt: skip
    observed(drafter, target, PROMPT + PROMPT)  # grows 4 -> 16 rows
    observed(drafter, target, PROMPT)  # a shorter generation: rows 7..14 are stale
    assert drafter.cache.capacity == 16 and drafter.cache.length == len(PROMPT) - 1
    root, anchor = torch.tensor([PROMPT[-1]]), torch.tensor([drafter.cache.length])
    exact = drafter.draft_block(root, anchor, drafter.cache.context(), depths=5)
    padded = drafter.draft_block(root, anchor, drafter.cache.buffers(), depths=5)
    assert torch.equal(exact[1], padded[1])
    assert torch.allclose(exact[0], padded[0], atol=1e-5)


def test_a_parallel_head_drafts_only_as_deep_as_the_budget_reaches(target):
    drafter = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=3), target)
    state = observed(drafter, target, PROMPT)
    assert drafter.propose(state, budget=2).depth == 2  # a 2-node tree is at most 2 deep
    assert drafter.propose(state, budget=64).depth == 5  # B - 1


def test_lookup_puts_copied_continuations_and_the_heads_candidates_in_one_proposal(target):
    """With `lookup`, the continuation of an earlier occurrence of the current suffix is proposed
    beside the head's per-depth candidates (the head's random weights would never guess it)."""
    tokens = [5, 17, 33, 8, 61, 12, 40, 9, 5, 17]  # the suffix [5, 17] occurred before, followed by 33, 8, ...
    plain = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=3), target)
    merged = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=3, lookup=True), target)
    p_plain = plain.propose(observed(plain, target, tokens), budget=16)
    p_merged = merged.propose(observed(merged, target, tokens), budget=16)
    head_kids = {t for t, _ in p_plain.children(())}
    merged_kids = dict(p_merged.children(()))
    assert head_kids <= set(merged_kids) and 33 in merged_kids
    assert merged_kids[33] == 0.0  # the only continuation seen: log 1
    assert [t for t, _ in p_merged.children((33,))][0] == 8  # the copy goes on
    logps = [lp for _, lp in p_merged.children(())]
    assert logps == sorted(logps, reverse=True)


def test_a_padded_context_append_writes_the_committed_rows_exactly(target):
    """What the append graph does — write_context over a fixed number of rows, the committed ones
    first, junk after — leaves the cache equal to an exact append: the rows past `length` are
    written but only ever read masked, and they stay finite."""
    exact = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6), target)
    padded = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6), target)
    observed(exact, target, PROMPT)
    observed(padded, target, PROMPT)
    hidden = target.hidden(PROMPT + [3, 77, 21], exact.hidden_layers)[len(PROMPT) - 1 :]  # [4, k, H]: old root + 3 accepted
    exact.observe(DecodeState(tokens=PROMPT + [3, 77, 21, 5], prompt_len=8), hidden)
    rows = torch.cat([hidden, 1e3 * torch.randn(5, *hidden.shape[1:])])  # 4 committed rows, 5 of junk
    padded.cache.reserve(padded.cache.length + rows.shape[0])
    padded.write_context(rows, torch.tensor([padded.cache.length]))
    padded.cache.length += 4
    assert padded.cache.length == exact.cache.length
    for (ke, ve), (kp, vp) in zip(exact.cache.context(), padded.cache.context()):
        assert torch.allclose(ke, kp, atol=1e-5) and torch.allclose(ve, vp, atol=1e-5)
    assert all(torch.isfinite(k).all() and torch.isfinite(v).all() for k, v in padded.cache.buffers())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU; this machine has none")
def test_a_replayed_draft_equals_the_eager_draft_across_rounds_and_buffer_growth(target):
    gpu = HeadTarget(tiny_llama(), device="cuda")
    eager = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=4, cuda_graphs=False), gpu)
    graphed = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=4), gpu)
    assert eager.graphs is None and graphed.graphs is not None
    assert_drafts_alike(eager, graphed, gpu)  # the context outgrows 8 and 16 rows on the way: new buffers, new graphs
    assert graphed.cache.capacity >= 32 and len(graphed.graphs.graphs) == 2  # draft + append; stale ones dropped
