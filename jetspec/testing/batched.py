"""The lossless property in batched use (`Pipeline.generate_many`, `core/batch_engine.py`):

    for any prompts (arriving in any order), batch size, budget, row cap and length:
        each prompt's output in a batch (with the component)  ==  its plain greedy output alone

In a batch every sequence has its own drafter and verifier (built anew for each slot by the
component's factory), the scorer is shared, and the KV caches of all sequences are made by one
factory (a `BatchedKVCache` shares its storage among them), so a component that keeps state
where it should not (a scorer remembering the last tree, a cache freeing another sequence's
pages) fails here although it passes one sequence at a time. The target is `TinyDecoder`, the
kit's target that verifies packed rows (`BatchedTarget`).
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Sequence

from hypothesis import given
from hypothesis import strategies as st

from ..caches.dense import DenseKVCache
from ..core.config import GenerationConfig, PipelineConfig
from ..core.interfaces import DecodeState, Drafter, KVCache, TreeScorer, Verifier
from ..core.pipeline import Pipeline
from ..core.results import first_difference
from ..scorers.best_first import BestFirstScorer
from ..verifiers.greedy import GreedyVerifier
from .lossless import MAX_BUDGET, MAX_NEW, PROMPTS, plain_greedy
from .models import VOCAB
from .oracle import OracleDrafter, OracleOptions
from .subject import ConformanceError, Subject, run_property


class PromptOracle(OracleDrafter):
    """The oracle drafter for many prompts: at `reset` it looks up the true continuation of the
    sequence's prompt (`answer(prompt tokens)`) and proposes it, corrupted at `corrupt_p`."""

    def __init__(self, answer: Callable[[tuple[int, ...]], Sequence[int]], corrupt_p: float = 0.15, seed: int = 0,
                 vocab_size: int = VOCAB):  # fmt: skip
        super().__init__(OracleOptions(corrupt_p=corrupt_p, seed=seed, vocab_size=vocab_size))
        self.answer = answer

    def reset(self, state: DecodeState) -> None:
        self.o = self.o.model_copy(update={"reference": list(self.answer(tuple(state.tokens[: state.prompt_len])))})
        super().reset(state)


def assemble_batched(
    target: Any,
    new_drafter: Callable[[], Drafter] | None,
    scorer: TreeScorer | None = None,
    new_verifier: Callable[[], Verifier] | None = None,
    new_cache: Callable[[int], KVCache] | None = None,
    batch_size: int = 2,
    max_verify_rows: int | None = None,
    accept_on_device: str = "auto",
) -> Pipeline:
    """A pipeline of reference parts with any replaced, whose `generate_many` gives each slot a
    drafter and verifier of its own from the factories."""
    new_verifier = new_verifier or GreedyVerifier
    if max_verify_rows is not None:  # a cap below the default batch size is valid for the smaller batches `generate_many` asks for
        batch_size = min(batch_size, max_verify_rows)
    gen = GenerationConfig(budget=MAX_BUDGET, max_new_tokens=MAX_NEW, batch_size=batch_size, max_verify_rows=max_verify_rows,
                           accept_on_device=accept_on_device, build_on_device=True)  # on the device path: every step grown where it can be
    return Pipeline(
        target=target, drafter=new_drafter() if new_drafter else None, scorer=scorer or BestFirstScorer(),
        verifier=new_verifier(), new_cache=new_cache or (lambda capacity: DenseKVCache(target.info, capacity)),
        config=PipelineConfig(generation=gen), new_drafter=new_drafter, new_verifier=new_verifier,
    )


def check_batched_lossless(s: Subject, build: Callable[[int, Callable, int | None], Pipeline], examples: int,
                           seed: int | None, shrink: bool = True) -> None:
    """Each prompt of a random batch decodes exactly as plain greedy decodes it alone.
    `build(model_seed, answer, max_verify_rows)` -> a pipeline for `generate_many` whose target is
    `TinyDecoder(model_seed)` (with any attention backend), `answer` as `PromptOracle` takes it."""
    counter = iter(range(1 << 30))

    @given(
        model_seed=st.integers(0, 3),
        prompts=st.lists(PROMPTS, min_size=1, max_size=5),
        batch_size=st.integers(1, 4),
        budget=st.integers(1, MAX_BUDGET),
        max_new=st.integers(1, MAX_NEW),
        data=st.data(),
    )
    def batched(model_seed, prompts, batch_size, budget, max_new, data):
        cap = data.draw(st.one_of(st.none(), st.integers(batch_size, 8 * batch_size)))
        where = (f"batched example {next(counter)} (kit seed {seed}): target tiny-decoder-{model_seed}, {len(prompts)} "
                 f"prompts, batch_size {batch_size}, budget {budget}, max_verify_rows {cap}, max_new_tokens {max_new}")
        try:
            pipe = build(model_seed, lambda prompt: plain_greedy("decoder", model_seed, prompt), cap)
            results = pipe.generate_many([list(p) for p in prompts], batch_size=batch_size, max_new_tokens=max_new, budget=budget)
        except ConformanceError as e:
            raise ConformanceError(f"{e}; {where}") from None
        except Exception as e:
            s.fail("batched lossless", f"raised {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}; {where}")
        for k, (prompt, result) in enumerate(zip(prompts, results)):
            expected = plain_greedy("decoder", model_seed, tuple(prompt))[:max_new]
            got = tuple(result.tokens)
            if got != expected:
                i = first_difference(got, expected)
                s.fail("batched lossless", f"prompt {k} {list(prompt)} differs from its plain greedy output at position {i} "
                                           f"(got {got[i] if i < len(got) else 'the end'}, expected "
                                           f"{expected[i] if i < len(expected) else 'the end'}); {where}")

    run_property(batched, examples, seed, shrink)


def default_batched(examples: int) -> int:
    """Batched examples for a kit check of `examples`: a few (each decodes several prompts)."""
    return max(2, examples // 4)
