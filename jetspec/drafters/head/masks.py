"""Which keys each head input may read: bool masks [Bt, M, C + M] (C context keys, M head inputs).

Training and drafting build their masks here, so they cannot drift apart.

Block (training, and the one-forward draft): anchor m opens block m = inputs m*B .. m*B + B - 1,
    input (m, d) sees context key t      iff t < anchor_m           (the anchor's own hidden is unknown)
    input (m, d) sees block input (m, e) iff causal: e <= d;  bidirectional: always
    and never another block.
Tree (rescoring, EAGLE drafting): the context is the whole committed prefix, and a tree input sees
    the tree inputs that are its ancestors-or-self: `core.tree.with_prefix(ancestors, context_len)`.
"""

from __future__ import annotations

import torch


def block_mask(anchors: torch.Tensor, block_size: int, context_len: int, causal: bool) -> torch.Tensor:
    """anchors [Bt, A] int64 (the anchor's position = number of context tokens it sees)
    -> [Bt, A*B, context_len + A*B] bool."""
    bt, a = anchors.shape
    b = block_size
    dev = anchors.device
    t = torch.arange(context_len, device=dev)
    ctx = (t[None, None, :] < anchors[:, :, None])  # [Bt, A, C]
    ctx = ctx[:, :, None, :].expand(bt, a, b, context_len).reshape(bt, a * b, context_len)
    i = torch.arange(a * b, device=dev)
    block, slot = i // b, i % b  # [A*B] each: input i is slot i % b of block i // b
    same_block = block[:, None] == block[None, :]  # [A*B, A*B]
    blocks = same_block & (slot[None, :] <= slot[:, None]) if causal else same_block
    return torch.cat([ctx, blocks[None].expand(bt, -1, -1)], dim=2)


def rescore_ancestors(tree_ancestor: torch.Tensor, queried: torch.Tensor) -> torch.Tensor:
    """Inputs [N tree nodes ; one MASK query per queried node]: node i sees its ancestors-or-self;
    the MASK query of node i (one depth below i) sees i's ancestors-or-self and itself.
    tree_ancestor [N, N] bool, queried [Q] int64 node ids -> [N + Q, N + Q] bool."""
    n, q = tree_ancestor.shape[0], queried.numel()
    top = torch.cat([tree_ancestor, torch.zeros(n, q, dtype=torch.bool, device=tree_ancestor.device)], dim=1)
    bottom = torch.cat([tree_ancestor[queried], torch.eye(q, dtype=torch.bool, device=tree_ancestor.device)], dim=1)
    return torch.cat([top, bottom], dim=0)
