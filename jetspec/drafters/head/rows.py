"""Which rows of the data a head trains on and which it is validated on, and in what order
(the data cursor of an accumulating run: a step number names its batch)."""

from __future__ import annotations

import functools

import torch

from .data import TokenData


def _usable_rows(data: TokenData, max_len: int) -> list[int]:
    """Rows with at least 2 answer tokens inside `max_len` (an anchor needs a next token)."""
    lengths = (data.offsets[1:] - data.offsets[:-1]).clamp(max=max_len)
    return [s for s in range(len(data)) if int(data.prompt_lens[s]) + 2 <= int(lengths[s])]


def split_rows(data: TokenData, max_len: int, eval_rows: int) -> tuple[list[int], list[int]]:
    """(training rows, validation rows), at most a fifth held out. A corpus holds out whole questions:
    those of the `eval_rows` smallest question hashes (a choice that does not depend on the order
    of the rows) are validated on their greedy answer (the target's argmax is what greedy
    verification accepts) and none of their answers is trained on. Other data holds out its last rows."""
    usable = _usable_rows(data, max_len)
    if "question_hash" not in data.columns:
        n = min(eval_rows, len(usable) // 5)
        return usable[: len(usable) - n], usable[len(usable) - n :]
    qh, greedy = data.columns["question_hash"].tolist(), (data.columns["temperature"] == 0).tolist()
    first_greedy = {}
    for s in usable:
        if greedy[s]:
            first_greedy.setdefault(qh[s], s)
    held = sorted(first_greedy)[: min(eval_rows, len(set(qh[s] for s in usable)) // 5)]
    held_set = set(held)
    return [s for s in usable if qh[s] not in held_set], [first_greedy[h] for h in held]


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def rows_for_step(train_rows: list[int], batch_size: int, seed: int, step: int) -> list[int]:
    """The data cursor: step s takes positions s*Bt .. s*Bt+Bt-1 of the stream of epochs, each a
    seeded permutation of the training rows (every row once per epoch)."""
    n = len(train_rows)
    return [train_rows[_epoch_order(seed, p // n, n)[p % n]] for p in range(step * batch_size, (step + 1) * batch_size)]
