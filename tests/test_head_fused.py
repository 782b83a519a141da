"""A frozen head (`DraftHead.freeze`, what every head drafter runs) computes what its modules compute.

The reference is the unfrozen head, as training runs it: a matmul per projection, RoPE of q and k
apart, K/V repeated to every query head. The frozen head stacks q ; k ; v and gate ; up into one
matmul each, ropes q and k in one pass and folds the query heads onto their KV head's rows; the
log-probs through the target's LM head must agree to float32 rounding, for the one-forward draft
of both parallel kinds, for rescore rows (tree nodes and one MASK query per node) and for the
context K/V. And one draft dispatches at most a pinned number of torch operators: a regression
guard against the kernels that the fused path removed (bench/head_ops.py counts them by name)."""

import copy

import pytest
import torch

from bench.head_ops import Ops
from head_fixtures import HeadTarget, observed, tiny_llama
from jetspec.core.tree import DraftTree, with_prefix
from jetspec.drafters.head import HeadOptions, jetspec_drafter
from jetspec.drafters.head.graphs import APPEND_ROWS
from jetspec.drafters.head.masks import block_mask, rescore_ancestors
from jetspec.drafters.head.model import DraftHead, HeadConfig

PROMPT = [5, 17, 33, 8, 61, 12, 40, 9, 22, 71]
B = 6
# operators (not views) dispatched by one draft_block / write_context of this 2-layer float32 head:
# 89 / 30 since the fused path (2026-12-05), 115 / 36 before it (separate projections, RoPE of q and k
# apart, K/V repeated to every query head)
DRAFT_OPS, APPEND_OPS = 89, 30


@pytest.fixture(scope="module")
def target():
    return HeadTarget(tiny_llama())


def reference_and_frozen(kind: str) -> tuple[DraftHead, DraftHead]:
    """A random 2-layer head of 6 query heads over 2 KV heads (G = 3) on the tiny target's hidden
    size, with norm weights away from 1: (the unfrozen head, a frozen copy of it)."""
    torch.manual_seed(7)
    config = HeadConfig(kind=kind, hidden_size=64, num_heads=6, num_kv_heads=2, head_dim=16, intermediate_size=96,
                        num_layers=2, target_layers=(1, 2), block_size=B)  # fmt: skip
    head = DraftHead(config).eval()
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.3)
    return head, copy.deepcopy(head).freeze()


def log_probs(target: HeadTarget, head: DraftHead, x, pos, context, mask) -> torch.Tensor:
    """-> [M, V] float32: log_softmax(LM_head(head output)) of each input."""
    return torch.log_softmax(target.lm_head(head(x[None], pos[None], context, mask[None])[0]), dim=-1)


@pytest.mark.parametrize("kind", ["causal", "dflash"])
def test_the_frozen_head_gives_the_log_probs_of_its_modules(target, kind):
    reference, frozen = reference_and_frozen(kind)
    assert frozen.frozen and not reference.frozen and not any(p.requires_grad for p in frozen.parameters())
    hidden = target.hidden(PROMPT[:-1], reference.config.target_layers)[None]  # [1, a, k, H]
    a = hidden.shape[1]  # the anchor's position = context length
    contexts = [h.context_kv(h.fuse_context(hidden), torch.arange(a)[None]) for h in (reference, frozen)]
    for (k_ref, v_ref), (k, v) in zip(*contexts):
        torch.testing.assert_close(k, k_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-5)

    # the one-forward draft: [anchor, MASK x (B - 1)] at positions a .. a + B - 1
    block = torch.cat([target.embed(torch.tensor(PROMPT[-1:])), reference.mask_embedding.expand(B - 1, -1)])  # [B, H]
    draft = block, a + torch.arange(B), block_mask(torch.tensor([[a]]), B, a, reference.config.causal)[0]
    # rescore rows: 5 tree nodes (root = anchor) and a MASK query below each of 4 of them, tree-causal
    tree = DraftTree.from_parents([PROMPT[-1], 7, 30, 8, 44], [-1, 0, 1, 0, 3])
    queried = torch.tensor([0, 1, 3, 4])
    rows = torch.cat([target.embed(tree.tokens), reference.mask_embedding.expand(queried.numel(), -1)])  # [N + Q, H]
    rescore = rows, a + torch.cat([tree.depths, tree.depths[queried] + 1]), with_prefix(rescore_ancestors(tree.ancestor_mask(), queried), a)
    for x, pos, mask in (draft, rescore):
        expected = log_probs(target, reference, x, pos, contexts[0], mask)  # [M, V]
        torch.testing.assert_close(log_probs(target, frozen, x, pos, contexts[1], mask), expected, rtol=0, atol=1e-5)


def test_a_frozen_head_keeps_its_state_dict_and_loads_through_its_fused_weights(target):
    """The stacked weights are the modules' own (views), so a checkpoint loaded into a frozen head
    changes what it computes, and the state dict is the one a checkpoint holds."""
    one, frozen = reference_and_frozen("causal")
    other = DraftHead(one.config)
    assert frozen.state_dict().keys() == one.state_dict().keys()
    frozen.load_state_dict(other.state_dict())
    hidden = target.hidden(PROMPT[:-1], one.config.target_layers)[None]
    x, pos, mask = torch.randn(B, 64), torch.arange(9, 9 + B), block_mask(torch.tensor([[9]]), B, 9, True)[0]
    outputs = [log_probs(target, h, x, pos, h.context_kv(h.fuse_context(hidden), torch.arange(9)[None]), mask) for h in (other, frozen)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5)


def test_the_drafter_drafts_the_top_k_of_the_reference_head(target):
    drafter = jetspec_drafter(HeadOptions(checkpoint="random", layers=2, block_size=B, top_k=5, seed=3), target)
    reference = DraftHead(drafter.head.config)
    reference.load_state_dict(drafter.head.state_dict())
    state = observed(drafter, target, PROMPT)
    a = drafter.cache.length
    with torch.no_grad():
        logp, tokens = drafter.draft_block(torch.tensor(PROMPT[-1:]), torch.tensor([a]), drafter.cache.buffers(), B - 1)
        hidden = target.hidden(state.tokens[:-1], reference.config.target_layers)[None]
        context = reference.context_kv(reference.fuse_context(hidden), torch.arange(a)[None])
        x = torch.cat([target.embed(torch.tensor(PROMPT[-1:])), reference.mask_embedding.expand(B - 1, -1)])
        top = log_probs(target, reference, x, a + torch.arange(B), context, block_mask(torch.tensor([[a]]), B, a, True)[0])[1:].topk(5)
    assert torch.equal(tokens, top.indices)
    torch.testing.assert_close(logp, top.values, rtol=0, atol=1e-5)


def test_one_draft_and_one_append_dispatch_at_most_the_pinned_operators(target):
    drafter = jetspec_drafter(HeadOptions(checkpoint="random", layers=2, block_size=B, seed=3, cuda_graphs=False), target)
    observed(drafter, target, PROMPT)
    root, anchor = torch.tensor(PROMPT[-1:]), torch.tensor([drafter.cache.length])
    rows = target.hidden(PROMPT[:-1], drafter.hidden_layers)[:1].expand(APPEND_ROWS, -1, -1)  # [R, k, H]
    drafter.cache.reserve(drafter.cache.length + APPEND_ROWS)
    counted = {}
    with torch.no_grad():
        for name, step in (("draft", lambda: drafter.draft_block(root, anchor, drafter.cache.buffers(), B - 1)),
                           ("append", lambda: drafter.write_context(rows, anchor))):  # fmt: skip
            step()  # warm
            with Ops() as ops:
                step()
            counted[name] = ops.summary()
    assert counted["draft"]["compute"] <= DRAFT_OPS, counted["draft"]["per_op"]
    assert counted["append"]["compute"] <= APPEND_OPS, counted["append"]["per_op"]
