"""τ without verification: a pipeline's drafter and scorer replayed against a known greedy output.

With the greedy verifier, a round accepts the longest tree path whose tokens are the target's own
argmax after each prefix, and then commits the target's next token. Once plain greedy decoding
has produced the continuation `ref` of a prompt, those argmaxes are known: they are `ref`. So

    L     = len(committed tokens)                  (the root is token L-1)
    path  = root, then while some child of the last node carries ref-token at position L + d - 1
            (d = depth of that child), that child
    new   = tokens of path[1:] + [the next ref token]        (cut at the end of ref)

is exactly the round `Pipeline.generate` would run, without the target's forward over the tree:
at a 256-node budget on a CPU that forward is almost all of the time. Head drafters read the
target's hidden states of committed tokens; here they come from ONE forward over prompt + ref
(rows of the same positions the pipeline would pass, root and accepted nodes), equal to the
pipeline's per-round rows up to float rounding (another GEMM shape), so a head's ranking can
differ from the pipeline's at a near-tie — tests/bench/test_replay.py checks equality on
random tiny models; on SmolLM2 in fp32 the two agree on the prompts where both were run
(bench/RESULTS.md).

Greedy verification only (sampling has no fixed continuation to replay).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ..core.interfaces import AttentionMeta, DecodeState, KeyedProposals, observed_layers
from ..core.pipeline import Pipeline
from ..core.results import GenerationStats


@torch.no_grad()
def context_hidden(pipe: Pipeline, tokens: Sequence[int], layers: tuple[int, ...]) -> torch.Tensor | None:
    """Hidden states [len(tokens), k, H] of `tokens` at the drafter's layers, one forward, fresh cache."""
    if not layers or not tokens:
        return None
    n, device = len(tokens), pipe.target.info.device
    cache = pipe.new_cache(n)
    cache.begin(n)
    out = pipe.target.forward(torch.tensor(list(tokens), device=device), AttentionMeta.for_chain(n, 0, device), cache, layers)
    return out.hidden


class SharedProposals:
    """A drafter whose proposals are shared with the other budgets of a replayed sweep.

    In a replay every round starts from a prefix of the same sequence (prompt + ref), so a
    proposal depends only on the committed length, and on the budget only as far as the drafter
    says: `drafter.proposal_key(budget)` is equal for budgets that get the same proposal (None:
    never share). A sweep's pipelines of one drafter configuration hold one `memo`, cleared per
    prompt; the drafter still observes every round, so a miss proposes from a consistent state.
    (Shared proposals equal unshared ones up to float rounding: the drafter's context rows were
    appended in other chunks.)"""

    def __init__(self, inner: Any, memo: dict):
        self.inner, self.memo = inner, memo
        self.hidden_layers = observed_layers(inner)

    def reset(self, state: DecodeState) -> None:
        self.inner.reset(state)

    def observe(self, state: DecodeState, hidden: torch.Tensor | None) -> None:
        self.inner.observe(state, hidden)

    def propose(self, state: DecodeState, budget: int) -> Any:
        key = self.inner.proposal_key(budget) if isinstance(self.inner, KeyedProposals) else None
        if key is None:
            return self.inner.propose(state, budget)
        key = (key, len(state.tokens))
        if key not in self.memo:
            self.memo[key] = self.inner.propose(state, budget)
        return self.memo[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@torch.no_grad()
def replay(
    pipe: Pipeline, prompt: Sequence[int], ref: Sequence[int], budget: int, hidden: torch.Tensor | None = None
) -> GenerationStats:
    """The statistics `pipe.generate(prompt)` (greedy) would report, given plain decoding's output
    `ref`. `hidden`: `context_hidden` of prompt + ref[:-1] at the drafter's layers, if already known."""
    drafter, clock = pipe.drafter, time.perf_counter
    seq = list(prompt) + list(ref)
    if hidden is None:
        hidden = context_hidden(pipe, seq[:-1], observed_layers(drafter))  # row i: token seq[i]
    rows = (lambda a, b: hidden[a:b]) if hidden is not None else (lambda a, b: None)
    state = DecodeState(tokens=list(prompt), prompt_len=len(prompt))
    stats = GenerationStats()
    drafter.reset(state)
    drafter.observe(state, rows(0, len(prompt) - 1))
    while len(state.tokens) < len(seq):
        root, n = state.tokens[-1], len(state.tokens)
        t0 = clock()
        proposal = pipe.propose(state, budget)
        t1 = clock()
        tree = pipe.build_tree(proposal, root, budget)  # checked as a live round's tree is
        t2 = clock()
        tokens = tree.tokens.tolist()
        path = [0]
        while n + len(path) - 1 < len(seq):  # the token after the deepest accepted node, if ref has one
            want = seq[n + len(path) - 1]
            nxt = next((c for c in tree.children(path[-1]) if tokens[c] == want), None)
            if nxt is None:
                break
            path.append(nxt)
        new = [tokens[i] for i in path[1:]] + seq[n + len(path) - 1 : n + len(path)]  # drafts + bonus
        new = new[: len(seq) - n]
        state.tokens.extend(new)
        if len(state.tokens) < len(seq):  # the pipeline stops observing once the output is complete
            drafter.observe(state, rows(n - 1, n - 1 + len(path)))
        stats.record_round(len(new), len(path) - 1, tree.budget)
        stats.seconds["draft"] += t1 - t0
        stats.seconds["build"] += t2 - t1
    return stats
