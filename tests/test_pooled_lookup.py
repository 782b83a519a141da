"""The prompt lookup on the device in a batched run (`HeadOptions.lookup_on_device`,
`drafters/head/pool_lookup.py`): each slot's token history grows in the pooled job, and the trees grown
from its tries are the host lookup's trees — the same rounds, every output plain decoding's. A
drafter's device tries are stacked as they are: a malformed entry becomes padding (lossless still),
and a step's tries are of one kind."""

from unittest.mock import patch

import pytest
import torch

import jetspec
from jetspec.core.device_proposal import PAD_PARENT, DeviceProposal, DeviceTrie, FlatTrie
from jetspec.core.errors import PluginError
from jetspec.drafters.head import pool_lookup
from jetspec.drafters.head.drafter import HeadDrafter
from jetspec.testing.device_build import device_trie_problem
from jetspec.testing.models import tiny_decoder_target
from support.registry import make_test_registry

REG = make_test_registry()
PROMPTS = [[3, 4, 5, 3, 4, 5, 3], [9, 8, 7, 6], [1, 2, 1, 2, 1, 2], [7, 7, 7], [5, 6, 5, 6, 5, 6, 5, 6]]


def grown(batch: int, on_device: bool, overlap: bool = False):
    """The default drafter's kind (random causal head, prompt lookup merged in), every step grown on the
    device path (on a CPU the device is the host)."""
    return (jetspec.builder(REG).target(tiny_decoder_target("llama", 0))
            .drafter("jetspec", checkpoint="random", block_size=6, top_k=4, lookup=True, lookup_on_device=on_device)
            .kv_cache("paged").generation(budget=12, max_new_tokens=24, accept_on_device="always", batch_size=batch,
                                          build_on_device=True, overlap=overlap).build())


@pytest.mark.parametrize("overlap", [False, True])
def test_the_lookup_on_the_device_grows_the_host_lookups_trees(overlap):
    runs = {}
    for on_device in (False, True):
        pipe = grown(3, on_device, overlap)
        calls = {"step": 0}
        step = pool_lookup.PooledLookup.step

        def counted(self, *args):
            calls["step"] += 1
            return step(self, *args)

        with patch.object(pool_lookup.PooledLookup, "step", counted):
            results = pipe.generate_many(PROMPTS)
        assert [r.tokens for r in results] == [pipe.generate_plain(p).tokens for p in PROMPTS]
        runs[on_device] = ([r.stats.rounds for r in results], [r.stats.tau for r in results], calls["step"])
    assert runs[True][:2] == runs[False][:2]  # the same trees (the same tries; ties picked alike on the CPU): the same rounds
    assert runs[True][2] > 0 and runs[False][2] == 0  # the histories grew in the pooled jobs


def test_a_device_trie_with_malformed_entries_only_loses_those_entries():
    pipe = grown(2, True)
    real = HeadDrafter.propose_on_device

    def scrambled(drafter, state, budget):
        p = real(drafter, state, budget)
        t = p.trie
        parents = t.parents.clone()
        parents[1::3] = 10_000  # no earlier entry: out of range for a gather
        tokens = t.tokens.clone()
        tokens[2::5] = -4  # outside the vocabulary
        return DeviceProposal(p.tokens, p.logp, DeviceTrie(tokens, parents, t.logp, t.depths, t.depth))

    with patch.object(HeadDrafter, "propose_on_device", scrambled):
        done = list(pipe.batched().run(PROMPTS[:3]))
    for f in done:
        assert f.error is None and f.result.tokens == pipe.generate_plain(PROMPTS[f.index]).tokens


def test_a_step_with_tries_of_two_kinds_fails_in_one_line_naming_the_drafter():
    pipe = grown(2, True)
    real = HeadDrafter.propose_on_device

    def mixed(drafter, state, budget):
        p = real(drafter, state, budget)
        return DeviceProposal(p.tokens, p.logp, FlatTrie([1], [-1], [-0.5], [1])) if state.tokens[0] == 9 else p

    with patch.object(HeadDrafter, "propose_on_device", mixed):
        done = {f.index: f for f in pipe.batched().run([[3, 4, 5, 3], [9, 8, 7]])}
    errors = [f.error for f in done.values() if f.error is not None]
    assert errors and all(isinstance(e, PluginError) and "\n" not in str(e) for e in errors)
    assert "tries of two kinds or widths" in str(errors[0]) and str(errors[0]).startswith("drafter 'jetspec'")


def test_the_kit_reads_a_device_trie_as_the_flat_trie_of_its_real_entries():
    pad = PAD_PARENT
    good = DeviceTrie(torch.tensor([5, 0, 6, 7]), torch.tensor([-1, pad, 0, -1]), torch.tensor([-0.1, float("-inf"), -0.2, -0.3]),
                      torch.tensor([1, 0, 2, 1]), 2)
    assert device_trie_problem(good, 10) is None
    assert "parent is neither -1 nor a real entry" in device_trie_problem(
        DeviceTrie(good.tokens, torch.tensor([-1, pad, 1, -1]), good.logp, good.depths, 2), 10)
    assert "deeper than its depth bound" in device_trie_problem(DeviceTrie(good.tokens, good.parents, good.logp, good.depths, 1), 10)
    assert "two children with one token" in device_trie_problem(
        DeviceTrie(torch.tensor([5, 0, 6, 5]), good.parents, good.logp, good.depths, 2), 10)
