"""`ngram` drafter (prompt lookup): training-free, proposes what followed earlier occurrences of
the current suffix in the prompt and the generated text.

For n = n_max .. n_min, look up the last n committed tokens (the root included) among earlier
n-grams; take the continuations (up to min(`max_depth`, budget) tokens) after the `max_matches` most recent
occurrences of the longest n that matches, and merge them into a trie whose edge log-probs are
the empirical conditionals log(count(path + t) / count(path)). Frequent continuations thus score
higher, and the tree scorer decides how much of the trie to verify.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..core.interfaces import DecodeState
from ..core.proposal import EmptyProposal, TokenTrie


class NgramOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_max: int = Field(4, ge=1, le=16, description="longest suffix n-gram to match")
    n_min: int = Field(1, ge=1, le=16, description="shortest suffix n-gram to match")
    max_matches: int = Field(8, ge=1, le=256, description="most recent occurrences merged into the trie")
    max_depth: int = Field(16, ge=1, le=1024, description="longest continuation proposed")

    @model_validator(mode="after")
    def _order(self) -> "NgramOptions":
        if self.n_min > self.n_max:
            raise ValueError(f"n_min ({self.n_min}) must not exceed n_max ({self.n_max})")
        return self


class NgramDrafter:
    hidden_layers: tuple[int, ...] = ()

    def __init__(self, options: NgramOptions | None = None, target=None):
        self.options = options or NgramOptions()
        self._index: dict[tuple[int, ...], list[int]] = {}  # n-gram -> positions right after it
        self._indexed = 0  # tokens[:_indexed] have their n-grams ending there indexed

    def reset(self, state: DecodeState) -> None:
        self._index.clear()
        self._indexed = 0

    def observe(self, state: DecodeState, hidden: torch.Tensor | None) -> None:
        pass

    def _extend_index(self, tokens: list[int]) -> None:
        o = self.options
        for end in range(self._indexed + 1, len(tokens) + 1):  # n-grams tokens[end-n:end]
            for n in range(o.n_min, min(o.n_max, end) + 1):
                self._index.setdefault(tuple(tokens[end - n : end]), []).append(end)
        self._indexed = len(tokens)

    def proposal_key(self, budget: int):
        """Continuations are cut at min(max_depth, budget) tokens (a tree of `budget` drafts is at
        most that deep, and a path's counts depend on the continuations' prefixes alone, so the
        scorer's tree is the same): budgets from max_depth up share one proposal."""
        return min(budget, self.options.max_depth)

    def propose(self, state: DecodeState, budget: int) -> TokenTrie | EmptyProposal:
        tokens = state.tokens
        self._extend_index(tokens)
        o = self.options
        length, depth = len(tokens), min(o.max_depth, max(budget, 1))
        for n in range(min(o.n_max, length), o.n_min - 1, -1):
            ends = self._index.get(tuple(tokens[length - n :]), [])  # ascending; the suffix itself ends at `length`
            recent = [s for s in ends[-o.max_matches - 1 :] if s < length][-o.max_matches :]
            if recent:
                return TokenTrie.from_counts(tokens[s : s + depth] for s in recent)
        return EmptyProposal()
