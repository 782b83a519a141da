"""`bench/host_split.py`: named functions timed in a block and put back after it."""

import types

import pytest

from bench.host_split import split_timers
from jetspec.core.batch import BatchMeta
from jetspec.drafters.ngram import NgramDrafter


def test_named_functions_are_timed_inside_the_block_and_restored_after():
    original, static = NgramDrafter.match, BatchMeta.__dict__["pack"]
    drafter = NgramDrafter()
    with split_timers(("jetspec.drafters.ngram:NgramDrafter.match", "jetspec.core.batch:BatchMeta.pack")) as totals:
        assert drafter.match([1, 2, 1, 2]) == (2, [2])
        assert drafter.match([1, 2, 1, 2, 1]) == (3, [3])
        assert isinstance(BatchMeta.__dict__["pack"], staticmethod)  # a staticmethod stays one
    calls, seconds, slowest = totals["NgramDrafter.match"]
    assert calls == 2 and 0 < slowest <= seconds < 2 * slowest  # the slower of two calls: at least half their sum
    assert totals["BatchMeta.pack"] == [0, 0.0, 0.0]
    assert NgramDrafter.match is original and BatchMeta.__dict__["pack"] is static


def test_a_name_that_does_not_resolve_or_is_a_generator_is_refused_and_nothing_stays_patched(monkeypatch):
    original = NgramDrafter.match
    with pytest.raises(AttributeError):
        with split_timers(("jetspec.drafters.ngram:NgramDrafter.match", "jetspec.drafters.ngram:NgramDrafter.nope")):
            pass
    assert NgramDrafter.match is original
    module = types.ModuleType("gen_module")
    module.steps = lambda: (yield 1)
    monkeypatch.setitem(__import__("sys").modules, "gen_module", module)
    with pytest.raises(ValueError, match="generator function"):
        with split_timers(("gen_module:steps",)):
            pass
