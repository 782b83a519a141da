"""While a decode runs, the heap that existed before it is out of the cyclic collector's reach
(`core/frozen_heap.py`): frozen from the first round to the last, of one sequence or a batch, given
back when the outermost decode ends — also when it fails, or when a batched run is abandoned — and
left alone where the process froze it itself. Cyclic garbage the loop makes is still collected."""

import gc
import weakref

import pytest

import jetspec
from jetspec.core.errors import PluginError
from jetspec.core.frozen_heap import frozen_heap
from support.models import tiny_decoder
from support.registry import make_test_registry

REG = make_test_registry()
PROMPT = [4, 5, 6, 4, 5, 6, 4, 5]


@pytest.fixture(scope="module")
def pipe():
    return (jetspec.builder(REG).target(tiny_decoder(1)).drafter("ngram")
            .generation(budget=8, max_new_tokens=12, batch_size=2).build())  # fmt: skip


@pytest.fixture(autouse=True)
def nothing_frozen():
    assert gc.get_freeze_count() == 0, "a test before this one left the heap frozen"
    yield
    gc.unfreeze()


def test_one_sequence_decodes_with_the_older_heap_frozen_and_gives_it_back(pipe):
    before = len(gc.get_objects())
    seen = []
    pipe.generate(PROMPT, on_tokens=lambda _: seen.append(gc.get_freeze_count()))
    assert seen and min(seen) >= before // 2  # every round: the heap of before (most of it) is frozen
    assert gc.get_freeze_count() == 0


def test_a_batch_decodes_with_the_heap_frozen_and_gives_it_back(pipe):
    seen = []
    pipe.generate_many([PROMPT, PROMPT[:5], PROMPT[2:]], on_result=lambda i, r: seen.append(gc.get_freeze_count()))
    assert len(seen) == 3 and min(seen) > 0
    assert gc.get_freeze_count() == 0


def test_an_abandoned_batched_run_gives_the_heap_back_when_closed(pipe):
    run = pipe.batched(2).run([PROMPT, PROMPT[:5], PROMPT[2:]])
    next(run)
    assert gc.get_freeze_count() > 0
    run.close()
    assert gc.get_freeze_count() == 0


def test_a_failing_decode_gives_the_heap_back(pipe):
    def fail(_):
        raise PluginError("boom")

    with pytest.raises(PluginError):
        pipe.generate(PROMPT, on_tokens=fail)
    assert gc.get_freeze_count() == 0


def test_a_batched_run_that_raises_gives_the_heap_back_at_once(pipe):
    """generate_many raising out of its loop closes the engine's run there: the heap comes back at
    once, not when the traceback, which still holds generate_many's frame, is collected."""
    def fail(i, result):
        raise PluginError("boom")

    with pytest.raises(PluginError) as raised:
        pipe.generate_many([PROMPT, PROMPT[:5], PROMPT[2:]], on_result=fail)
    assert raised.value.__traceback__ is not None and gc.get_freeze_count() == 0


def test_nested_decodes_share_one_freeze(pipe):
    inner = []

    def nested(_):
        if not inner:
            pipe.generate(PROMPT[:4])
            inner.append(gc.get_freeze_count())

    pipe.generate(PROMPT, on_tokens=nested)
    assert inner and inner[0] > 0  # the inner decode's end did not unfreeze the outer one's heap
    assert gc.get_freeze_count() == 0


def test_a_heap_the_process_froze_itself_is_left_as_it_is(pipe):
    gc.freeze()
    frozen = gc.get_freeze_count()  # it falls as frozen objects die, it rises only with a new freeze
    seen = []
    pipe.generate(PROMPT, on_tokens=lambda _: seen.append(gc.get_freeze_count()))
    assert seen and max(seen) <= frozen  # not frozen again (with the decode's setup in it)
    assert 0 < gc.get_freeze_count() <= frozen  # nor given back


def test_cycles_made_during_the_decode_are_still_collected():
    class Node:
        pass

    with frozen_heap():
        a, b = Node(), Node()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        del a, b
        gc.collect()
        assert alive() is None
