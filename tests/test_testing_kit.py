"""The conformance kit catches what it promises to catch: each deliberately broken component
fails with ONE line naming it, the check and the example."""

import re

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from jetspec import Implementation
from jetspec.caches.dense import DenseKVCache
from jetspec.core.proposal import TokenTrie
from jetspec.core.tree import DraftTree
from jetspec.drafters.ngram import NgramDrafter, NgramOptions
from jetspec.kernels.reference import tree_attention
from jetspec.scorers.best_first import BestFirstOptions, BestFirstScorer
from jetspec.verifiers.greedy import GreedyVerifier
from jetspec.testing import (
    ConformanceError, assemble, check_attention_backend, check_drafter, check_kv_cache, check_scorer, check_verifier,
)
from jetspec.testing.lossless import check_lossless
from jetspec.testing.subject import resolve
from support.registry import make_test_registry

REG = make_test_registry()
FAST = dict(registry=REG, examples=5, targets=("decoder",), shrink=False)  # a failure is found at once; skip shrinking it


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def drafter(name, factory, options=NgramOptions, **kw):
    return Implementation(name, factory, options, **kw)


def fails(check, *args, match, **kw):
    with pytest.raises(ConformanceError) as e:
        check(*args, **kw)
    message = str(e.value)
    assert "\n" not in message, message
    assert re.search(match, message), message
    return message


# ---------------------------------------------------------------------------- static checks
def test_options_must_be_a_strict_pydantic_model_that_accepts_its_defaults():
    class Loose(BaseModel):
        n: int = 1

    class Required(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str

    fails(check_drafter, drafter("loose", NgramDrafter, Loose), match=r"^drafter 'loose': options: Loose must forbid unknown fields", **FAST)
    fails(check_drafter, drafter("req", NgramDrafter, Required), match=r"^drafter 'req': options: Required rejects its defaults: path: Field required", **FAST)
    fails(check_drafter, "ngram", options={"n_max": 0}, match=r"^drafter 'ngram': options: NgramOptions rejects the given options: n_max", **FAST)
    fails(check_drafter, drafter("dict", NgramDrafter, dict), match=r"^drafter 'dict': options: .* is not a pydantic model class", **FAST)


def test_capabilities_are_well_formed_and_satisfiable():
    fails(check_drafter, drafter("str", NgramDrafter, provides="hidden_states"),
          match=r"^drafter 'str': capabilities: provides must be a frozenset of strings", **FAST)
    fails(check_drafter, drafter("form", NgramDrafter, requires=frozenset({"hidden_states"})),
          match=r"requires 'hidden_states': expected 'kind:capability'", **FAST)
    fails(check_drafter, drafter("psychic", NgramDrafter, requires=frozenset({"target:telepathy"})),
          match=r"requires 'target:telepathy' but no registered target provides 'telepathy'", **FAST)


def test_an_unregistered_name_and_a_wrong_object_are_reported():
    fails(check_drafter, "nope", match=r"^drafter 'nope': registration: unknown drafter 'nope'; registered: .*ngram", **FAST)
    fails(check_drafter, drafter("half", lambda o, t: object()),
          match=r"^drafter 'half': protocol: the factory built a object, which is not a Drafter \(missing: .*propose", **FAST)
    fails(check_drafter, drafter("crash", lambda o, t: 1 / 0), match=r"^drafter 'crash': factory: raised ZeroDivisionError", **FAST)


# ---------------------------------------------------------------------------- per-kind contracts
class UnsortedDrafter(NgramDrafter):
    def propose(self, state, budget):
        trie = TokenTrie()
        trie.add_edge((), 5, -2.0)
        trie.add_edge((), 6, -1.0)
        trie.children = lambda path: [(5, -2.0), (6, -1.0)] if path == () else []
        return trie


def test_a_proposal_out_of_order_names_the_drafter_and_the_example():
    msg = fails(check_drafter, drafter("unsorted", UnsortedDrafter),
                match=r"^drafter 'unsorted': proposal: children\(\(\)\) is not sorted by log-prob descending", **FAST)
    assert re.search(r"example \d+ \(kit seed 0\): target tiny-decoder-\d, prompt \[", msg)


class AheadRaises(NgramDrafter):
    """Claims `DraftsAhead`; its draft_ahead fails: only the device path calls it."""

    def draft_ahead(self, hidden, packed, budget):
        raise RuntimeError("queue full\nsecond line")


def test_a_drafter_that_drafts_ahead_is_run_on_the_device_path_too():
    fails(check_drafter, drafter("ahead", AheadRaises),
          match=r"^drafter 'ahead': draft_ahead: raised RuntimeError: queue full \(budget \d+\).*accept_on_device always", **FAST)


class GreedyOverBudget(BestFirstScorer):
    def build(self, proposal, root, budget):
        return super().build(proposal, root, budget + 1)


def test_a_scorer_over_its_budget_fails():
    fails(check_scorer, Implementation("greedy-over", GreedyOverBudget, BestFirstOptions),
          match=r"^scorer 'greedy-over': tree: \d+ draft nodes exceed the budget of \d+", **FAST)


class RootOnly(BestFirstScorer):
    def build(self, proposal, root, budget):
        return DraftTree.root_only(root)


def test_a_scorer_that_always_returns_the_root_alone_fails():
    """Lossless (it is plain decoding), so only the tree contract can catch it."""
    fails(check_scorer, Implementation("root-only", RootOnly, BestFirstOptions),
          match=r"^scorer 'root-only': tree: drafts nothing \(the root alone\) though the budget is \d+ and the "
                r"proposal offers \d+ candidate\(s\) after the root", **FAST)


class OffByOneBonus(GreedyVerifier):
    def accept(self, tree, logits, state):
        acc = super().accept(tree, logits, state)
        return type(acc)(path=acc.path, bonus=(acc.bonus + 1) % logits.shape[-1])


def test_a_verifier_that_changes_the_bonus_fails_the_greedy_round():
    fails(check_verifier, Implementation("off-by-one", OffByOneBonus, NoOptions),
          match=r"^verifier 'off-by-one': greedy round: accepted path \[.*\] \+ bonus \d+, but the target's argmax chain", **FAST)


def test_a_lossy_pipeline_names_the_first_differing_position():
    s = resolve("verifier", Implementation("off-by-one", OffByOneBonus, NoOptions), None, REG)
    msg = fails(check_lossless, s, lambda ex: assemble(ex.target, drafter=NgramDrafter(), verifier=OffByOneBonus()),
                5, ("decoder",), 0, False, match=r"^verifier 'off-by-one': lossless: output differs from plain greedy at position \d+ ")
    assert "example" in msg and "max_new_tokens" in msg


class NoCompaction(DenseKVCache):
    def commit(self, keep):  # keeps the first len(keep) pending entries instead of `keep`
        super().commit(range(len(keep)))


def test_a_cache_that_commits_the_wrong_entries_fails_its_semantics():
    fails(check_kv_cache, Implementation("lazy", lambda o, info, c: NoCompaction(info, c), NoOptions),
          match=r"^kv_cache 'lazy': kv semantics: commit: read\(0\) keys differ", **FAST)


class CausalAttention:
    def attend(self, q, cache, layer, meta, scale):  # ignores the tree: attends as if a chain
        from jetspec.core.interfaces import AttentionMeta

        k, v = cache.read(layer)
        return tree_attention(q, k, v, AttentionMeta.for_chain(meta.num_queries, meta.prefix_len), scale)


def test_an_attention_backend_that_ignores_the_tree_fails():
    fails(check_attention_backend, Implementation("causal", lambda o: CausalAttention(), NoOptions),
          registry=REG, examples=10, shrink=False, match=r"^attention 'causal': attention: differs from tree_attention by .* tree parents")


def test_an_exception_inside_a_check_is_one_line_naming_the_component():
    class Exploding(BestFirstScorer):
        def build(self, proposal, root, budget):
            raise RuntimeError("no trees today\nsecond line")

    fails(check_scorer, Implementation("exploding", Exploding, BestFirstOptions),
          match=r"^scorer 'exploding': tree: raised RuntimeError: no trees today \(budget \d+\)$", **FAST)


def test_the_reference_components_pass_with_a_fresh_seed():
    check_kv_cache("dense", registry=REG, examples=5, seed=None, targets=("decoder",))


def test_every_target_name_the_kit_takes_builds_a_target_and_tiny_target_points_decoder_elsewhere():
    from jetspec.testing import any_tiny_target, tiny_target
    from jetspec.testing.conformance import TARGETS

    assert all(any_tiny_target(name, 0).info.vocab_size == 96 for name in TARGETS)
    with pytest.raises(ValueError, match=r"^unknown tiny model family 'decoder'; .* is tiny_decoder\(seed\); any_tiny_target"):
        tiny_target("decoder", 0)
