"""`oracle` drafter: a test drafter that knows the target's true greedy continuation.

It proposes that continuation with random corruptions plus random extra branches, so that full,
partial and zero acceptance all occur: the conformance kit drives scorers and verifiers with it.
Register this module as a plugin (`Registry.create(extra_plugins=[("oracle", jetspec.testing.oracle)])`)
to select it by name.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field

from ..core.hookspecs import hookimpl
from ..core.proposal import TokenTrie
from ..core.registry import Implementation


class OracleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference: list[int] = Field(default_factory=list, description="the target's true greedy output")
    vocab_size: int = 96
    corrupt_p: float = Field(0.15, ge=0.0, le=1.0, description="chance each true token is replaced")
    extra_branches: int = Field(3, ge=0, description="random branches added per round")
    depth: int = Field(12, ge=1)
    seed: int = 0


class OracleDrafter:
    hidden_layers: tuple[int, ...] = ()

    def __init__(self, options: OracleOptions, target=None):
        self.o = options
        self.rng = random.Random(options.seed)

    def reset(self, state) -> None:
        self.rng = random.Random(self.o.seed)

    def observe(self, state, hidden) -> None:
        pass

    def _random_logps(self, n: int) -> list[float]:
        return [-self.rng.random() * 3 for _ in range(n)]

    def propose(self, state, budget: int) -> TokenTrie:
        o, rng = self.o, self.rng
        done = len(state.tokens) - state.prompt_len
        true = list(o.reference[done : done + o.depth])
        true += [rng.randrange(o.vocab_size) for _ in range(o.depth - len(true))]
        path = [rng.randrange(o.vocab_size) if rng.random() < o.corrupt_p else t for t in true]
        trie = TokenTrie()
        trie.add_sequence(path, self._random_logps(len(path)))
        for _ in range(o.extra_branches):
            cut = rng.randrange(len(path))
            tail = [rng.randrange(o.vocab_size) for _ in range(rng.randrange(1, o.depth))]
            branch = path[:cut] + tail
            trie.add_sequence(branch, self._random_logps(len(branch)))
        return trie


@hookimpl
def jetspec_drafters():
    return [Implementation("oracle", OracleDrafter, OracleOptions, "test oracle: true continuation, corrupted")]
