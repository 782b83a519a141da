"""`compiled = true`: the head drafter's one-forward draft and context append through torch.compile.
The compiled steps draft what the eager ones draft (up to float rounding: the same top-k tokens,
log-probs within 1e-4), across rounds and context-buffer growth, without a recompile per shape or
per drafter; on CUDA replayed from the CUDA graphs as before. Drafts only, so generation stays
exactly plain decoding. Compiling takes ~10-20 s of a CPU per test process (inductor, C++)."""

import shutil

import pytest
import torch
from torch._dynamo.utils import counters

import jetspec
from head_fixtures import HeadTarget, assert_drafts_alike, observed, tiny_llama
from jetspec.drafters.head import HeadOptions, jetspec_drafter
from support.models import tiny_target
from support.plain import plain_output
from support.registry import make_test_registry

PROMPT = [5, 17, 33, 8, 61, 12, 40, 9]
pytestmark = pytest.mark.skipif(shutil.which("cc") is None and not torch.cuda.is_available(),
                                reason="torch.compile on a CPU needs a C compiler; this machine has none")


def test_compiled_steps_draft_what_the_eager_steps_draft_with_one_compile_for_every_shape_and_drafter():
    target = HeadTarget(tiny_llama())
    eager = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=4, lookup=False), target)
    torch._dynamo.reset()
    counters.clear()
    compiled = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=4, lookup=False, compiled=True), target)
    assert_drafts_alike(eager, compiled, target)
    graphs = counters["stats"]["unique_graphs"]
    another = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=4, lookup=False, compiled=True), target)
    assert_drafts_alike(eager, another, target, capacity=4)
    assert counters["stats"]["unique_graphs"] == graphs  # another drafter, other buffers: nothing compiled again


def test_a_compiled_head_drafts_losslessly():
    target = tiny_target("llama", 0)
    pipe = (jetspec.builder(make_test_registry()).target(target).drafter("jetspec", checkpoint="random", block_size=5, compiled=True)
            .generation(budget=12, max_new_tokens=24).build())  # fmt: skip
    for prompt in ([3, 14, 15, 9, 26], [5, 35, 8, 9, 7, 9, 3, 2, 3, 8, 4]):
        assert tuple(pipe.generate(prompt).tokens) == plain_output("llama", 0, tuple(prompt), 24)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU; this machine has none")
def test_compiled_steps_replayed_from_cuda_graphs_draft_what_the_eager_steps_draft():
    gpu = HeadTarget(tiny_llama(), device="cuda")
    eager = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=4, lookup=False, cuda_graphs=False), gpu)
    compiled = jetspec_drafter(HeadOptions(checkpoint="random", block_size=6, top_k=4, lookup=False, compiled=True), gpu)
    assert compiled.graphs is not None
    assert_drafts_alike(eager, compiled, gpu)
    assert len(compiled.graphs.graphs) == 2  # draft + append over the last buffers; stale ones dropped


def test_compiled_drafters_drafting_together_leave_what_eager_drafters_drafting_together_leave():
    from test_context_pool import PROMPTS, assert_same_state, drafters, round_result

    target = HeadTarget(tiny_llama())
    eager, compiled = drafters(target, 3), drafters(target, 3, compiled=True)
    for group in (eager, compiled):
        for d, p in zip(group, PROMPTS):
            observed(d, target, p)
    for step in range(2):
        results = [round_result(10 * step + i, n=7 + i, d=2 + i, k=1 + (step + i) % 3) for i in range(3)]
        for group in (eager, compiled):
            assert group[0].draft_ahead_together(group, [h for h, _ in results], [p for _, p in results], budget=16)
        for e, c, (_, packed) in zip(eager, compiled, results):
            assert_same_state(e, c, rows=e.cache.length + (len(packed) - 1) // 2)


def test_compiled_rescoring_conditions_children_as_eager_rescoring_does():
    target = HeadTarget(tiny_llama())
    options = dict(checkpoint="random", block_size=6, top_k=4, lookup=False, rescore=True, rescore_passes=2)
    eager = jetspec_drafter(HeadOptions(**options), target)
    compiled = jetspec_drafter(HeadOptions(**options, compiled=True), target)
    for prompt in (PROMPT, PROMPT + [21, 22, 23, 24, 25]):  # two context lengths, two candidate trees
        pe, pc = eager.propose(observed(eager, target, prompt), budget=12), compiled.propose(observed(compiled, target, prompt), budget=12)
        paths, i = [()], 0
        while i < min(len(paths), 12):  # breadth-first over eager's proposal: the same children, the same log-probs
            path, i = paths[i], i + 1
            ke, kc = pe.children(path), pc.children(path)
            assert [t for t, _ in ke] == [t for t, _ in kc]
            assert torch.allclose(torch.tensor([lp for _, lp in ke]), torch.tensor([lp for _, lp in kc]), atol=1e-4)
            paths += [path + (t,) for t, _ in ke]
        assert len(paths) > 12  # the trie was read below its root
