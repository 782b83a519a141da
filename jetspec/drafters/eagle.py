"""`eagle`: an EAGLE-style autoregressive draft head (the baseline the parallel head is measured
against). Same head module and context cache as `jetspec`, but no MASK slots: its inputs are real
tokens, and the output at a token predicts the NEXT token, so drafting costs one head forward per
depth and every child is conditioned on its actual parent (EAGLE-2's dynamic tree):

    depth 1..D:  run the head over the frontier's ancestor paths (root = anchor at position a,
                 a node of depth d at a + d, tree-causal mask), and for each frontier node n:
                 children(n) = top-k of log q(. | context, root, path to n)
                 next frontier = the `frontier` new nodes of best cumulative log-prob
    Proposal = TokenTrie of every expanded node's children; the scorer picks under budget.

Simplification (honest): each depth re-runs the head over the frontier's ancestor paths instead of
caching the tree K/V of earlier depths; the paths are short (<= D * frontier inputs).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.interfaces import DecodeState
from ..core.proposal import TokenTrie
from ..core.tree import with_prefix
from .head.context import ContextDrafter
from .head.drafter import build_head
from .head.options import EagleOptions


class EagleDrafter(ContextDrafter):
    def __init__(self, head, target: Any, options: EagleOptions):
        super().__init__(head, target)
        self.options = options
        self.use_graphs(options.cuda_graphs)  # the context append; the per-depth drafting stays eager

    def proposal_key(self, budget: int):
        """The expansion (depth x frontier x top-k) ignores the budget: one proposal for all."""
        return ()

    @torch.no_grad()
    def propose(self, state: DecodeState, budget: int) -> TokenTrie:
        a, dev = self.cache.length, self.cache._device
        tokens, parents, scores = [state.tokens[-1]], [-1], [0.0]  # the growing tree, node 0 = root
        paths: list[tuple[int, ...]] = [()]
        trie = TokenTrie()
        frontier = [0]
        for _ in range(self.options.depth):
            inputs = sorted({n for f in frontier for n in self._ancestors(f, parents)})  # parents before children
            index = {n: i for i, n in enumerate(inputs)}
            anc = torch.zeros(len(inputs), len(inputs), dtype=torch.bool)
            for i, n in enumerate(inputs):
                anc[i, [index[m] for m in self._ancestors(n, parents)]] = True
            x = self.embed(torch.tensor([tokens[n] for n in inputs]))  # [M, H]
            pos = a + torch.tensor([len(paths[n]) for n in inputs], device=dev)  # [M]
            h = self.head(x[None], pos[None], self.cache.context(), with_prefix(anc.to(dev), a)[None])[0]  # [M, H]
            logp = self.log_probs(h[[index[f] for f in frontier]])  # [F, V]
            vals, idx = logp.topk(self.options.top_k, dim=-1)  # [F, k]
            new = []
            for f, row_t, row_p in zip(frontier, idx.tolist(), vals.tolist()):
                for t, p in zip(row_t, row_p):
                    trie.add_edge(paths[f], t, p)
                    tokens.append(t), parents.append(f), scores.append(scores[f] + p), paths.append(paths[f] + (t,))
                    new.append(len(tokens) - 1)
            frontier = sorted(new, key=lambda n: -scores[n])[: self.options.frontier]
        return trie

    @staticmethod
    def _ancestors(n: int, parents: list[int]) -> list[int]:
        out = []
        while n != -1:
            out.append(n)
            n = parents[n]
        return out


def eagle_drafter(options: EagleOptions, target: Any) -> EagleDrafter:
    """Factory of the `eagle` drafter."""
    return EagleDrafter(build_head(options, target, "eagle"), target, options)
