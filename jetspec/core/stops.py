"""Stop tokens: which token ids end a generation, and where a round's new tokens are cut. One
home for both engines (`pipeline.py` one sequence at a time, `batch_engine.py` batched)."""

from __future__ import annotations

from typing import Sequence

from .errors import InputError
from .records import TargetInfo


def stop_set(info: TargetInfo, ids: Sequence[int]) -> set[int]:
    """The target's EOS ids and the caller's stop ids, each a token of the target (else a one-line
    InputError naming it)."""
    bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < info.vocab_size]
    if bad:
        raise InputError(f"stop token id {bad[0]!r} is not a token of this target; ids must be integers in [0, {info.vocab_size})")
    return set(info.eos_token_ids) | set(ids)


def cut_at_stop(new: list[int], stops: set[int], info: TargetInfo) -> tuple[list[int], str]:
    """`new` up to and including its first stop token, and why it stopped: "eos", "stop_token", or
    "length" where none is in it."""
    for j, tok in enumerate(new):
        if tok in stops:
            return new[: j + 1], "eos" if tok in info.eos_token_ids else "stop_token"
    return new, "length"
