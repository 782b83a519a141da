"""Plain greedy output of a tiny target, cached: the expected side of every lossless property."""

import functools

import jetspec

from .models import tiny_target
from .registry import make_test_registry


@functools.lru_cache(maxsize=1024)
def plain_output(family: str, seed: int, prompt: tuple[int, ...], max_new: int) -> tuple[int, ...]:
    pipe = jetspec.builder(make_test_registry()).target(tiny_target(family, seed)).generation(budget=0, max_new_tokens=max_new).build()
    return tuple(pipe.generate_plain(list(prompt)).tokens)
