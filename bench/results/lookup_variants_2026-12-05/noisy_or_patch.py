import math, os, sys
from jetspec.core import proposal as P
if os.environ.get("NOR") == "1":
    def children(self, path):
        found = [kids for part in self.parts if (kids := part.children(path))]
        if len(found) < 2:
            return found[0] if found else []
        best = {}
        for kids in found:
            for token, logp in kids:
                if token in best:
                    a, b = math.exp(best[token]), math.exp(logp)
                    best[token] = math.log(min(1 - 1e-6, 1 - (1 - a) * (1 - b)))
                else:
                    best[token] = logp
        return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
    P.MergedProposal.children = children
from jetspec.cli import main
sys.exit(main(sys.argv[1:]))
