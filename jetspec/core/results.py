"""What a generation returns: its tokens and text, and its statistics (rounds, τ, accepted drafts
by depth, seconds per phase of the decode loop); `first_difference`, where two outputs part."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence


# a round's phases, in order; `accept` is the host's acceptance work (the verifier's launches or host
# walk, the checks, queued next drafts), `wait` the host blocked on the round's read-back from the device
# (`Readback.waited`: what the GPU still had to do when the host got there; 0 on the CPU)
PHASES = ("prefill", "draft", "build", "verify", "accept", "wait", "commit")


@dataclass
class GenerationStats:
    rounds: int = 0
    new_tokens: int = 0
    accepted_drafts: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in PHASES})
    accepted_by_depth: list[int] = field(default_factory=list)  # [d] rounds that committed >= d+1 drafts
    tree_nodes: int = 0  # draft nodes verified, summed over rounds

    def record_round(self, committed: int, accepted: int, nodes: int) -> None:
        """One round: `committed` tokens kept (drafts + bonus, after any cut), `accepted` drafts the
        verifier took (a round cut by max_new_tokens or a stop token keeps fewer), `nodes` verified."""
        kept = min(accepted, committed)
        self.rounds += 1
        self.new_tokens += committed
        self.accepted_drafts += kept
        self.tree_nodes += nodes
        self.accepted_by_depth.extend([0] * (kept - len(self.accepted_by_depth)))
        for d in range(kept):
            self.accepted_by_depth[d] += 1

    @property
    def tau(self) -> float:
        """Tokens committed per round (accepted drafts + bonus), averaged over rounds."""
        return self.new_tokens / self.rounds if self.rounds else 0.0

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def tokens_per_second(self) -> float:
        decode = self.total_seconds - self.seconds["prefill"]
        return self.new_tokens / decode if decode > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "new_tokens": self.new_tokens,
            "tau": self.tau,
            "tokens_per_s": self.tokens_per_second,
            "seconds": dict(self.seconds),
            "accepted_by_depth": list(self.accepted_by_depth),
            "tree_nodes": self.tree_nodes,
        }


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where token sequences `a` and `b` differ (a shorter one ends there); None
    if they are equal. Where a speculative output parts from plain decoding."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@dataclass
class GenerationResult:
    tokens: list[int]  # generated token ids (the stop token included, if one was hit)
    text: str | None  # decoded generated text, where a tokenizer exists
    stats: GenerationStats
    prompt_tokens: list[int]
    stopped: str  # "eos", "stop_token", "length"
