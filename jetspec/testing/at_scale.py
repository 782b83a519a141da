"""The drafter's lossless check at realistic sizes, under both verifiers:

    for any long prompt, budget, length and verifier (`greedy`, or `sampling` at T > 0, seeded):
        speculative output (with the drafter)  ==  plain output (same verifier, same seed)

token for token, on `realistic_decoder`: Qwen2/Qwen3's vocabulary of 151,936 tokens (above 2^15
and 2^16, so a token id kept in an int16 or uint16 wraps; a vocabulary-sized table is big) and
prompts of 80 to 160 tokens (contexts pass 128, so a buffer sized for short tests overflows).

Why equality holds under sampling too: the `sampling` verifier turns draw t of a sequence into
the inverse CDF of the target's distribution at u_t, one fixed uniform per generated index
(`verifiers/sampling.py`), and the target is exact (`TinyDecoder(exact=True)`: a tree node's
logits equal a one-token step's bit for bit), so the drafter changes how many tokens a round
commits, never which. Sampling shows a drafter what greedy runs never do: a history of draws
rather than argmaxes, and a verifier that reads the `DecodeState` (its length picks u_t), so a
drafter that leaves the state changed while a round is verified is caught here.

Cost: the target's logits are [N, 151936] per forward, so this phase draws few examples per
verifier (`check_drafter(at_scale=...)`, default `examples // 10`, at least 1).
"""

from __future__ import annotations

import functools
from typing import Callable

from hypothesis import given
from hypothesis import strategies as st

from ..core.interfaces import Drafter, Target, Verifier
from ..core.results import first_difference
from ..verifiers.greedy import GreedyVerifier
from ..verifiers.sampling import SamplingOptions, SamplingVerifier
from .lossless import assemble
from .models import TinyDecoder
from .subject import ConformanceError, Subject, run_property

REALISTIC_VOCAB = 151_936  # Qwen2 / Qwen3
MIN_PROMPT, MAX_PROMPT = 80, 160
MIN_NEW, MAX_NEW = 8, 24  # hypothesis tries the smallest example first: let it still draft a few rounds
MIN_BUDGET, MAX_BUDGET = 2, 16
VERIFIERS = ("greedy", "sampling")


@functools.lru_cache(maxsize=4)
def realistic_decoder(seed: int) -> TinyDecoder:
    """An exact `TinyDecoder` with the realistic vocabulary (cached: ~40 MB of weights each)."""
    return TinyDecoder(seed, vocab=REALISTIC_VOCAB, exact=True)


@st.composite
def long_prompts(draw, vocab: int = REALISTIC_VOCAB) -> list[int]:
    """MIN_PROMPT..MAX_PROMPT tokens over a small alphabet (so lookups find matches), one of them
    an id above 2^16 (it ends the prompt: the first root)."""
    alphabet = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=24))
    high = draw(st.integers((1 << 16) + 1, vocab - 1))
    return draw(st.lists(st.sampled_from(alphabet + [high]), min_size=MIN_PROMPT - 1, max_size=MAX_PROMPT - 1)) + [high]


def verifier_for(kind: str, temperature: float, top_k: int | None, seed: int) -> Verifier:
    return GreedyVerifier() if kind == "greedy" else SamplingVerifier(SamplingOptions(temperature=temperature, top_k=top_k, seed=seed))


def check_at_scale(
    s: Subject, make_drafter: Callable[[Target], Drafter], examples: int, seed: int | None, shrink: bool = True,
    verifiers: tuple[str, ...] = VERIFIERS,
) -> None:
    """Assert the property above for drafters made by `make_drafter(target)`: `examples` drawn
    examples under each of `verifiers`."""
    for kind in verifiers:
        run_property(_lossless_at_scale(s, make_drafter, kind, seed), examples, seed, shrink)


def _lossless_at_scale(s: Subject, make_drafter: Callable[[Target], Drafter], kind: str, seed: int | None) -> Callable:
    counter = iter(range(1 << 30))

    @given(
        model_seed=st.integers(0, 1),
        prompt=long_prompts(),
        max_new=st.integers(MIN_NEW, MAX_NEW),
        budget=st.integers(MIN_BUDGET, MAX_BUDGET),
        temperature=st.sampled_from([0.6, 1.0]),
        top_k=st.sampled_from([None, 40]),
        draw_seed=st.integers(0, 1 << 20),
    )
    def lossless_at_scale(model_seed, prompt, max_new, budget, temperature, top_k, draw_seed):
        target = realistic_decoder(model_seed)
        how = "greedy" if kind == "greedy" else f"sampling (temperature {temperature}, top_k {top_k}, seed {draw_seed})"
        where = (f"example {next(counter)} at scale (kit seed {seed}): target {target.info.name}, {how}, prompt of "
                 f"{len(prompt)} tokens {prompt[:6]}..., budget {budget}, max_new_tokens {max_new}")
        plain = assemble(target, verifier=verifier_for(kind, temperature, top_k, draw_seed))
        expected = tuple(plain.generate_plain(list(prompt), max_new_tokens=max_new).tokens)
        try:
            pipe = assemble(target, drafter=make_drafter(target), verifier=verifier_for(kind, temperature, top_k, draw_seed))
            got = tuple(pipe.generate(list(prompt), max_new_tokens=max_new, budget=budget).tokens)
        except ConformanceError as e:
            raise ConformanceError(f"{e}; {where}") from None
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            s.fail("lossless at scale", f"raised {type(e).__name__}: {first}; {where}")
        if got != expected:
            i = first_difference(got, expected)
            g = got[i] if i < len(got) else "the end"
            e = expected[i] if i < len(expected) else "the end"
            s.fail("lossless at scale", f"output differs from plain {kind} at position {i} (got {g}, expected {e}); {where}")

    return lossless_at_scale


def default_examples(examples: int) -> int:
    """Examples per verifier when `check_drafter` is given `examples` for its small targets."""
    return max(1, examples // 10)


__all__ = ["REALISTIC_VOCAB", "check_at_scale", "long_prompts", "realistic_decoder"]
