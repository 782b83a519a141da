"""The `wait` phase: the seconds a round's host spends blocked on its read-back from the device,
kept out of `accept` (the host's own acceptance work) — so the bench's phases split host time from
waiting for the GPU without a profiler. On a CPU there is no device to wait for (wait = 0); here
the read-back's device event is replaced by one whose `synchronize` sleeps, as a busy GPU would."""

import time

import pytest

import jetspec
from jetspec.core.on_device import Readback
from jetspec.testing.models import TinyDecoder, tiny_decoder
from support.registry import make_test_registry

SLEEP = 0.004  # seconds each read-back "waits for the device"
PROMPTS = [[5, 6, 7, 5, 6, 7, 5, 6], [9, 8, 9, 8], [1, 2, 3, 1, 2, 3, 1]]


class SlowEvent:
    """A device event whose copy lands SLEEP seconds after the host asks."""

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        time.sleep(SLEEP)


@pytest.fixture
def slow_device(monkeypatch):
    made: list[Readback] = []
    init = Readback.__init__

    def slow_init(self, device, capacity=64):
        init(self, device, capacity)
        self._cuda, self._done = True, SlowEvent()  # its host buffer stays unpinned: only the wait is simulated
        made.append(self)

    monkeypatch.setattr(Readback, "__init__", slow_init)
    return made


def pipe(target, **generation):
    return (jetspec.builder(make_test_registry()).target(target).drafter("ngram").kv_cache("paged")
            .generation(max_new_tokens=12, accept_on_device="always", **generation).build())


@pytest.mark.parametrize("budget", [0, 8], ids=["plain", "speculative"])
def test_a_rounds_blocked_read_back_is_its_wait_not_its_accept(slow_device, budget):
    """One sequence, speculative rounds and plain decoding's queued-ahead loop alike: every round
    waits SLEEP once; `wait` holds it, `accept` keeps only the host's own work."""
    stats = pipe(tiny_decoder(1), budget=budget).generate(PROMPTS[0]).stats
    copies = sum(r.copies for r in slow_device)
    assert copies >= stats.rounds >= 2
    assert stats.seconds["wait"] >= 0.9 * SLEEP * copies
    assert stats.seconds["accept"] < 0.5 * stats.seconds["wait"]  # the sleeps are not counted twice


@pytest.mark.parametrize("overlap", [False, True])
def test_a_batched_steps_read_back_wait_is_shared_by_its_sequences_as_wait(slow_device, overlap):
    """The batched engine: each step's blocked read-back split evenly over its sequences as `wait`;
    summed over the prompts, every step's sleep is there once and none of it in `accept`."""
    results = pipe(TinyDecoder(2, exact=True), budget=8, overlap=overlap).generate_many(PROMPTS, batch_size=3)
    waits = sum(r.stats.seconds["wait"] for r in results)
    copies = sum(r.copies for r in slow_device)
    assert copies >= 2
    assert waits >= 0.9 * SLEEP * copies
    assert sum(r.stats.seconds["accept"] for r in results) < 0.5 * waits


def test_on_a_cpu_nothing_is_waited_for():
    stats = pipe(tiny_decoder(1), budget=8).generate(PROMPTS[0]).stats
    assert stats.seconds["wait"] == 0.0 and stats.seconds["accept"] > 0
