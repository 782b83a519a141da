"""The conformance kit's entry points, one per component kind a plugin may add.

Each `check_<kind>(component, options=None, registry=None, examples=..., seed=0)` runs

  (a) protocol checks (`protocol.py`): options model, capabilities, the built object's Protocol,
      the optional members it has (`optional_members.py`: hidden_layers, proposal_key, reset,
      graph_safe, the k/v/slot_table rows of a 'kv_rows' cache; `on_device.py`: a verifier's
      accept_on_device equals its accept, a cache's stage_commit its commit), and the kind's own contract on
      random inputs (proposals, trees, acceptances, KV-cache operation programs, attention on
      random trees);
  (b) the lossless check (`lossless.py`): the component inside a pipeline of reference parts
      on tiny random targets produces exactly plain greedy's output; a drafter then also at
      realistic sizes (`at_scale.py`: a 151,936-token vocabulary, prompts of 80-160 tokens) under
      the `greedy` and the seeded `sampling` verifier.

`component` is a registered name (looked up in `registry`, default: `jetspec.default_registry()`)
or a `jetspec.Implementation`. A failure raises `ConformanceError` (an AssertionError) with one
line naming the component, the check and the example. `seed=None` draws fresh examples each run.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from hypothesis import given
from hypothesis import strategies as st

from ..core.interfaces import (AttentionBackend, BatchedAttention, DecodeState, Drafter, DraftsAhead,
                               PositionInvariantAttention, TreeScorer, Verifier)
from ..core.device_proposal import proposes_on_device
from ..core.registry import Implementation, Registry
from .at_scale import check_at_scale, default_examples
from .attention import check_attention_numerics
from .invariance import check_position_invariance
from .batched import PromptOracle, assemble_batched, check_batched_lossless, default_batched
from .device_build import check_builds_on_device
from .kv_semantics import check_kv_semantics, small_info
from .lossless import CheckedScorer, CheckedVerifier, Example, assemble, check_lossless, checked_drafter
from .models import FAMILIES, VOCAB, TinyDecoder, tiny_decoder
from .on_device import check_accepts_on_device, check_commits_on_device
from .optional_members import (check_drafter_members, check_graph_safe, check_kv_rows, check_launch_forms,
                               check_verifier_members)
from .oracle import OracleDrafter, OracleOptions
from .protocol import build, check_acceptance, check_capabilities, check_instance, check_registration, check_tree
from .strategies import draft_trees, proposals
from .subject import Subject, resolve, run_property

TARGETS = ("decoder", *FAMILIES)  # "decoder": `TinyDecoder`; the rest: tiny `transformers` models
Component = str | Implementation


def one_thread(check: Callable) -> Callable:
    """Run a check with one intra-op thread, restored afterwards: the tiny models gain nothing
    from threads, and on a loaded CI machine thread contention makes them many times slower."""

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            check(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return run


def _static(s: Subject) -> None:
    check_registration(s)
    check_capabilities(s)


def _oracle(ex: Example) -> OracleDrafter:
    """An oracle drafter for the example: true continuation, corrupted at a drawn rate."""
    corrupt = ex.draw(st.sampled_from([0.0, 0.15, 0.6, 1.0]))
    ex.notes["oracle corruption"] = corrupt
    return OracleDrafter(OracleOptions(reference=list(ex.expected), corrupt_p=corrupt, seed=ex.model_seed, vocab_size=VOCAB))


# ---------------------------------------------------------------------------- drafter
@one_thread
def check_drafter(
    drafter: Component, options: dict[str, Any] | None = None, registry: Registry | None = None,
    examples: int = 20, seed: int | None = 0, shrink: bool = True, targets: tuple[str, ...] = TARGETS,
    at_scale: int | None = None, batched: int | None = None,
) -> None:
    """Protocol, then lossless: every proposal it makes in the pipeline is checked on the way;
    then `at_scale` examples per verifier (default: examples // 10, at least 1; 0: none) of
    `at_scale.py`; then `batched` examples (default: examples // 4, at least 2; 0: none) of
    `batched.py`, one drafter per sequence of a batch."""
    s = resolve("drafter", drafter, options, registry)
    _static(s)
    from .models import tiny_decoder

    target = tiny_decoder(0)
    check_drafter_members(s, check_instance(s, build(s, target), Drafter), target.info.num_layers)

    def pipeline(ex: Example):
        inner = check_instance(s, build(s, ex.target), Drafter)
        # a drafter that drafts ahead (`DraftsAhead`) runs half its examples on the device path, which calls it
        ahead = isinstance(inner, DraftsAhead) and ex.draw(st.booleans())
        if ahead:
            ex.notes["accept_on_device"] = "always"
        return assemble(ex.target, drafter=checked_drafter(s, inner, VOCAB), accept_on_device="always" if ahead else "auto")

    check_lossless(s, pipeline, examples, targets, seed, shrink)
    scale = default_examples(examples) if at_scale is None else at_scale
    if scale:
        check_at_scale(s, lambda t: checked_drafter(s, check_instance(s, build(s, t), Drafter), t.info.vocab_size), scale, seed, shrink)
    def batched_pipeline(model_seed: int, answer: Callable, cap: int | None):
        t = tiny_decoder(model_seed)
        # a drafter that drafts ahead or proposes on the device runs the batches of odd model seeds on the
        # device path, which calls it (`draft_ahead_together` first, where it has one; `propose_on_device`)
        ahead = model_seed % 2 and (isinstance(build(s, t), DraftsAhead) or proposes_on_device(build(s, t)))
        return assemble_batched(t, lambda: checked_drafter(s, check_instance(s, build(s, t), Drafter), VOCAB), max_verify_rows=cap,
                                accept_on_device="always" if ahead else "auto")

    _check_batched(s, batched, examples, seed, shrink, batched_pipeline)


def _check_batched(s: Subject, batched: int | None, examples: int, seed: int | None, shrink: bool, build: Callable) -> None:
    n = default_batched(examples) if batched is None else batched
    if n:
        check_batched_lossless(s, build, n, seed, shrink)


# ---------------------------------------------------------------------------- scorer
@one_thread
def check_scorer(
    scorer: Component, options: dict[str, Any] | None = None, registry: Registry | None = None,
    examples: int = 20, seed: int | None = 0, shrink: bool = True, targets: tuple[str, ...] = TARGETS,
    batched: int | None = None,
) -> None:
    """Trees from random proposals and budgets are valid; then lossless behind an oracle drafter,
    one sequence at a time and (`batched` examples) in batches sharing one scorer."""
    s = resolve("scorer", scorer, options, registry)
    _static(s)
    obj = check_instance(s, build(s), TreeScorer)

    @given(proposal=proposals(VOCAB), root=st.integers(0, VOCAB - 1), budget=st.integers(0, 48))
    def trees_are_valid(proposal, root, budget):
        with s.calling("tree", f" (budget {budget})"):
            tree = obj.build(proposal, root, budget)
        check_tree(s, tree, proposal, root, budget, where=f" (budget {budget})")

    run_property(trees_are_valid, examples * 3, seed, shrink)  # cheap: no model
    check_builds_on_device(s, obj, VOCAB, examples, seed, shrink)
    check_lossless(
        s, lambda ex: assemble(ex.target, drafter=_oracle(ex), scorer=CheckedScorer(s, build(s))), examples, targets, seed
    )
    _check_batched(s, batched, examples, seed, shrink, lambda model_seed, answer, cap: assemble_batched(
        tiny_decoder(model_seed), lambda: PromptOracle(answer), scorer=CheckedScorer(s, build(s)), max_verify_rows=cap))


# ---------------------------------------------------------------------------- verifier
@one_thread
def check_verifier(
    verifier: Component, options: dict[str, Any] | None = None, registry: Registry | None = None,
    examples: int = 20, seed: int | None = 0, shrink: bool = True, targets: tuple[str, ...] = TARGETS,
    device: str = "cpu", batched: int | None = None,
) -> None:
    """Acceptances of random trees are root-down paths; on any tree the kept drafts are exactly
    the target's argmax chain (greedy losslessness, one round); with `accept_on_device`, it keeps
    the same on `device` (`on_device.py`); then lossless in a pipeline (on the CPU), one sequence
    at a time and (`batched` examples) in batches, one verifier per sequence."""
    s = resolve("verifier", verifier, options, registry)
    _static(s)
    obj = check_instance(s, build(s), Verifier)
    check_verifier_members(s, obj)
    check_accepts_on_device(s, lambda: build(s), examples * 3, seed, device, shrink)

    @given(tree=draft_trees(VOCAB), data=st.data())
    def one_round_is_greedy(tree, data):
        # logits that favour, at each node, the token of one of its children (or none): deep acceptances occur
        logits = torch.randn(tree.size, VOCAB, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 1 << 16))))
        for i in range(tree.size):
            kids = tree.children(i)
            if kids and data.draw(st.booleans()):
                logits[i, int(tree.tokens[data.draw(st.sampled_from(kids))])] += 10.0
        state = DecodeState(tokens=[1, 2, int(tree.tokens[0])], prompt_len=2)
        parents = tree.parents.tolist()
        with s.calling("acceptance", f" (tree parents {parents})"):
            acc = obj.accept(tree, logits, state)
        check_acceptance(s, acc, tree, VOCAB, where=f" (tree parents {parents})")
        want = logits.argmax(-1).tolist()
        node, expect = 0, [0]
        while True:  # greedy walk: follow the child holding the target's argmax token
            nxt = [c for c in tree.children(node) if int(tree.tokens[c]) == want[node]]
            if not nxt:
                break
            node = nxt[0]
            expect.append(node)
        if list(acc.path) != expect or int(acc.bonus) != want[node]:
            s.fail("greedy round", f"accepted path {list(acc.path)} + bonus {acc.bonus}, but the target's argmax chain is "
                                   f"{expect} + bonus {want[node]} (tree parents {parents})")

    run_property(one_round_is_greedy, examples * 3, seed, shrink)
    check_lossless(
        s, lambda ex: assemble(ex.target, drafter=_oracle(ex), verifier=CheckedVerifier(s, build(s), VOCAB)),
        examples, targets, seed, shrink,
    )
    _check_batched(s, batched, examples, seed, shrink, lambda model_seed, answer, cap: assemble_batched(
        tiny_decoder(model_seed), lambda: PromptOracle(answer), new_verifier=lambda: CheckedVerifier(s, build(s), VOCAB),
        max_verify_rows=cap))


# ---------------------------------------------------------------------------- kv cache
@one_thread
def check_kv_cache(
    kv_cache: Component, options: dict[str, Any] | None = None, registry: Registry | None = None,
    examples: int = 20, seed: int | None = 0, shrink: bool = True, targets: tuple[str, ...] = TARGETS, device: str = "cpu",
    batched: int | None = None,
) -> None:
    """Random begin/write/read/commit/reset programs match `ReferenceKV`; with `stage_commit`, a
    staged commit reads back what a host commit does (`on_device.py`); then lossless, one sequence
    at a time and (`batched` examples) in batches whose caches come from one factory."""
    s = resolve("kv_cache", kv_cache, options, registry)
    _static(s)
    check_kv_semantics(s, lambda info, capacity: build(s, info, capacity), examples * 3, seed, device, shrink)
    check_commits_on_device(s, lambda info, capacity: build(s, info, capacity), examples * 3, seed, device, shrink)
    check_graph_safe(s, build(s, small_info(1, 1, 8, device), 8))
    if "kv_rows" in s.impl.provides:
        check_kv_rows(s, lambda info, capacity: build(s, info, capacity), device)

    def pipeline(ex: Example):
        if ex.target_kind != "decoder":  # `transformers` targets run on the CPU
            return assemble(ex.target, drafter=_oracle(ex), new_cache=lambda c: build(s, ex.target.info, c))
        target = TinyDecoder(ex.model_seed, device=device)
        return assemble(target, drafter=_oracle(ex), new_cache=lambda c: build(s, target.info, c))

    check_lossless(s, pipeline, examples, targets if device == "cpu" else ("decoder",), seed, shrink)
    if device == "cpu":
        def batched_pipeline(model_seed: int, answer: Callable, cap: int | None):
            t = tiny_decoder(model_seed)
            return assemble_batched(t, lambda: PromptOracle(answer), new_cache=lambda c: build(s, t.info, c), max_verify_rows=cap)

        _check_batched(s, batched, examples, seed, shrink, batched_pipeline)


# ---------------------------------------------------------------------------- attention
@one_thread
def check_attention_backend(
    attention: Component, options: dict[str, Any] | None = None, registry: Registry | None = None,
    examples: int = 20, seed: int | None = 0, shrink: bool = True, kv_cache: Component = "dense", device: str = "cpu",
    dtype: torch.dtype = torch.float32, head_dims: tuple[int, ...] = (8, 16), atol: float = 1e-4, rtol: float = 1e-4,
    batched: int | None = None, batched_kv_cache: Component = "paged", invariance: int | None = None,
) -> None:
    """Matches `tree_attention` on random trees (through the `kv_cache` it is paired with); for a
    backend with `position_invariant()`, `invariance` examples (default: examples // 4, at least 2;
    0: none) of `invariance.py`: its mode gives every tree node the bits of its one-token step,
    and, with `attend_batch`, every packed sequence the bits of that sequence alone (over
    `batched_kv_cache` caches); then lossless as the attention of `TinyDecoder` (the only tiny
    target that uses a backend); then, for a backend with `attend_batch`, lossless in batches
    over `batched_kv_cache` caches."""
    s = resolve("attention", attention, options, registry)
    _static(s)
    backend = check_instance(s, build(s), AttentionBackend)
    check_graph_safe(s, backend)
    check_launch_forms(s, backend)
    if isinstance(backend, PositionInvariantAttention):
        check_launch_forms(s, backend.position_invariant())
    cache = resolve("kv_cache", kv_cache, None, s.registry)

    def new_cache(info, capacity):
        return cache.impl.factory(cache.options, info, capacity)

    check_attention_numerics(s, backend, new_cache, examples * 3, seed, device, dtype, head_dims, atol, rtol, shrink)
    batch_cache = resolve("kv_cache", batched_kv_cache, None, s.registry)
    invariant = max(2, examples // 4) if invariance is None else invariance
    if invariant:
        check_position_invariance(s, backend, new_cache, lambda info, c: batch_cache.impl.factory(batch_cache.options, info, c),
                                  invariant, seed, device, dtype, head_dims, shrink)

    def pipeline(ex: Example):
        target = TinyDecoder(ex.model_seed, attention=build(s), device=device)
        return assemble(target, drafter=_oracle(ex), new_cache=lambda c: new_cache(target.info, c))

    check_lossless(s, pipeline, examples, ("decoder",), seed, shrink)
    if isinstance(backend, BatchedAttention):  # optional: without it, batching refuses the backend in one line
        def batched_pipeline(model_seed: int, answer: Callable, cap: int | None):
            target = TinyDecoder(model_seed, attention=build(s), device=device)
            return assemble_batched(target, lambda: PromptOracle(answer), max_verify_rows=cap,
                                    new_cache=lambda c: batch_cache.impl.factory(batch_cache.options, target.info, c))

        _check_batched(s, batched, examples, seed, shrink, batched_pipeline)
