"""Every member the pipeline, the kernels or the bench use beyond a kind's Protocol is itself a
Protocol in `core/interfaces.py` ("optional members"), read through `isinstance`, documented for
plugin authors, and checked by the conformance kit wherever a component has it."""

import re
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ConfigDict

import jetspec.core.checks as checks
import jetspec.core.interfaces as interfaces
from jetspec import Implementation
from jetspec.caches.paged import PagedCacheOptions, PagedKVCache
from jetspec.core.errors import IncompatibleError
from jetspec.core.proposal import TokenTrie
from jetspec.drafters.ngram import NgramDrafter, NgramOptions
from jetspec.testing import ConformanceError, check_drafter, check_kv_cache, check_verifier
from jetspec.testing.models import FAMILIES, any_tiny_target
from jetspec.caches.dense import DenseKVCache
from jetspec.verifiers.greedy import GreedyVerifier
from support.registry import make_test_registry

REG = make_test_registry()
FAST = dict(registry=REG, examples=3, targets=("decoder",), shrink=False)
ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ["ReadsHiddenStates", "KeyedProposals", "ResettableVerifier", "GraphSafe", "RowKVCache", "LendsEmbeddings", "PadsForward",
            "AcceptsOnDevice", "CommitsOnDevice", "SpansRanks", "LaunchForms", "ProposesOnDevice", "BuildsOnDevice", "KeepsRowsAhead"]
MEMBERS = ["hidden_layers", "proposal_key", "reset", "graph_safe", "k", "v", "slot_table", "embed", "lm_head", "extra_pending",
           "accept_on_device", "stage_commit", "ranks", "launch_form", "propose_on_device", "build_on_device", "keeps_rows_ahead"]


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def fails(check, *args, match, **kw):
    with pytest.raises(ConformanceError) as e:
        check(*args, **kw)
    assert "\n" not in str(e.value) and re.search(match, str(e.value)), str(e.value)


# ---------------------------------------------------------------------------- declared, documented
def test_no_component_member_is_read_through_getattr_with_a_default():
    pattern = re.compile(r"""getattr\([^,]+,\s*["'](%s)["']""" % "|".join(MEMBERS))
    found = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "jetspec").rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, f"use the Protocol of core/interfaces.py ('optional members') instead: {found}"


@pytest.mark.parametrize("name", OPTIONAL)
def test_each_optional_member_is_a_protocol_named_by_its_kind_and_in_the_plugin_guide(name):
    proto = getattr(interfaces, name)
    assert name in interfaces.__all__ and getattr(proto, "_is_runtime_protocol", False) and proto.__doc__
    kinds = [interfaces.Drafter, interfaces.TreeScorer, interfaces.Verifier, interfaces.KVCache, interfaces.AttentionBackend,
             interfaces.Target]
    assert any(name in (k.__doc__ or "") for k in kinds), f"no kind's Protocol says it may have {name}"
    assert name in (ROOT / "docs" / "plugins.md").read_text(), f"docs/plugins.md does not mention {name}"


def test_the_kit_targets_and_the_built_in_targets_lend_their_embeddings():
    from jetspec.targets.decoder.model import DecoderTarget
    from jetspec.targets.transformers_adapter import TransformersTarget

    for kind in ("decoder", *FAMILIES):
        assert isinstance(any_tiny_target(kind, 0), interfaces.LendsEmbeddings), kind
    for cls in (DecoderTarget, TransformersTarget):
        assert callable(getattr(cls, "embed")) and callable(getattr(cls, "lm_head")), cls


def test_a_head_drafter_over_a_target_that_lends_no_embedding_is_one_line():
    from jetspec.drafters.head.context import ContextDrafter

    class Bare:
        info = any_tiny_target("decoder", 0).info

    with pytest.raises(IncompatibleError, match=r"^a head drafter drafts through its target's embedding and LM head; target Bare"):
        ContextDrafter(None, Bare())


# ---------------------------------------------------------------------------- checked by the kit
def ngram_with(name, **members):
    return Implementation(name, lambda o, t: type(name, (NgramDrafter,), members)(o, t), NgramOptions)


def test_hidden_layers_outside_the_target_fail_the_kit():
    fails(check_drafter, ngram_with("deep", hidden_layers=(0, 99)),
          match=r"^drafter 'deep': hidden_layers: hidden_layers \[0, 99\] must be distinct layers of the target, 0\.\.\d+$", **FAST)


def test_keeps_rows_ahead_that_is_no_bool_fails_the_kit():
    fails(check_drafter, ngram_with("maybe", keeps_rows_ahead="yes"),
          match=r"^drafter 'maybe': keeps_rows_ahead: keeps_rows_ahead is 'yes'; declare True or False$", **FAST)


def _observe_with_rows(self, state, hidden):
    if hidden is None and len(state.tokens) > state.prompt_len:  # a round's rows: it keeps none itself
        raise ValueError("no rows to append")


def test_a_drafter_that_says_it_keeps_its_rows_ahead_but_needs_them_fails_on_the_kits_device_path():
    """`KeepsRowsAhead`: the kit's device-path runs hand its observe no rows after a drafted-ahead
    round, as the pipeline does — a drafter that still needs them fails there, in one line."""
    fails(check_drafter, ngram_with("forgetful", hidden_layers=(0,), keeps_rows_ahead=True, observe=_observe_with_rows,
                                    draft_ahead=lambda self, hidden, packed, budget: None),
          match=r"^drafter 'forgetful': observe: raised ValueError: no rows to append .*accept_on_device always", **FAST)


def test_an_unhashable_proposal_key_fails_the_kit():
    fails(check_drafter, ngram_with("listy", proposal_key=lambda self, b: [b]),
          match=r"^drafter 'listy': proposal_key: proposal_key\(1\) returned an unhashable list", **FAST)


class BudgetShaped(NgramDrafter):
    """Claims one proposal for every budget, but offers a budget-dependent token."""

    def proposal_key(self, budget):
        return ()

    def propose(self, state, budget):
        trie = TokenTrie()
        trie.add_edge((), budget % 7, -1.0)
        return trie


def test_equal_proposal_keys_with_different_proposals_fail_the_kit():
    fails(check_drafter, Implementation("liar", lambda o, t: BudgetShaped(o, t), NgramOptions),
          match=r"^drafter 'liar': proposal_key: budgets \d+ and \d+ share the key \(\) but get different proposals", **FAST)


class ResetFails(GreedyVerifier):
    def reset(self, state):
        raise RuntimeError("no generator")


def test_a_verifier_reset_that_raises_fails_the_kit():
    fails(check_verifier, Implementation("brittle", lambda o: ResetFails(), NoOptions),
          match=r"^verifier 'brittle': reset: raised RuntimeError", **FAST)


class RowsOutOfOrder:
    """A paged cache (correct `read`) that hides its slot table: says its rows are in logical order."""

    slot_table = None

    def __init__(self, info, capacity):
        self.inner = PagedKVCache(info, capacity, PagedCacheOptions(page_size=4, commit="remap"))
        self.capacity, self.k, self.v = capacity, self.inner.k, self.inner.v

    committed = property(lambda self: self.inner.committed)
    pending = property(lambda self: self.inner.pending)

    def __getattr__(self, name):  # reset, begin, write, read, commit
        return getattr(self.inner, name)


def test_a_kv_rows_cache_whose_rows_are_not_where_it_says_fails_the_kit():
    from jetspec.testing.optional_members import check_kv_rows
    from jetspec.testing.subject import resolve

    s = resolve("kv_cache", Implementation("hidden", lambda o, info, c: RowsOutOfOrder(info, c), NoOptions,
                                           provides=frozenset({"kv_rows"})), None, REG)
    fails(check_kv_rows, s, lambda info, c: RowsOutOfOrder(info, c),
          match=r"^kv_cache 'hidden': kv_rows: layer 0: the rows slot_table points at differ from what read returns$")

    class NoRows:
        def __init__(self, info, capacity):
            pass

    fails(check_kv_rows, s, lambda info, c: NoRows(info, c),
          match=r"^kv_cache 'hidden': kv_rows: provides 'kv_rows' but NoRows lacks k, v or slot_table \(RowKVCache\)$")


def test_graph_safe_must_be_a_bool():
    from jetspec.caches.dense import DenseKVCache

    class Vague(DenseKVCache):
        graph_safe = "yes"

    fails(check_kv_cache, Implementation("vague", lambda o, info, c: Vague(info, c), NoOptions),
          match=r"^kv_cache 'vague': graph_safe: graph_safe is 'yes'; declare True or False", **FAST)


def test_a_launch_form_that_changes_between_calls_fails_the_kit():
    from jetspec.kernels.triton_backend import TritonAttention
    from jetspec.testing.optional_members import check_launch_forms
    from jetspec.testing.subject import Subject

    class Restless(TritonAttention):
        calls = 0

        def launch_form(self, rows, prefix_len, chain, key_bytes):
            self.calls += 1
            return self.calls % 2

    s = Subject("attention", Implementation("restless", lambda o: Restless(), NoOptions), NoOptions(), REG)
    fails(check_launch_forms, s, Restless(), match=r"^attention 'restless': launch_form: launch_form\(1, 0, True, 768\) returned 1, "
                                                  r"then 0: it must return the same int each time$")
    check_launch_forms(s, TritonAttention(invariant=True))  # the built-in: passes


class ShallowOnDevice(GreedyVerifier):
    def accept_on_device(self, tree, logits, state):  # the root alone and its bonus: valid, lossless, not accept's
        packed = super().accept_on_device(tree, logits, state)
        packed[0], packed[1], packed[tree.max_depth + 2] = 1, 0, logits[0].argmax()
        return packed


def test_a_verifier_whose_device_path_accepts_less_than_its_host_path_fails_the_kit():
    """Lossless (fewer drafts kept, the right bonus), and a CPU pipeline never calls it: only the
    kit's device-equals-host check catches it."""
    fails(check_verifier, Implementation("shallow", lambda o: ShallowOnDevice(), NoOptions),
          match=r"^verifier 'shallow': accept_on_device: accepts path \[0\] committing \[\d+\] on the device, "
                r"but accept keeps path \[0, \d+.*\] committing .* \(tree parents", **FAST)


class StagesTheFirstEntries(DenseKVCache):
    def stage_commit(self, keep):  # moves pending entries 0..M-1 instead of `keep`; commit itself is right
        super().stage_commit(torch.arange(keep.numel(), device=keep.device))


def test_a_cache_whose_staged_commit_moves_other_entries_fails_the_kit():
    fails(check_kv_cache, Implementation("early", lambda o, info, c: StagesTheFirstEntries(info, c), NoOptions),
          match=r"^kv_cache 'early': stage_commit: read\(0\) keys differ from a host commit's \(round \d+: \d+ pending, "
                r"commit\(\[0, .*\]\) after stage_commit", **FAST)


def test_conforms_is_isinstance_answered_once_per_class():
    """`conforms` (the engine's per-sequence, per-step checks of method Protocols) answers as
    isinstance does, for conforming and non-conforming classes alike, and remembers the class."""

    class Resets:
        def reset(self, state):
            pass

    class Plain:
        pass

    for obj in (Resets(), Plain(), GreedyVerifier()):
        assert checks.conforms(obj, interfaces.ResettableVerifier) == isinstance(obj, interfaces.ResettableVerifier)
    assert checks.conforms(Resets(), interfaces.ResettableVerifier) and not checks.conforms(Plain(), interfaces.ResettableVerifier)
    assert checks._CONFORMS[(Resets, interfaces.ResettableVerifier)] is True  # asked once per class
