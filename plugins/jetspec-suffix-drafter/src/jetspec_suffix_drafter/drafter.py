"""`suffix` drafter: continuations of the longest earlier matches of the current suffix.

Per committed token the suffix automaton of prompt + generated text is extended (O(1)
amortised). To propose after S[0..n) (S[n-1] is the root):

1. matches. v_0 = link(last) is the state of the longest suffix of S that occurred before,
   with length L_0 = len(v_0); v_1 = link(v_0), ... are the shorter ones (L_0 > L_1 > ...).
   Walking k = 0, 1, ... while L_k >= min_match, each end position e of v_k not seen at a
   longer level is an occurrence whose match length is exactly L_k (a longer common suffix at e
   would belong to a state deeper than v_0, but those end only at n - 1). Stop at max_matches.
2. continuations. Occurrence e proposes c_e = S[e+1 : e+1+max_depth] with weight
       w_e = exp(length_weight * (L(e) - L_0))        (1 for the longest matches)
   so longer matches count more and every occurrence adds its weight: frequency.
3. the proposal is the weighted trie of the c_e, with edge log-probs
       log q(t | path) = log( W(path + t) / W(path) ),   W(p) = sum of w_e over c_e starting with p
   i.e. the weighted empirical conditional: <= 0, and the heaviest continuation ranks first.
   (length_weight = 0 is plain frequency over all matches.)

Unlike fixed n-gram lookup this finds matches of any length (a long repeated passage is matched
by its whole length, not its last n tokens), and never re-indexes: the automaton is the index.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field

from jetspec.core.interfaces import DecodeState
from jetspec.core.proposal import EmptyProposal, TokenTrie

from .automaton import SuffixAutomaton


class SuffixOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_match: int = Field(1, ge=1, le=256, description="shortest suffix match used")
    max_matches: int = Field(8, ge=1, le=256, description="earlier occurrences whose continuations are merged")
    max_depth: int = Field(16, ge=1, le=1024, description="longest continuation proposed")
    length_weight: float = Field(0.5, ge=0.0, le=16.0, description="weight exp(length_weight * (L - L_max)) of a match of length L")
    max_visits: int = Field(256, ge=1, le=1 << 16, description="automaton states walked per match level (bounds propose time)")


class SuffixDrafter:
    hidden_layers: tuple[int, ...] = ()

    def __init__(self, options: SuffixOptions | None = None, target=None):
        self.options = options or SuffixOptions()
        self.sam = SuffixAutomaton()

    def reset(self, state: DecodeState) -> None:
        self.sam = SuffixAutomaton()

    def observe(self, state: DecodeState, hidden: torch.Tensor | None) -> None:
        self._catch_up(state.tokens)

    def _catch_up(self, tokens: list[int]) -> None:
        for t in tokens[len(self.sam) :]:  # only the newly committed tokens
            self.sam.extend(int(t))

    def matches(self, tokens: list[int]) -> list[tuple[int, int]]:
        """(end position, match length) of the best earlier occurrences, longest first."""
        self._catch_up(tokens)
        o, sam = self.options, self.sam
        n = len(tokens)
        found: list[tuple[int, int]] = []
        seen: set[int] = set()
        v = sam.longest_earlier_match()
        while v > 0 and sam.length[v] >= o.min_match and len(found) < o.max_matches:
            for e in sam.end_positions(v, o.max_visits):
                if e < n - 1 and e not in seen and len(found) < o.max_matches:
                    seen.add(e)
                    found.append((e, sam.length[v]))
            v = sam.link[v]
        return found

    def propose(self, state: DecodeState, budget: int) -> TokenTrie | EmptyProposal:
        tokens = state.tokens
        found = self.matches(tokens)
        if not found:
            return EmptyProposal()
        o = self.options
        longest = found[0][1]
        weight: dict[tuple[int, ...], float] = {}  # W(prefix)
        for e, length in found:
            w = math.exp(o.length_weight * (length - longest))
            cont = tuple(tokens[e + 1 : e + 1 + o.max_depth])
            for d in range(len(cont) + 1):
                weight[cont[:d]] = weight.get(cont[:d], 0.0) + w
        trie = TokenTrie()
        for path, w in weight.items():
            if path:
                trie.add_edge(path[:-1], path[-1], min(0.0, math.log(w / weight[path[:-1]])))
        return trie
