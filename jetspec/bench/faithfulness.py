"""Rank-1 faithfulness: does the drafter's best branch read like the target's own continuation?

In a round that starts after committed tokens x, let b = (b_1..b_L) be the drafter's rank-1
branch (the first child at every level of its proposal) and g = (g_1..g_L) the target's own
greedy continuation of the same length (taken from plain decoding of the same prompt). The round
is *faithful* iff

    log p_target(b | x) >= log p_target(g | x) - nats          (nats = 5 by default)

i.e. the drafter's top guess is nearly as likely under the target as what the target would say.
A drafter opts in by declaring the capability `branch_scores` in its `Implementation.provides`
(its proposal's log-probs are then meant as scores of whole branches); `faithfulness = "all"` in
the bench config measures every drafter. Rounds are sampled evenly, `rounds` per prompt, and each
costs one extra target forward over the prefix + branch, outside the timed generation.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..core.interfaces import DecodeState, Proposal, observed_layers
from ..core.pipeline import Pipeline
from .mismatch import chain_logits


class ProposalRecorder:
    """Wraps a drafter; remembers (number of committed tokens, proposal) of every round."""

    def __init__(self, drafter: Any):
        self.inner = drafter
        self.hidden_layers = observed_layers(drafter)
        self.rounds: list[tuple[int, Proposal]] = []

    def reset(self, state: DecodeState) -> None:
        self.rounds = []
        self.inner.reset(state)

    def observe(self, state: DecodeState, hidden: torch.Tensor | None) -> None:
        self.inner.observe(state, hidden)

    def propose(self, state: DecodeState, budget: int) -> Proposal:
        proposal = self.inner.propose(state, budget)
        self.rounds.append((len(state.tokens), proposal))
        return proposal

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def rank1_branch(proposal: Proposal, max_len: int) -> list[int]:
    branch: list[int] = []
    while len(branch) < max_len:
        kids = proposal.children(tuple(branch))
        if not kids:
            break
        branch.append(int(kids[0][0]))
    return branch


def token_logprobs(pipe: Pipeline, tokens: Sequence[int]) -> torch.Tensor:
    """[n - 1] log p(tokens[i + 1] | tokens[: i + 1]) under the target."""
    logp = torch.log_softmax(chain_logits(pipe, tokens)[:-1], dim=-1)
    return logp.gather(1, torch.tensor(list(tokens[1:]), device=logp.device)[:, None])[:, 0].cpu()


def measure_faithfulness(
    pipe: Pipeline,
    prompt: Sequence[int],
    plain: Sequence[int],
    rounds: list[tuple[int, Proposal]],
    max_len: int,
    nats: float,
    samples: int,
    greedy_lp: Callable[[], torch.Tensor] | None = None,
) -> dict[str, Any] | None:
    """`greedy_lp`: a function returning `token_logprobs(pipe, prompt + plain)` (so that a bench
    computes it once per prompt for all its pipelines); None: computed here when first needed."""
    full = list(prompt) + list(plain)
    picked = [rounds[round(i * (len(rounds) - 1) / max(samples - 1, 1))] for i in range(min(samples, len(rounds)))]
    greedy_of = greedy_lp or (lambda: token_logprobs(pipe, full))
    greedy_lp_t = None
    gaps = []
    for committed, proposal in picked:
        branch = rank1_branch(proposal, min(max_len, len(full) - committed))
        if not branch:
            continue
        if greedy_lp_t is None:
            greedy_lp_t = greedy_of()  # [len(full) - 1]
        n = len(branch)
        greedy = float(greedy_lp_t[committed - 1 : committed - 1 + n].sum())
        drafted = float(token_logprobs(pipe, full[:committed] + branch)[committed - 1 :].sum())
        gaps.append(greedy - drafted)
    if not gaps:
        return None
    return {
        "rounds": len(gaps),
        "faithful": sum(g <= nats for g in gaps) / len(gaps),
        "mean_gap_nats": sum(gaps) / len(gaps),
    }
