"""`accum_logp`: growing a `DraftTree` out of a `Proposal` under a node budget, the released
code's way. Used by the `accum-logp` scorer and by the head drafter's rescoring pass (which needs a
candidate tree before any scorer runs), so it lives here once.

A node's score is its cumulative log-prob: score(child) = score(parent) + logp(child | parent).
A max-heap holds the nodes not yet expanded; each pop of a node adds ALL its children (at most
`fanout`), best first, until the budget is spent. A node is added before its children, so the tree
is prefix-closed by construction.
"""

from __future__ import annotations

import heapq
import itertools

from .interfaces import Proposal
from .tree import DraftTree


def accum_logp(proposal: Proposal, root: int, budget: int, fanout: int | None = None) -> DraftTree:
    """Pop the best unexpanded node, add all of its (at most `fanout`) children; repeat."""
    nodes: list[tuple[int, int, float]] = []  # (token, parent node, score), parents first
    tick = itertools.count()
    heap: list[tuple[float, int, int, tuple[int, ...]]] = [(0.0, next(tick), 0, ())]  # (-score, tick, node, path)
    while heap and len(nodes) < budget:
        neg, _, node, path = heapq.heappop(heap)
        kids = proposal.children(path)[:fanout]
        for token, logp in kids[: budget - len(nodes)]:
            nodes.append((token, node, -neg + logp))
            heapq.heappush(heap, (-(-neg + logp), next(tick), len(nodes), path + (token,)))
    tokens = [root] + [t for t, _, _ in nodes]
    parents = [-1] + [p for _, p, _ in nodes]
    return DraftTree.from_parents(tokens, parents, [0.0] + [s for _, _, s in nodes])
