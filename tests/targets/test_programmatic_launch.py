"""Programmatic dependent launch (`core/invariant.launch_options`, JETSPEC_PDL=1, the default): on Hopper and
later an invariant kernel of at most one program per SM may be scheduled while the kernel before it still runs,
and every one waits for the kernel before it before touching memory. It must change no bit — eager, under CUDA
graphs, one token or a tree — and it is on only where the GPU has it (never in Triton's interpreter, never before
sm_90) and not turned off (JETSPEC_PDL=0).
The PTX side (each kernel waits before its first global load or store) is checked without a GPU by
tests/kernel_tests/aot_sm90.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.core import invariant
from jetspec.core.interfaces import AttentionMeta
from jetspec.core.tree import DraftTree
from jetspec.testing.exactness import first_inexact_node, padded_tree_logits, paged_cache

CAPACITY = 4096


@pytest.fixture
def fresh_options(monkeypatch):
    """launch_options decided again, under this test's environment and capability."""
    monkeypatch.setattr(invariant, "_LAUNCH_ON", {})
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("JETSPEC_PDL", raising=False)
    return monkeypatch


DEFAULT = int(invariant.PDL_DEFAULT)


SMS = 132


@pytest.fixture
def gpu(fresh_options):
    """A CUDA device of SMS SMs whose capability the test sets."""
    fresh_options.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(multi_processor_count=SMS))
    return lambda capability: fresh_options.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


@pytest.mark.parametrize("capability, env, mode", [((9, 0), None, DEFAULT), ((10, 0), None, DEFAULT), ((8, 9), None, 0),
                                                   ((9, 0), "0", 0), ((9, 0), "1", 1), ((8, 0), "1", 0)])
def test_pdl_is_on_exactly_where_the_gpu_has_it_and_it_is_not_turned_off(fresh_options, gpu, capability, env, mode):
    gpu(capability)
    if env is not None:
        fresh_options.setenv("JETSPEC_PDL", env)
    opts = invariant.launch_options(torch.device("cuda", 0), programs=8)
    assert opts == {"enable_fp_fusion": False, "launch_pdl": mode > 0, "PDL": mode}


def test_only_a_grid_of_at_most_one_program_per_sm_is_launched_early(gpu):
    gpu((9, 0))
    device = torch.device("cuda", 0)
    assert [invariant.launch_options(device, programs)["launch_pdl"] for programs in (1, SMS, SMS + 1, 384)] == [
        True, True, False, False]
    assert {invariant.launch_options(device, programs)["PDL"] for programs in (1, 384)} == {1}  # both wait first


def test_a_mode_it_does_not_know_is_refused_in_one_line_naming_the_allowed_ones(fresh_options):
    fresh_options.setenv("JETSPEC_PDL", "on")
    with pytest.raises(ValueError, match=r"JETSPEC_PDL='on': allowed are 0 \(off\) and 1 "):
        invariant.launch_options(torch.device("cpu"))


def test_pdl_is_off_in_the_interpreter_and_on_the_cpu(fresh_options, gpu):
    gpu((9, 0))
    fresh_options.setenv("JETSPEC_PDL", "1")
    assert invariant.launch_options(torch.device("cpu"))["PDL"] == 0
    fresh_options.setenv("TRITON_INTERPRET", "1")
    assert invariant.launch_options(torch.device("cuda", 1))["PDL"] == 0


HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)


@pytest.fixture(scope="module")
def models():
    from support.gpu_exact import exact_graphed_fast
    return exact_graphed_fast()


def logits(target, fast, context: int, tree: DraftTree, pdl: int, graphed: bool) -> torch.Tensor:
    """The tree's logits after `context` committed tokens, the invariant kernels launched in PDL mode
    `pdl` (`launch_options` pinned for the device meanwhile; 1: every grid launched early, whatever its size)."""
    from support.gpu_exact import fill

    key = ("cuda", torch.cuda.current_device())
    saved = invariant._LAUNCH_ON.pop(key, None)
    opts = dict(invariant.LAUNCH, launch_pdl=pdl > 0, PDL=pdl)
    invariant._LAUNCH_ON[key] = (opts, opts, 1 << 30)
    try:
        cache = paged_cache(target, CAPACITY, "gather")
        fill(fast, cache, context, seed=context)
        if not graphed:
            return padded_tree_logits(target, cache, tree)
        cache.begin(tree.size)  # a fresh cache: a fresh capture, with this launch mode
        return target.forward(tree.tokens.cuda(), AttentionMeta.for_tree(tree, context, "cuda"), cache).logits.clone()
    finally:
        del invariant._LAUNCH_ON[key]
        if saved is not None:
            invariant._LAUNCH_ON[key] = saved


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="GPU test: programmatic dependent launch needs an sm_90+ GPU; this machine has none")
@settings(max_examples=8, deadline=None)
@given(context=st.integers(1, 2500), n=st.integers(1, 64), graphed=st.booleans(), data=st.data())
def test_kernels_launched_early_give_the_bits_of_kernels_launched_in_turn(models, context, n, graphed, data):
    exact, graphs, fast = models
    parents = [-1] + [data.draw(st.integers(0, i - 1)) for i in range(1, n)]
    tree = DraftTree.from_parents(data.draw(st.permutations(range(1000)))[:n], parents)
    target = graphs if graphed else exact
    early = logits(target, fast, context, tree, pdl=1, graphed=graphed)
    in_turn = logits(target, fast, context, tree, pdl=0, graphed=graphed)
    assert first_inexact_node(early, in_turn, against="the same kernels launched without PDL") is None
