"""Telling a numerical near-tie from a bug when a speculative output differs from plain decoding.

At the first position p where the two outputs differ, the target's next-token logits are
recomputed for the plain prefix (prompt + plain[:p]) in one fresh forward. A bf16 near-tie shows
as a small gap between the logits of the two tokens that were chosen (the recomputation is itself
a third reduction order, so either token may come out on top, or a third token may edge in
between); a bug shows as a large gap.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..core.interfaces import AttentionMeta
from ..core.pipeline import Pipeline
from ..core.results import first_difference


@torch.no_grad()
def chain_logits(pipe: Pipeline, tokens: Sequence[int]) -> torch.Tensor:
    """Next-token logits [n, V] float32 after each prefix of `tokens`, one forward, fresh cache."""
    n = len(tokens)
    device = pipe.target.info.device
    cache = pipe.new_cache(n)
    cache.begin(n)
    out = pipe.target.forward(torch.tensor(list(tokens), device=device), AttentionMeta.for_chain(n, 0, device), cache)
    return out.logits.float()


def describe_mismatch(
    pipe: Pipeline, prompt: Sequence[int], plain: Sequence[int], spec: Sequence[int], near_tie_gap: float
) -> dict[str, Any] | None:
    p = first_difference(plain, spec)
    if p is None:
        return None
    logits = chain_logits(pipe, list(prompt) + list(plain[:p]))[-1]  # [V]
    top = torch.topk(logits, 2)
    top_tokens, top_logits = top.indices.tolist(), top.values.tolist()
    spec_token = int(spec[p]) if p < len(spec) else None
    plain_token = int(plain[p]) if p < len(plain) else None
    gap = top_logits[0] - top_logits[1]
    chosen = [t for t in (plain_token, spec_token) if t is not None]
    choice_gap = abs(float(logits[chosen[0]] - logits[chosen[1]])) if len(chosen) == 2 else None
    return {
        "position": p,  # index into the generated tokens
        "plain_token": plain_token,
        "spec_token": spec_token,
        "top2_tokens": top_tokens,
        "top2_logits": top_logits,
        "top2_gap": gap,
        "plain_logit": float(logits[plain_token]) if plain_token is not None else None,
        "spec_logit": float(logits[spec_token]) if spec_token is not None else None,
        "choice_gap": choice_gap,  # |logit(plain token) - logit(spec token)| at the plain prefix
        "near_tie": choice_gap is not None and choice_gap <= near_tie_gap,
    }
