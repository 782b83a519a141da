"""The head's attention masks: causal and bidirectional blocks differ exactly inside a block above
the diagonal, and what a head input sees decides what its output can depend on."""

import torch

from jetspec.core.tree import DraftTree
from jetspec.drafters.head.masks import block_mask, rescore_ancestors
from jetspec.drafters.head.model import DraftHead, HeadConfig

B = 4


def test_causal_and_bidirectional_blocks_differ_exactly_above_the_diagonal_of_each_block():
    anchors = torch.tensor([[3, 7, 5], [9, 2, 4]])  # [Bt=2, A=3]
    causal = block_mask(anchors, B, 10, causal=True)
    bidir = block_mask(anchors, B, 10, causal=False)
    assert causal.shape == bidir.shape == (2, 3 * B, 10 + 3 * B)
    q = torch.arange(3 * B)[:, None]
    k = torch.arange(3 * B)[None, :]
    expected_diff = (q // B == k // B) & (k % B > q % B)  # same block, later slot
    assert torch.equal(causal[:, :, :10], bidir[:, :, :10])
    assert torch.equal(causal[:, :, 10:] ^ bidir[:, :, 10:], expected_diff.expand(2, -1, -1))
    assert not (causal & ~bidir).any()  # causal only removes keys


def test_a_block_sees_exactly_the_context_before_its_anchor_and_no_other_block():
    anchors = torch.tensor([[3, 7]])
    m = block_mask(anchors, B, 10, causal=False)[0]  # [2B, 10 + 2B]
    for block, a in enumerate([3, 7]):
        rows = m[block * B : (block + 1) * B]
        assert rows[:, :a].all() and not rows[:, a:10].any()
        own = torch.zeros(2 * B, dtype=torch.bool)
        own[block * B : (block + 1) * B] = True
        assert torch.equal(rows[:, 10:], own.expand(B, -1))


def test_rescore_mask_query_sees_its_node_ancestors_and_itself():
    tree = DraftTree.from_parents([9, 1, 2, 3, 4], [-1, 0, 1, 0, 3])  # root -> (1 -> 2), (3 -> 4)
    queried = torch.tensor([0, 1, 3, 4])
    m = rescore_ancestors(tree.ancestor_mask(), queried)  # [5 + 4, 5 + 4]
    n = tree.size
    for q, node in enumerate(queried.tolist()):
        seen = set(torch.nonzero(m[n + q]).flatten().tolist())
        assert seen == {j for j in range(n) if tree.is_ancestor(j, node)} | {n + q}
    assert torch.equal(m[:n, :n], tree.ancestor_mask()) and not m[:n, n:].any()


def _head(kind: str) -> DraftHead:
    torch.manual_seed(0)
    return DraftHead(HeadConfig.for_target(kind, 64, 2, 16, 4, layers=2, block_size=B)).eval()


def _outputs(head: DraftHead, x: torch.Tensor) -> torch.Tensor:
    ctx = head.context_kv(torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(1)), torch.arange(5)[None])
    mask = block_mask(torch.tensor([[5]]), B, 5, head.config.causal)
    return head(x, torch.arange(5, 5 + B)[None], ctx, mask)[0]  # [B, H]


def test_in_a_causal_head_a_slot_depends_on_earlier_slots_only_and_in_dflash_on_all():
    x = torch.randn(1, B, 64)
    changed = x.clone()
    changed[0, 2] += 1.0  # perturb slot 2's input
    for kind in ("causal", "dflash"):
        head = _head(kind)
        moved = (_outputs(head, x) - _outputs(head, changed)).abs().amax(-1) > 1e-6  # [B]
        if kind == "causal":
            assert moved.tolist() == [False, False, True, True]
        else:
            assert moved.all()
