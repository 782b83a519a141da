"""Hostile plugins: a drafter, scorer or verifier that returns something wrong gets ONE line naming
it and its plugin, with what was produced before kept in `error.partial`; never a wrong output and
never a raw traceback. Every hostile component behaves for its first rounds, so the partial
result is not empty and must be a prefix of plain decoding's output."""

import itertools
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import jetspec
from jetspec.core.errors import PluginError
from jetspec.core.interfaces import Acceptance
from jetspec.core.proposal import MergedProposal, TokenTrie
from jetspec.core.registry import Implementation, Registry
from jetspec.core.tree import DraftTree
from jetspec.drafters.ngram import NgramDrafter, NgramOptions
from jetspec.scorers.best_first import BestFirstScorer, ChainOptions
from jetspec.verifiers.greedy import GreedyVerifier
from support.models import tiny_target

VOCAB = 96
PROMPT = [4, 5, 6, 4, 5, 6, 4, 5, 6, 4]
GOOD_ROUNDS = 2


def raw_tree(tokens, parents, depths, sizes):
    """A DraftTree that skips `validate` (what a careless plugin can construct)."""
    t = lambda xs: torch.tensor(xs, dtype=torch.int64)  # noqa: E731
    return DraftTree(t(tokens), t(parents), t(depths), t(sizes), torch.zeros(len(tokens)))


SCORERS = {  # name -> (root, budget) -> the bad tree, and the one line expected
    "wrong-root": (lambda root, b: DraftTree.chain([(root + 1) % VOCAB, 7]), "its root token is"),
    "over-budget": (lambda root, b: DraftTree.chain([root] + [(root + 1 + i) % VOCAB for i in range(b + 3)]),
                    "draft nodes; the budget is"),
    "bad-depths": (lambda root, b: raw_tree([root, 7, 8], [-1, 0, 1], [0, 1, 1], [3, 2, 1]), "node 2 has depth 1"),
    "bad-sizes": (lambda root, b: raw_tree([root, 7, 8], [-1, 0, 0], [0, 1, 1], [3, 2, 1]), "subtree"),
    "bad-parent": (lambda root, b: raw_tree([root, 7, 8], [-1, 2, 0], [0, 1, 1], [3, 1, 1]), "node 1 has parent 2"),
    "twin-siblings": (lambda root, b: raw_tree([root, 7, 7], [-1, 0, 0], [0, 1, 1], [3, 1, 1]), "two children with token 7"),
    "oov-token": (lambda root, b: raw_tree([root, VOCAB + 3], [-1, 0], [0, 1], [2, 1]), "outside the vocabulary"),
    "float-tokens": (lambda root, b: DraftTree(*(torch.tensor(x, dtype=torch.float32) for x in ([root], [-1], [0], [1], [0]))),
                     "not 1-d int64 tensors"),
    "not-a-tree": (lambda root, b: None, "returned NoneType from build; expected a DraftTree"),
    "raises": (lambda root, b: {}["missing"], "raised KeyError: 'missing' in build"),
}

DRAFTERS = {  # name -> what children(()) returns (or what propose returns), and the one line expected
    "none-proposal": (None, "returned NoneType from propose; expected a Proposal"),
    "none-children": ("children:None", "children(()) returned None"),
    "oov": ([(VOCAB + 5, -1.0)], "token 101 is outside the vocabulary [0, 96)"),
    "huge": ([(2**70, -1.0)], "is outside the vocabulary [0, 96)"),
    "negative": ([(-1, -1.0)], "token -1 is outside the vocabulary"),
    "string": ([("7", -1.0)], "a token must be an integer id, not str"),
    "float": ([(7.0, -1.0)], "a token must be an integer id, not float"),
    "none-token": ([(None, -1.0)], "a token must be an integer id, not NoneType"),
    "bare-token": ([7], "expected (token, log-prob) pairs"),
    "nan-logp": ([(7, float("nan"))], "not NaN"),
    "duplicate": ([(7, -1.0), (7, -2.0)], "offers token 7 twice"),
    "oov-tuple": (((VOCAB + 5, -1.0),), "token 101 is outside the vocabulary [0, 96)"),  # an immutable row is checked too
    "duplicate-tuple": (((7, -1.0), (7, -2.0)), "offers token 7 twice"),
    # built-in proposal kinds, read unchecked (core/proposal.WellFormed): a bad tree re-reads them through the checks
    "oov-trie": ("trie:oov", "token 101 is outside the vocabulary [0, 96)"),
    "oov-merged": ("merged:oov", "token 101 is outside the vocabulary [0, 96)"),
    "propose-raises": ("raise", "raised RuntimeError: drafter bug in propose"),
    "propose-exits": ("exit", "raised SystemExit: 4 in propose"),
}

VERIFIERS = {
    "detached-path": (lambda tree, good: Acceptance(path=[0, 5], bonus=good.bonus), "node 5 is not a child of node 0"),
    "rootless-path": (lambda tree, good: Acceptance(path=[], bonus=good.bonus), "a path starts at the root"),
    "oov-bonus": (lambda tree, good: Acceptance(path=good.path, bonus=VOCAB), "bonus token 96"),
    "no-acceptance": (lambda tree, good: (good.path, good.bonus), "returned tuple from accept"),
}


class Countdown:
    """Behaves for GOOD_ROUNDS calls, then misbehaves."""

    def __init__(self):
        self.calls = itertools.count()

    def hostile(self) -> bool:
        return next(self.calls) >= GOOD_ROUNDS


class HostileScorer(Countdown):
    def __init__(self, bad):
        super().__init__()
        self.bad, self.good = bad, BestFirstScorer()

    def build(self, proposal, root, budget):
        return self.bad(root, budget) if self.hostile() else self.good.build(proposal, root, budget)


class BadChildren:
    def __init__(self, kids):
        self.kids = kids

    def children(self, path):
        return None if self.kids == "children:None" else (self.kids if path == () else [])


class HostileDrafter(Countdown):
    hidden_layers = ()

    def __init__(self, kids, target):
        super().__init__()
        self.kids, self.good = kids, NgramDrafter(NgramOptions(), target)

    def reset(self, state):
        self.good.reset(state)

    def observe(self, state, hidden):
        self.good.observe(state, hidden)

    def propose(self, state, budget):
        if not self.hostile():
            return self.good.propose(state, budget)
        if self.kids == "raise":
            raise RuntimeError("drafter bug\nwith a second line")
        if self.kids == "exit":
            sys.exit(4)
        if self.kids == "trie:oov":  # a built-in kind holding a token outside the vocabulary
            trie = TokenTrie()
            trie.add_edge((), VOCAB + 5, -1.0)
            return trie
        if self.kids in ("merged:oov", "merged:nan"):  # a merge of built-in kinds, one bad
            good, bad = TokenTrie(), TokenTrie()
            good.add_edge((), 7, -1.0)
            bad.add_edge((), 8, float("nan")) if self.kids == "merged:nan" else bad.add_edge((7,), VOCAB + 5, -0.5)
            return MergedProposal(good, bad)
        return None if self.kids is None else BadChildren(self.kids)


class HostileVerifier(Countdown):
    def __init__(self, bad):
        super().__init__()
        self.bad, self.good = bad, GreedyVerifier()

    def accept(self, tree, logits, state):
        good = self.good.accept(tree, logits, state)
        return self.bad(tree, good) if self.hostile() else good


class Hostile:
    """The plugin registering all of the above."""

    @jetspec.hookimpl
    def jetspec_tree_scorers(self):
        return [Implementation(n, lambda o, bad=bad: HostileScorer(bad), ChainOptions) for n, (bad, _) in SCORERS.items()]

    @jetspec.hookimpl
    def jetspec_drafters(self):
        return [Implementation(n, lambda o, t, k=k: HostileDrafter(k, t), ChainOptions) for n, (k, _) in DRAFTERS.items()]

    @jetspec.hookimpl
    def jetspec_verifiers(self):
        return [Implementation(n, lambda o, bad=bad: HostileVerifier(bad), ChainOptions) for n, (bad, _) in VERIFIERS.items()]


REG = Registry.create(builtin_modules=jetspec.BUILTINS, extra_plugins=[("hostile", Hostile())], entry_points=False)
TARGET = tiny_target("llama", 1)
PLAIN = jetspec.builder(REG).target(TARGET).generation(budget=0, max_new_tokens=40).build().generate(PROMPT).tokens


def run(drafter="ngram", scorer="best-first", verifier="greedy"):
    pipe = (jetspec.builder(REG).target(TARGET).drafter(drafter).scorer(scorer).verifier(verifier)
            .generation(budget=8, max_new_tokens=40).build())
    return pipe.generate(PROMPT)


def assert_one_line_with_partial(e: PluginError, who: str, expected: str):
    message = str(e)
    assert "\n" not in message and message.startswith(who) and expected in message, message
    partial = e.partial.tokens
    assert partial and partial == PLAIN[: len(partial)]  # kept, and correct as far as it goes


def test_the_hostile_plugin_registers_cleanly_and_the_good_pipeline_matches_plain():
    assert not REG.problems
    assert run().tokens == PLAIN


@pytest.mark.parametrize("name", SCORERS)
def test_a_bad_tree_is_one_line_naming_the_scorer(name):
    with pytest.raises(PluginError) as info:
        run(scorer=name)
    assert_one_line_with_partial(info.value, f"scorer '{name}' (plugin 'hostile')", SCORERS[name][1])


@pytest.mark.parametrize("name", DRAFTERS)
def test_a_bad_proposal_is_one_line_naming_the_drafter(name):
    with pytest.raises(PluginError) as info:
        run(drafter=name)
    assert_one_line_with_partial(info.value, f"drafter '{name}' (plugin 'hostile')", DRAFTERS[name][1])


def test_a_nan_log_prob_in_a_built_in_proposal_kind_changes_no_output():
    """Built-in kinds are read without the per-row checks: a NaN log-prob there (which a bad head
    could produce) makes a poor tree, not a wrong one — the tree check still holds every node to
    the round, and the output stays plain decoding's."""

    class NanDrafters:
        @jetspec.hookimpl
        def jetspec_drafters(self):
            return [Implementation("nan-merged", lambda o, t: HostileDrafter("merged:nan", t), ChainOptions)]

    reg = Registry.create(builtin_modules=jetspec.BUILTINS, extra_plugins=[("nan", NanDrafters())], entry_points=False)
    pipe = jetspec.builder(reg).target(TARGET).drafter("nan-merged").generation(budget=8, max_new_tokens=40).build()
    assert pipe.generate(PROMPT).tokens == PLAIN


@pytest.mark.parametrize("name", VERIFIERS)
def test_a_bad_acceptance_is_one_line_naming_the_verifier(name):
    with pytest.raises(PluginError) as info:
        run(verifier=name)
    assert_one_line_with_partial(info.value, f"verifier '{name}' (plugin 'hostile')", VERIFIERS[name][1])


def test_a_drafter_asking_for_a_layer_the_target_lacks_is_one_line_at_build():
    class DeepDrafter(NgramDrafter):
        hidden_layers = (0, 99)

    class Deep:
        @jetspec.hookimpl
        def jetspec_drafters(self):
            return [Implementation("deep", lambda o, t: DeepDrafter(), NgramOptions)]

    reg = Registry.create(builtin_modules=jetspec.BUILTINS, extra_plugins=[("deep", Deep())], entry_points=False)
    with pytest.raises(PluginError, match=r"^drafter 'deep' \(plugin 'deep'\) asks for hidden_layers \[0, 99\]; the target has layers 0\.\.1$"):
        jetspec.builder(reg).target(TARGET).drafter("deep").build()


def test_a_factory_that_builds_no_drafter_is_one_line():
    class NoDrafter:
        @jetspec.hookimpl
        def jetspec_drafters(self):
            return [Implementation("nothing", lambda o, t: object(), ChainOptions)]

    reg = Registry.create(builtin_modules=jetspec.BUILTINS, extra_plugins=[("empty", NoDrafter())], entry_points=False)
    with pytest.raises(PluginError, match=r"^drafter 'nothing' \(plugin 'empty'\): its factory returned object, which is not a Drafter$"):
        jetspec.builder(reg).target(TARGET).drafter("nothing").build()


MUTATIONS = ("root", "token", "oov", "parent", "depth", "size", "extra-node", "drop-node", "swap")


def mutate(tree: DraftTree, how: str, at: int) -> DraftTree:
    """`tree` with one field changed; some changes keep a valid tree, most do not."""
    tokens, parents, depths, sizes = (x.clone() for x in (tree.tokens, tree.parents, tree.depths, tree.subtree_sizes))
    n = tokens.numel()
    i = 1 + at % max(n - 1, 1) if n > 1 else 0
    if how == "root":
        tokens[0] = (tokens[0] + 1) % VOCAB
    elif how == "token" and n > 1:
        tokens[i] = (tokens[i] + 1 + at) % VOCAB  # may stay valid (lossless anyway) or twin a sibling
    elif how == "oov":
        tokens[i] = VOCAB + at
    elif how == "parent" and n > 1:
        parents[i] = (parents[i] + 1) % n
    elif how == "depth":
        depths[i] += 1
    elif how == "size":
        sizes[i] += 1
    elif how == "extra-node":
        cat = lambda a, v: torch.cat([a, torch.tensor([v])])  # noqa: E731
        tokens, parents, depths, sizes = cat(tokens, at % VOCAB), cat(parents, 0), cat(depths, 1), cat(sizes, 1)
    elif how == "drop-node" and n > 1:
        tokens, parents, depths, sizes = (x[:-1] for x in (tokens, parents, depths, sizes))
    elif how == "swap" and n > 2:
        tokens[[1, 2]] = tokens[[2, 1]]
    return DraftTree(tokens, parents, depths, sizes, torch.zeros(tokens.numel()))


@given(how=st.sampled_from(MUTATIONS), at=st.integers(0, 40), after=st.integers(0, 4), budget=st.integers(1, 12))
def test_a_mutated_tree_gives_one_line_or_the_plain_output_never_a_wrong_one(how, at, after, budget):
    calls = itertools.count()

    class Mutating:
        def build(self, proposal, root, b):
            tree = BestFirstScorer().build(proposal, root, b)
            return mutate(tree, how, at) if next(calls) == after else tree

    pipe = jetspec.builder(REG).target(TARGET).drafter("ngram").generation(budget=budget, max_new_tokens=40).build()
    pipe.scorer = Mutating()
    try:
        tokens = pipe.generate(PROMPT).tokens
    except PluginError as e:
        assert "\n" not in str(e) and e.partial.tokens == PLAIN[: len(e.partial.tokens)]
    else:
        assert tokens == PLAIN


class ShortLogits:
    """A target whose forward, after its first calls, returns one logits row too few or raises."""

    def __init__(self, inner, how):
        self.inner, self.how, self.calls = inner, how, itertools.count()
        self.info, self.tokenizer, self.provides = inner.info, None, ("hidden_states",)

    def forward(self, tokens, meta, cache, hidden_layers=()):
        out = self.inner.forward(tokens, meta, cache, hidden_layers)
        if next(self.calls) < 1 + GOOD_ROUNDS:  # the prefill and the good rounds
            return out
        if self.how == "raise":
            raise IndexError("index 3 is out of bounds")
        return type(out)(logits=out.logits[:-1], hidden=out.hidden)


@pytest.mark.parametrize("how, expected", [("short", "returned logits of shape"), ("raise", "raised IndexError: index 3 is out of bounds in forward")])
def test_a_bad_target_output_is_one_line_naming_the_target(how, expected):
    pipe = jetspec.builder(REG).target(ShortLogits(TARGET, how)).drafter("ngram").generation(budget=8, max_new_tokens=40).build()
    with pytest.raises(PluginError) as info:
        pipe.generate(PROMPT)
    assert_one_line_with_partial(info.value, "target 'ShortLogits'", expected)


def test_a_row_offered_again_is_trusted_only_if_nothing_in_it_can_change():
    """`Checked` reads an immutable row (a tuple of tuples) once; a tuple of lists may change after
    it was checked, so it is read again each time it is offered."""
    from jetspec.core.checks import Checked

    row = ([7, -1.0],)

    class Shifty:
        def children(self, path):
            return row

    checked = Checked(Shifty(), "drafter 'shifty'", VOCAB)
    assert list(checked.children(())) == [[7, -1.0]]
    row[0][0] = VOCAB + 4
    with pytest.raises(PluginError, match="token 100 is outside the vocabulary"):
        checked.children((7,))
