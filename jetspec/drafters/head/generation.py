"""Batched completion by the frozen target (a Hugging Face causal LM), greedy or sampled.

The decode engine runs one sequence at a time; a training corpus needs tens of thousands of
answers, so this is the dense-KV batched path of `transformers` `generate` with left padding.
Prompts are taken in a seeded random order and sorted by length within groups of 8 batches
(less padding, and no length bias when a time limit stops it early, after a whole batch).
Sampling draws from the target's own distribution at `temperature` (no top-k, top-p 1): what
the target would answer, not a truncated variant of it.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def complete(
    model: Any,
    prompts: Sequence[Sequence[int]],
    eos_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
    batch_size: int = 64,
    temperature: float = 0.0,
    time_limit_s: float | None = None,
    seed: int = 0,
    progress: bool = True,
    desc: str = "generate",
) -> list[list[int] | None]:
    """One completion per prompt, in the prompts' order: the new tokens up to and including the
    first EOS (a completion that does not end in an EOS hit `max_new_tokens`); None for prompts not
    reached before `time_limit_s`. `temperature` 0: greedy; else sampled, seeded by `seed`."""
    device = next(model.parameters()).device
    shuffled = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    group = 8 * batch_size
    order = [i for g in range(0, len(shuffled), group) for i in sorted(shuffled[g : g + group], key=lambda i: len(prompts[i]))]
    out: list[list[int] | None] = [None] * len(prompts)
    eos = sorted(set(int(e) for e in eos_ids))
    sampling = dict(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0) if temperature > 0 else \
        dict(do_sample=False, temperature=None, top_k=None, top_p=None)  # fmt: skip
    if temperature > 0:
        torch.manual_seed(seed)  # generate() samples from the global generator
    start = time.monotonic()
    bar = tqdm(total=len(order), desc=desc, unit="seq", disable=not progress, mininterval=5)
    for b in range(0, len(order), batch_size):
        index = order[b : b + batch_size]
        batch = [list(prompts[i]) for i in index]
        width = max(map(len, batch))
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch], device=device)  # [b, width] left-padded
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)  # [b, width]
        gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens, eos_token_id=eos,
                             pad_token_id=pad_id, **sampling)[:, width:].tolist()  # [b, <= max_new_tokens]  # fmt: skip
        for i, g in zip(index, gen):
            end = next((k + 1 for k, t in enumerate(g) if t in eos), len(g))
            out[i] = g[:end]
        bar.update(len(batch))
        if time_limit_s is not None and time.monotonic() - start > time_limit_s:
            break
    bar.close()
    return out
