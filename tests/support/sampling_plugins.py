"""Test-only plugins for the sampling tests, registered through the same hooks as any plugin.

Drafters
* `random-tree`: deliberately wrong — a lazy random trie (`width` random children per node,
  random log-probs) from which the scorer picks a random-shaped tree; wide or deep on demand.
* `target-oracle`: deliberately right — proposes `samples` continuations drawn from the target's
  own warped distribution ("samples"), or the target's most likely chain ("mode").

Verifiers (deliberately BIASED: the statistical tests must reject them)
* `first-child`: follows the first child of every node unconditionally; the bonus is a correct draw.
* `leaky`: the correct walk, except that at a node with children it follows the first child
  anyway with probability `eps` (a bias of a few percent).
* `needs-draft-probs`: requires a drafter providing "draft_probs" (for the build-time check).
"""

from __future__ import annotations

import random

import torch
from pydantic import BaseModel, ConfigDict, Field

import jetspec
from jetspec.core.interfaces import Acceptance
from jetspec.core.proposal import TokenTrie
from jetspec.verifiers.greedy import GreedyVerifier
from jetspec.verifiers.sampling import warp_probs


def next_logits(target, context: tuple[int, ...]) -> torch.Tensor:
    """[V] the target's logits after `context` (a `TableTarget` or a `transformers` target)."""
    if hasattr(target, "logits"):
        return target.logits(context)
    with torch.no_grad():
        return target.model(torch.tensor([context])).logits[0, -1].float()


# ---------------------------------------------------------------------------- drafters
class RandomTreeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: int = 8
    width: int = Field(2, ge=1)
    depth: int = Field(4, ge=1)
    seed: int = 0


class RandomProposal:
    def __init__(self, o: RandomTreeOptions, salt: int):
        self.o, self.salt = o, salt

    def children(self, path: tuple[int, ...]) -> list[tuple[int, float]]:
        if len(path) >= self.o.depth:
            return []
        rng = random.Random(hash((self.salt, *path)))
        tokens = rng.sample(range(self.o.vocab_size), min(self.o.width, self.o.vocab_size))
        return sorted(((t, -3 * rng.random()) for t in tokens), key=lambda kv: -kv[1])


class RandomTreeDrafter:
    hidden_layers: tuple[int, ...] = ()

    def __init__(self, options: RandomTreeOptions, target=None):
        self.o = options
        self.rng = random.Random(options.seed)

    def reset(self, state) -> None:
        pass  # the drafter's RNG runs on across sequences: trees vary from run to run

    def observe(self, state, hidden) -> None:
        pass

    def propose(self, state, budget: int) -> RandomProposal:
        return RandomProposal(self.o, self.rng.getrandbits(62))


class OracleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: str = Field("samples", pattern="^(samples|mode)$")
    samples: int = Field(4, ge=1)
    depth: int = Field(3, ge=1)
    temperature: float = Field(1.0, gt=0)
    seed: int = 0


class TargetOracleDrafter:
    hidden_layers: tuple[int, ...] = ()

    def __init__(self, options: OracleOptions, target=None):
        self.o, self.target = options, target
        self.g = torch.Generator().manual_seed(options.seed)

    def reset(self, state) -> None:
        pass

    def observe(self, state, hidden) -> None:
        pass

    def propose(self, state, budget: int) -> TokenTrie:
        o, ctx = self.o, tuple(state.tokens)
        if o.mode == "mode":
            chain = []
            for _ in range(o.depth):
                chain.append(int(next_logits(self.target, ctx + tuple(chain)).argmax()))
            return TokenTrie.from_counts([chain])
        runs = []
        for _ in range(o.samples):
            run: list[int] = []
            for _ in range(o.depth):
                p = warp_probs(next_logits(self.target, ctx + tuple(run))[None], o.temperature)[0]
                run.append(int(torch.multinomial(p, 1, generator=self.g)))
            runs.append(run)
        return TokenTrie.from_counts(runs)


# ---------------------------------------------------------------------------- biased verifiers
class BiasedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = 1.0
    eps: float = Field(1.0, ge=0, le=1, description="chance of following the first child regardless")
    seed: int | None = None


class LeakyVerifier:
    """At each node: with probability eps (if the node has children) follow the first child;
    otherwise draw x ~ p and follow the child holding x, or stop with x as the bonus."""

    def __init__(self, options: BiasedOptions):
        self.o = options
        self.g = torch.Generator()

    def reset(self, state=None, seed: int | None = None) -> None:
        self.g.manual_seed(seed if seed is not None else (self.o.seed or 0))

    def accept(self, tree, logits, state) -> Acceptance:
        probs = warp_probs(logits, self.o.temperature)  # [N, V]
        node, path = 0, [0]
        while True:
            kids = tree.children(node)
            if kids and torch.rand((), generator=self.g) < self.o.eps:
                node = kids[0]
                path.append(node)
                continue
            x = int(torch.multinomial(probs[node], 1, generator=self.g))
            hit = [c for c in kids if int(tree.tokens[c]) == x]
            if not hit:
                return Acceptance(path=path, bonus=x)
            node = hit[0]
            path.append(node)


@jetspec.hookimpl
def jetspec_drafters():
    return [
        jetspec.Implementation("random-tree", RandomTreeDrafter, RandomTreeOptions, "test: random lazy trie"),
        jetspec.Implementation("target-oracle", TargetOracleDrafter, OracleOptions, "test: the target's own samples or mode"),
    ]


@jetspec.hookimpl
def jetspec_verifiers():
    return [
        jetspec.Implementation("first-child", LeakyVerifier, BiasedOptions, "test: BIASED, always follows the first child"),
        jetspec.Implementation("leaky", LeakyVerifier, BiasedOptions, "test: BIASED with probability eps"),
        jetspec.Implementation(
            "needs-draft-probs", lambda o: GreedyVerifier(), BiasedOptions, "test: requires draft probabilities",
            requires=frozenset({"drafter:draft_probs"}),
        ),
    ]
