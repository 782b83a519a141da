"""Random attention problems for kernel tests: a KV cache with a committed prefix (scattered
over pages by earlier commits) and a draft tree whose K/V is pending, plus the queries."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from jetspec.caches.dense import DenseKVCache
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.interfaces import AttentionMeta, KVCache, TargetInfo
from jetspec.core.tree import DraftTree
from jetspec.kernels.reference import tree_attention

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def target_info(kv_heads: int, head_dim: int, dtype: torch.dtype, layers: int = 1) -> TargetInfo:
    return TargetInfo(
        name="tiny", architecture="llama", vocab_size=32, hidden_size=kv_heads * head_dim, num_layers=layers,
        num_kv_heads=kv_heads, head_dim=head_dim, max_positions=1 << 20, dtype=dtype, device=DEVICE,
    )


def random_tree(parents_draw: list[int]) -> DraftTree:
    """parents_draw[i - 1] in [0, i): node i's parent; `from_parents` re-lays it in DFS pre-order."""
    n = len(parents_draw) + 1
    return DraftTree.from_parents(list(range(n)), [-1] + parents_draw)


@st.composite
def trees(draw, max_nodes: int) -> DraftTree:
    n = draw(st.integers(1, max_nodes))
    if draw(st.booleans()):
        return DraftTree.chain(list(range(n)))  # prefill / decode
    return random_tree([draw(st.integers(0, i - 1)) for i in range(1, n)])


@dataclass
class Problem:
    q: torch.Tensor  # [N, Hq, D]
    cache: KVCache
    meta: AttentionMeta
    scale: float

    def reference(self) -> torch.Tensor:
        """fp32 reference output [N, Hq, D], from the cache's logical-order read."""
        k, v = self.cache.read(0)
        return tree_attention(self.q.float(), k.float(), v.float(), self.meta, self.scale)


def build_problem(
    tree: DraftTree, prefix: int, kv_heads: int, group: int, head_dim: int, dtype: torch.dtype,
    page_size: int | None, commit: str = "gather", seed: int = 0, extra_pages: int = 0,
) -> Problem:
    """`page_size` None = dense cache. The prefix is committed by keeping a random `prefix` of
    2 * prefix written tokens, so remap mode leaves it scattered with holes."""
    g = torch.Generator().manual_seed(seed)
    n = tree.size
    info = target_info(kv_heads, head_dim, dtype)
    capacity = 2 * prefix + n
    if page_size is None:
        cache: KVCache = DenseKVCache(info, capacity)
    else:
        pages = -(-capacity // page_size) + extra_pages
        cache = PagedKVCache(info, capacity, PagedCacheOptions(page_size=page_size, commit=commit, max_pages=pages))

    def kv(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (m, kv_heads, head_dim)
        return tuple(torch.randn(shape, generator=g).to(DEVICE, dtype) for _ in range(2))

    if prefix:
        cache.begin(2 * prefix)
        cache.write(0, *kv(2 * prefix))
        cache.commit(sorted(torch.randperm(2 * prefix, generator=g)[:prefix].tolist()))
    meta = AttentionMeta.for_tree(tree, prefix, DEVICE)
    cache.begin(n)
    cache.write(0, *kv(n))
    q = torch.randn(n, kv_heads * group, head_dim, generator=g).to(DEVICE, dtype)
    return Problem(q=q, cache=cache, meta=meta, scale=head_dim**-0.5)


TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
