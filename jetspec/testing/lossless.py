"""The lossless property, for one component put inside a pipeline of reference parts:

    for any tiny target, prompt, budget and length:
        speculative output (with the component)  ==  plain greedy output (reference parts)

token for token. Hypothesis draws the examples (`examples` of them, from `seed`; `seed=None`
draws fresh ones each run) and shrinks a failure to a small one, whose message names the
component, the example and the first differing position.

Plain greedy is computed once per (target, prompt) for MAX_NEW tokens: greedy decoding is
prefix-closed, so the output for any shorter length is a prefix of it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from hypothesis import given
from hypothesis import strategies as st

from ..caches.dense import DenseKVCache
from ..core.config import GenerationConfig, PipelineConfig
from ..core.device_proposal import proposes_on_device
from ..core.interfaces import (
    DecodeState, Drafter, DraftsAhead, DraftsAheadTogether, KeyedProposals, KVCache, Proposal, ResettableVerifier, Target, TreeScorer, Verifier, observed_layers,
    rows_kept_ahead,
)
from ..core.pipeline import Pipeline
from ..core.results import first_difference
from ..core.tree import DraftTree
from ..scorers.best_first import BestFirstScorer
from ..verifiers.greedy import GreedyVerifier
from .models import VOCAB, any_tiny_target
from .device_build import checked_device_proposal
from .protocol import check_acceptance, check_proposal, check_tree
from .subject import ConformanceError, Subject, run_property

MAX_NEW = 32
MAX_BUDGET = 64
# prompts drawn from a small alphabet repeat themselves, so lookup drafters find matches
PROMPTS = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=12).flatmap(
    lambda base: st.lists(st.sampled_from(base), min_size=1, max_size=32)
)


@dataclass
class Example:
    """One drawn case. `draw` draws more (the build function's own choices); `notes` records
    them for the failure message."""

    target_kind: str
    model_seed: int
    prompt: list[int]
    max_new: int
    budget: int
    expected: tuple[int, ...]
    draw: Callable[[Any], Any]
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> Any:
        """The reference tiny target of this example (shared, cached)."""
        return any_tiny_target(self.target_kind, self.model_seed)

    def describe(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.notes.items())
        return (f"target tiny-{self.target_kind}-{self.model_seed}, prompt {self.prompt}, budget {self.budget}, "
                f"max_new_tokens {self.max_new}{extra}")


def assemble(
    target: Target,
    drafter: Drafter | None = None,
    scorer: TreeScorer | None = None,
    verifier: Verifier | None = None,
    new_cache: Callable[[int], KVCache] | None = None,
    accept_on_device: str = "auto",
) -> Pipeline:
    """A pipeline of reference parts (best-first, greedy, dense) with any of them replaced;
    `accept_on_device = "always"` takes the device path on a CPU target too."""
    return Pipeline(
        target=target,
        drafter=drafter,
        scorer=scorer or BestFirstScorer(),
        verifier=verifier or GreedyVerifier(),
        new_cache=new_cache or (lambda capacity: DenseKVCache(target.info, capacity)),
        config=PipelineConfig(generation=GenerationConfig(budget=MAX_BUDGET, max_new_tokens=MAX_NEW, accept_on_device=accept_on_device)),
    )


@functools.lru_cache(maxsize=2048)
def plain_greedy(target_kind: str, model_seed: int, prompt: tuple[int, ...]) -> tuple[int, ...]:
    """Plain greedy decoding of a tiny target with reference parts: MAX_NEW tokens (or up to EOS)."""
    pipe = assemble(any_tiny_target(target_kind, model_seed))
    return tuple(pipe.generate_plain(list(prompt), max_new_tokens=MAX_NEW).tokens)


def check_lossless(
    s: Subject,
    build: Callable[[Example], Pipeline],
    examples: int,
    targets: tuple[str, ...],
    seed: int | None,
    shrink: bool = True,
) -> None:
    """Assert the lossless property for pipelines made by `build(example)`."""
    counter = iter(range(1 << 30))

    @given(
        target_kind=st.sampled_from(targets),
        model_seed=st.integers(0, 3),
        prompt=PROMPTS,
        max_new=st.integers(1, MAX_NEW),
        budget=st.integers(1, MAX_BUDGET),
        data=st.data(),
    )
    def lossless(target_kind, model_seed, prompt, max_new, budget, data):
        expected = plain_greedy(target_kind, model_seed, tuple(prompt))[:max_new]
        ex = Example(target_kind, model_seed, prompt, max_new, budget, expected, data.draw)
        where = f"example {next(counter)} (kit seed {seed})"
        try:
            pipe = build(ex)
            got = tuple(pipe.generate(list(prompt), max_new_tokens=max_new, budget=budget).tokens)
        except ConformanceError as e:
            raise ConformanceError(f"{e}; {where}: {ex.describe()}") from None
        except Exception as e:
            s.fail("lossless", f"raised {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}; "
                               f"{where}: {ex.describe()}")
        if got != expected:
            i = first_difference(got, expected)
            g = got[i] if i < len(got) else "the end"
            e = expected[i] if i < len(expected) else "the end"
            s.fail("lossless", f"output differs from plain greedy at position {i} (got {g}, expected {e}); "
                               f"{where}: {ex.describe()}")

    run_property(lossless, examples, seed, shrink)


# ---------------------------------------------------------------------------- checking proxies
class CheckedDrafter:
    """Passes calls through and checks every proposal the pipeline receives; an exception the
    drafter raises becomes a one-line failure naming it and the call."""

    def __init__(self, s: Subject, inner: Drafter, vocab: int):
        self.s, self.inner, self.vocab = s, inner, vocab
        self.hidden_layers = observed_layers(inner)
        self.key_checked = False

    def reset(self, state: DecodeState) -> None:
        with self.s.calling("reset"):
            self.inner.reset(state)
        self.key_checked = False

    def observe(self, state: DecodeState, hidden: Any) -> None:
        with self.s.calling("observe", f" (after {len(state.generated)} generated tokens)"):
            self.inner.observe(state, hidden)

    def propose(self, state: DecodeState, budget: int) -> Proposal:
        where = f" (after {len(state.generated)} generated tokens)"
        with self.s.calling("propose", where):
            proposal = self.inner.propose(state, budget)
        check_proposal(self.s, proposal, self.vocab, where=where)
        if isinstance(self.inner, KeyedProposals) and not self.key_checked:  # once per sequence: it costs a propose
            self.key_checked = True
            self.check_shared(state, budget, proposal, where)
        return proposal

    def check_shared(self, state: DecodeState, budget: int, proposal: Proposal, where: str) -> None:
        """Equal proposal keys promise equal proposals: compare the root's children with those
        proposed for another budget of the same key."""
        key = self.inner.proposal_key(budget)
        other = next((b for b in (1, 2, 7, 16, 64) if b != budget and key is not None and self.inner.proposal_key(b) == key), None)
        if other is None:
            return
        mine = [int(t) for t, _ in proposal.children(())]
        theirs = [int(t) for t, _ in self.inner.propose(state, other).children(())]
        if mine != theirs:
            self.s.fail("proposal_key", f"budgets {budget} and {other} share the key {key!r} but get different proposals "
                                        f"(root children {mine[:6]} vs {theirs[:6]}){where}")


class CheckedAheadDrafter(CheckedDrafter):
    """The proxy of a `DraftsAhead` drafter: `draft_ahead` passes through too, so that the
    pipeline's device path drives it (and an exception in it is a one-line failure), and
    `keeps_rows_ahead` is the drafter's (`KeepsRowsAhead`: its observe then gets no rows there)."""

    def __init__(self, s: Subject, inner: Drafter, vocab: int):
        super().__init__(s, inner, vocab)
        self.keeps_rows_ahead = rows_kept_ahead(inner)

    def draft_ahead(self, hidden: Any, packed: Any, budget: int) -> None:
        with self.s.calling("draft_ahead", f" (budget {budget})"):
            self.inner.draft_ahead(hidden, packed, budget)


class CheckedTogetherDrafter(CheckedAheadDrafter):
    """The proxy of a `DraftsAheadTogether` drafter: its peers reach it unwrapped (the drafters it
    was made alike with), and what it returns must say whether it drafted."""

    def draft_ahead_together(self, peers: list, hidden: list, packed: list, budget: int) -> bool:
        inner = [p.inner if isinstance(p, CheckedDrafter) else p for p in peers]
        with self.s.calling("draft_ahead_together", f" ({len(peers)} sequences, budget {budget})"):
            done = self.inner.draft_ahead_together(inner, hidden, packed, budget)
        if not isinstance(done, bool):
            self.s.fail("draft_ahead_together", f"returned {type(done).__name__}; expected True (drafted) or False (declined)")
        return done


def checked_drafter(s: Subject, inner: Drafter, vocab: int) -> CheckedDrafter:
    """The checking proxy of `inner`, with the optional members the pipeline looks for."""
    kind = CheckedTogetherDrafter if isinstance(inner, DraftsAheadTogether) else CheckedAheadDrafter if isinstance(
        inner, DraftsAhead) else CheckedDrafter
    if proposes_on_device(inner):
        kind = _ON_DEVICE[kind]
    return kind(s, inner, vocab)


def _propose_on_device(self: CheckedDrafter, state: DecodeState, budget: int) -> Any:
    """`ProposesOnDevice` passed through, its result's form checked (`device_build.py`)."""
    where = f" (after {len(state.generated)} generated tokens)"
    with self.s.calling("propose_on_device", where):
        p = self.inner.propose_on_device(state, budget)
    if p is not None:
        checked_device_proposal(self.s, p, self.vocab, None, where)
    return p


# each proxy kind with `propose_on_device` defined on the proxy class itself, below `propose`
# (`proposes_on_device` asks where each is defined)
_ON_DEVICE = {k: type(f"{k.__name__}OnDevice", (k,), {"propose_on_device": _propose_on_device})
              for k in (CheckedDrafter, CheckedAheadDrafter, CheckedTogetherDrafter)}


class CheckedScorer:
    """Passes calls through and checks every tree against its proposal and budget."""

    def __init__(self, s: Subject, inner: TreeScorer):
        self.s, self.inner = s, inner

    def build(self, proposal: Proposal, root: int, budget: int) -> DraftTree:
        tree = self.inner.build(proposal, root, budget)
        check_tree(self.s, tree, proposal, root, budget)
        return tree


class CheckedVerifier:
    """Passes calls through and checks every acceptance against its tree."""

    def __init__(self, s: Subject, inner: Verifier, vocab: int):
        self.s, self.inner, self.vocab = s, inner, vocab

    def reset(self, state: DecodeState) -> None:
        if isinstance(self.inner, ResettableVerifier):
            self.inner.reset(state)

    def accept(self, tree: DraftTree, logits: Any, state: DecodeState):
        acc = self.inner.accept(tree, logits, state)
        check_acceptance(self.s, acc, tree, self.vocab)
        return acc
