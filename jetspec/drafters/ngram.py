"""`ngram` drafter (prompt lookup): training-free, proposes what followed earlier occurrences of
the current suffix in the prompt and the generated text.

For n = n_max .. n_min, look up the last n committed tokens (the root included) among earlier
n-grams; take the continuations (up to min(`max_depth`, budget) tokens) after the `max_matches` most recent
occurrences of the longest n that matches, and merge them into a trie whose edge log-probs are
the empirical conditionals log(count(path + t) / count(path)). Frequent continuations thus score
higher, and the tree scorer decides how much of the trie to verify.

With a calibration (`calibration = "lookup.json"`, made by `jetspec fit-lookup`; the `jetspec`
drafter reads the one beside its head), an edge scores the acceptance rate measured for edges like
it instead — by match length n, depth and count fraction (`lookup_calibration.py`): a continuation
seen once after a 1-token match is not "certain" (log 1 = 0) but what such edges turned out to be.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..core.device_proposal import FlatTrie
from ..core.errors import ConfigError
from ..core.interfaces import DecodeState
from ..core.proposal import EmptyProposal, TokenTrie
from .lookup_calibration import DEPTHS, LookupCalibration


class NgramOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_max: int = Field(4, ge=1, le=16, description="longest suffix n-gram to match")
    n_min: int = Field(1, ge=1, le=16, description="shortest suffix n-gram to match")
    max_matches: int = Field(8, ge=1, le=256, description="most recent occurrences merged into the trie")
    max_depth: int = Field(16, ge=1, le=1024, description="longest continuation proposed")
    calibration: str | None = Field(None, description="a lookup.json of `jetspec fit-lookup`: edges scored by measured "
                                                      "acceptance (None: by count fractions)")

    @model_validator(mode="after")
    def _order(self) -> "NgramOptions":
        if self.n_min > self.n_max:
            raise ValueError(f"n_min ({self.n_min}) must not exceed n_max ({self.n_max})")
        return self


class NgramDrafter:
    hidden_layers: tuple[int, ...] = ()

    def __init__(self, options: NgramOptions | None = None, target=None, calibration: LookupCalibration | None = None):
        self.options = options or NgramOptions()
        if calibration is None and self.options.calibration is not None:
            calibration = LookupCalibration.load(self.options.calibration)
        if calibration is not None and not calibration.n_min <= self.options.n_min <= self.options.n_max <= calibration.n_max:
            raise ConfigError(f"lookup calibration {calibration.origin} was fitted for matches of {calibration.n_min}..{calibration.n_max} "
                              f"tokens; this drafter matches {self.options.n_min}..{self.options.n_max}")
        self.calibration = calibration
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

    def match(self, tokens: list[int]) -> tuple[int, list[int]] | None:
        """(n, ends): the longest suffix n-gram (n_max .. n_min) that occurred before, and the
        positions right after its `max_matches` most recent earlier occurrences; None: no match.
        Indexes the n-grams of `tokens` it has not seen (`tokens` only ever grows)."""
        self._extend_index(tokens)
        o, length = self.options, len(tokens)
        for n in range(min(o.n_max, length), o.n_min - 1, -1):
            ends = self._index.get(tuple(tokens[length - n :]), [])  # ascending; the suffix itself ends at `length`
            recent = [s for s in ends[-o.max_matches - 1 :] if s < length][-o.max_matches :]
            if recent:
                return n, recent
        return None

    def propose_flat(self, state: DecodeState, budget: int) -> FlatTrie | None:
        """`propose`'s trie as flat lists (`FlatTrie`, for a proposal grown on the device), made in
        one pass over the continuations: a node per distinct path, keyed by (parent node, token),
        its edge scored from count(path) / count(parent path) as `TokenTrie.from_counts` scores it.
        None: no match."""
        found = self.match(state.tokens)
        if found is None:
            return None
        n, recent = found
        depth, tokens = min(self.options.max_depth, max(budget, 1)), state.tokens
        node_of: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        toks: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        counts: list[int] = []
        node_at = node_of.get
        for s in recent:
            parent = -1
            for t in tokens[s : s + depth]:
                node = node_at((parent, t))
                if node is None:
                    node = node_of[(parent, t)] = len(toks)
                    toks.append(t)
                    depths.append(1 if parent < 0 else depths[parent] + 1)
                    parents.append(parent)
                    counts.append(1)
                else:
                    counts[node] += 1
                parent = node
        whole = [len(recent) if p < 0 else counts[p] for p in parents]
        if self.calibration is None:
            logps = [math.log(c / w) for c, w in zip(counts, whole)]
        else:  # the calibration's table read in place: `edge_logp`'s rule with `fraction_bucket` inlined (a call per
            # edge is a lookup's largest avoidable cost, bench/RESULTS.md); tests/test_device_build.py holds them to one rule
            logs = self.calibration.edge_logs(n)  # [DEPTHS][BUCKETS]
            logps = [logs[(d if d < DEPTHS else DEPTHS) - 1][2 if c == w else 1 if 2 * c >= w else 0]
                     for d, c, w in zip(depths, counts, whole)]
        return FlatTrie(toks, parents, logps, depths)

    def propose(self, state: DecodeState, budget: int) -> TokenTrie | EmptyProposal:
        tokens = state.tokens
        found = self.match(tokens)
        if found is None:
            return EmptyProposal()
        n, recent = found
        depth = min(self.options.max_depth, max(budget, 1))
        score = None if self.calibration is None else self.calibration.edge_logp(n)
        return TokenTrie.from_counts((tokens[s : s + depth] for s in recent), score)
