import math, os, sys
from jetspec.drafters import ngram as ng
from jetspec.core.proposal import TokenTrie, EmptyProposal
if os.environ.get("MULTI") == "1":
    def propose(self, state, budget):
        tokens = state.tokens
        self._extend_index(tokens)
        o = self.options
        length, depth = len(tokens), min(o.max_depth, max(budget, 1))
        trie, any_ = TokenTrie(), False
        for n in range(min(o.n_max, length), o.n_min - 1, -1):
            ends = self._index.get(tuple(tokens[length - n:]), [])
            recent = [s for s in ends[-o.max_matches - 1:] if s < length][-o.max_matches:]
            if recent:
                score = None if self.calibration is None else self.calibration.edge_logp(n)
                part = TokenTrie.from_counts((tokens[s:s + depth] for s in recent), score)
                for path, kids in part._children.items():
                    for tok, lp in kids.items():
                        trie.add_edge(path, tok, lp)
                any_ = True
        return trie if any_ else EmptyProposal()
    ng.NgramDrafter.propose = propose
from jetspec.cli import main
sys.exit(main(sys.argv[1:]))
