"""The exactness rule as a check: a target's logits for every node of a verified tree equal, bit
for bit (`torch.equal`), those of plain one-token steps along that node's path, starting from the
same committed KV cache. The decoder with `exact = true` passes it on any device; an attention
backend's position-invariant mode can be checked inside it.

    expected = plain_logits(target, cache, tree)           # [N, V], one step per node
    got = padded_tree_logits(target, cache, tree, pads)    # [N, V], one forward (+ pad rows)
    assert first_inexact_node(got, expected) is None

And in a batch (`BatchedTarget`): each packed row's logits, and the K/V it writes, equal those of
its own sequence's forward alone (`packed_and_alone`), which the rule above ties to plain steps.
"""

from __future__ import annotations

import copy

import torch

from ..core.interfaces import AttentionMeta, KVCache, Target
from ..core.tree import DraftTree


def paged_cache(target: Target, capacity: int, commit: str, page_order: list[int] | None = None) -> KVCache:
    """A paged KV cache whose pages are handed out in `page_order` (a permutation of its pool)."""
    from ..caches.paged import PagedCacheOptions, PagedKVCache

    cache = PagedKVCache(target.info, capacity, PagedCacheOptions(page_size=16, commit=commit))
    if page_order is not None:
        pages = cache.allocator.allocate(cache.num_pages)
        cache.allocator.release([pages[i] for i in reversed(page_order)])  # LIFO: page_order[0] first
    return cache


def step(target: Target, cache: KVCache, token: int) -> torch.Tensor:
    """One plain decoding step (the root-only tree of `token`), committed -> its logits [V]."""
    cache.begin(1)
    tokens = torch.tensor([token], device=target.info.device)
    meta = AttentionMeta.for_tree(DraftTree.root_only(token), cache.committed, target.info.device)
    out = target.forward(tokens, meta, cache)
    cache.commit([0])
    return out.logits[0].clone()


def plain_logits(target: Target, cache: KVCache, tree: DraftTree) -> torch.Tensor:
    """[N, V]: node i's logits from one-token steps along root -> i (a copy of the cache per node;
    `cache` itself is not changed)."""
    out = torch.empty(tree.size, target.info.vocab_size, device=target.info.device)
    children: list[list[int]] = [[] for _ in range(tree.size)]
    for i in range(1, tree.size):
        children[int(tree.parents[i])].append(i)
    stack = [(0, cache)]
    while stack:
        i, parent_cache = stack.pop()
        c = copy.deepcopy(parent_cache)  # steps below i must not reach i's siblings
        out[i] = step(target, c, int(tree.tokens[i]))
        stack.extend((child, c) for child in children[i])
    return out


def padded_tree_logits(target: Target, cache: KVCache, tree: DraftTree, pads: int = 0) -> torch.Tensor:
    """Verify `tree`, followed by `pads` single-node leaves at depth 0 (as CUDA-graph buckets pad),
    in one forward on a copy of `cache` -> the real nodes' logits [N, V]."""
    cache = copy.deepcopy(cache)
    t, n, dev = cache.committed, tree.size, target.info.device
    meta = AttentionMeta.for_tree(tree, t, dev)
    meta = AttentionMeta(t, torch.cat([meta.positions, torch.full((pads,), t, device=dev)]),
                         torch.cat([meta.subtree_sizes, torch.ones(pads, dtype=meta.subtree_sizes.dtype, device=dev)]))
    cache.begin(n + pads)
    tokens = torch.cat([tree.tokens, torch.zeros(pads, dtype=torch.int64)]).to(dev)
    return target.forward(tokens, meta, cache).logits[:n].clone()


def packed_and_alone(target: Target, caches: list[KVCache], metas: list[AttentionMeta], tokens: list[torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """A `BatchedTarget` given sequence s's tokens [N_s] with `metas[s]` over `caches[s]`
    (committed, nothing pending): each sequence's `forward` alone on a copy of its cache, then ONE
    `forward_batch` of all of them on the caches themselves -> (packed logits [R, V], alone
    [R, V], the sequences whose K/V — committed and pending, every layer — differ from the
    copy's afterwards)."""
    from ..core.batch import BatchMeta

    alone, copies = [], []
    for cache, meta, toks in zip(caches, metas, tokens):
        c = copy.deepcopy(cache)
        c.begin(toks.numel())
        alone.append(target.forward(toks, meta, c).logits)
        copies.append(c)
    for cache, toks in zip(caches, tokens):
        cache.begin(toks.numel())
    packed = target.forward_batch(torch.cat(tokens), BatchMeta.pack(metas), caches).logits  # [R, V]
    differ = [s for s, (c, mine) in enumerate(zip(copies, caches))
              if any(not all(map(torch.equal, c.read(l), mine.read(l))) for l in range(target.info.num_layers))]
    return packed, torch.cat(alone), differ


def first_inexact_node(got: torch.Tensor, expected: torch.Tensor, against: str = "plain decoding") -> str | None:
    """None when every row is bitwise equal; else a line naming the first differing node."""
    differ = [i for i in range(got.shape[0]) if not torch.equal(got[i], expected[i])]
    if not differ:
        return None
    worst = (got.float() - expected.float()).abs().max().item()
    return f"{len(differ)} of {got.shape[0]} nodes differ from {against}, first node {differ[0]}, max |diff| {worst:.3g}"


def random_decoder(cfg, device: torch.device | str, dtype: torch.dtype, exact: bool, cuda_graphs: bool = False,
                   seed: int = 0, split_keys: int = 512):
    """Our decoder with random weights made on `device` (linear/embedding ~ N(0, 0.02), norms ~ 1,
    biases ~ N(0, 0.02)), triton attention (its position-invariant mode when `exact`)."""
    from ..core.interfaces import TargetInfo
    from ..kernels.triton_backend import TritonAttention, TritonAttentionOptions
    from ..targets.decoder.model import DecoderModel, DecoderTarget

    device = torch.device(device)
    with torch.device("meta"):
        model = DecoderModel(cfg)
    model = model.to(dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, device=device, dtype=torch.float32)
            p.copy_(1 + 0.1 * noise if name.endswith("norm.weight") else 0.02 * noise)
    info = TargetInfo(name=f"random-{cfg.architecture}", architecture=cfg.architecture, vocab_size=cfg.vocab_size,
                      hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads,
                      head_dim=cfg.head_dim, max_positions=cfg.max_positions, dtype=dtype, device=device, exact=exact)
    attention = TritonAttention(TritonAttentionOptions(split_keys=split_keys), invariant=exact)
    return DecoderTarget(model, attention, info, cuda_graphs=cuda_graphs)
