"""An online suffix automaton over a token sequence S[0..n).

The suffix automaton (Blumer et al., 1985) is the smallest DFA accepting every substring of S.
Its states are the classes of substrings with the same set of end positions, endpos(x) = { i :
x ends at S[i] }. State v holds the strings of lengths (len(link(v)), len(v)]; its suffix link
points to the state of its longest suffix with a strictly larger endpos set. `extend(c)` appends
one token in O(1) amortised time and at most two new states (Blumer et al.; Crochemore & Hancart).

What the drafter needs, and why it is cheap:

* `last` is the state of the whole of S; it holds exactly the suffixes that occur only at the
  end (endpos = {n-1}). So `link(last)` is the state of the LONGEST suffix of S that also occurs
  earlier, and its length `len(link(last))` is the match length: O(1) per query, no search.
* endpos(v) = { pos(u) : u in the suffix-link subtree of v, u not a clone }, where a non-clone
  state u was created when S[pos(u)] was appended. The subtree (`kids`) is maintained in O(1)
  per link change, so the occurrences of a match are enumerated by a walk of that subtree.
* the states on the suffix-link chain link(last), link(link(last)), ... are the shorter
  suffixes that occur earlier, each with its (longest) length: the next-best matches.
"""

from __future__ import annotations


class SuffixAutomaton:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.length: list[int] = [0]  # [states] longest string of each state
        self.link: list[int] = [-1]  # [states] suffix link; root: -1
        self.next: list[dict[int, int]] = [{}]  # [states] transitions token -> state
        self.pos: list[int] = [-1]  # [states] an end position (creation position; a clone copies its source's)
        self.is_clone: list[bool] = [False]
        self.kids: list[dict[int, None]] = [{}]  # [states] suffix-link tree children (ordered set)
        self.last = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def _state(self, length: int, pos: int, clone: bool) -> int:
        self.length.append(length)
        self.link.append(-1)
        self.next.append({})
        self.pos.append(pos)
        self.is_clone.append(clone)
        self.kids.append({})
        return len(self.length) - 1

    def _set_link(self, v: int, to: int) -> None:
        old = self.link[v]
        if old >= 0:
            del self.kids[old][v]
        self.link[v] = to
        self.kids[to][v] = None

    def extend(self, c: int) -> None:
        """Append token c (the classic construction; amortised O(1) transitions touched)."""
        i = len(self.tokens)
        self.tokens.append(c)
        cur = self._state(self.length[self.last] + 1, i, False)
        p = self.last
        while p != -1 and c not in self.next[p]:
            self.next[p][c] = cur
            p = self.link[p]
        if p == -1:
            self._set_link(cur, 0)
        else:
            q = self.next[p][c]
            if self.length[p] + 1 == self.length[q]:
                self._set_link(cur, q)
            else:  # split q: the strings of q up to length len(p) + 1 move to a clone
                clone = self._state(self.length[p] + 1, self.pos[q], True)
                self.next[clone] = dict(self.next[q])
                self._set_link(clone, self.link[q])
                while p != -1 and self.next[p].get(c) == q:
                    self.next[p][c] = clone
                    p = self.link[p]
                self._set_link(q, clone)
                self._set_link(cur, clone)
        self.last = cur

    def longest_earlier_match(self) -> int:
        """The state of the longest suffix of S that also ends before n - 1 (root 0: none)."""
        return max(self.link[self.last], 0)

    def end_positions(self, v: int, max_visits: int) -> list[int]:
        """End positions of the strings of state v (most recent first), from a walk of at most
        `max_visits` states of v's suffix-link subtree (complete when the subtree is smaller)."""
        out, stack, visits = [], [v], 0
        while stack and visits < max_visits:
            u = stack.pop()
            visits += 1
            if not self.is_clone[u] and u != 0:
                out.append(self.pos[u])
            stack.extend(self.kids[u])
        return sorted(out, reverse=True)
