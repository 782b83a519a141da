"""What the decode loop checks of the objects its components hand it, every round.

Drafters, scorers and verifiers are code the pipeline does not own, and a wrong tree does not
crash: a tree with another root, more nodes than the budget or broken DFS intervals silently
changes the output. So each round

* every `children(path)` list a proposal gives is checked as the scorer reads it (`Checked`):
  (token, log-prob) pairs, tokens distinct integers inside the vocabulary, log-probs real numbers —
  except a built-in kind's (`core/proposal.WellFormed`, `reading`), well-formed by construction;
  when its tree fails, it is re-read through `Checked` to name the fault's owner (`blame_proposal`);
* the tree is checked against the round (`check_tree`): its root is the last committed token, it
  has at most `budget` drafts, in-vocabulary tokens, and the invariants of `DraftTree.validate`
  (parents, depths, subtree sizes, distinct siblings), vectorised: a handful of array ops over
  the N nodes, no device sync for a tree on the host (where scorers build them); only a failing
  tree is walked by `validate` to name the first broken invariant;
* the acceptance is a root-down path of the tree plus an in-vocabulary bonus (`check_acceptance`).

Anything wrong, or any exception other than a `JetSpecError` raised inside a component (`Blame`),
is a `PluginError` of one line naming the component and the plugin that registered it.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Sequence

import torch

from .errors import InputError, JetSpecError, PluginError
from .interfaces import Acceptance, Proposal
from .proposal import MergedProposal, WellFormed
from .tree import DraftTree, invariants_hold


def one_line(e: BaseException) -> str:
    """`Type: first line of the message`."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class Blame:
    """`with Blame(who, "in propose"):` turns an exception (or a `sys.exit()` call) into a one-line
    `PluginError` naming the component (the original stays chained as its cause). Passed through
    unchanged: a `JetSpecError` (already one line) and an `AssertionError` (a failed `assert` is a
    test's or a checker's report, e.g. the conformance kit's, and keeps its traceback)."""

    __slots__ = ("who", "where")

    def __init__(self, who: str, where: str):
        self.who, self.where = who, where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, e: BaseException | None, tb: Any) -> bool:
        if e is None or isinstance(e, (JetSpecError, AssertionError)) or not isinstance(e, (Exception, SystemExit)):
            return False  # KeyboardInterrupt and the like stay what they are
        raise PluginError(f"{self.who} raised {one_line(e)} {self.where}") from e


_CONFORMS: dict[tuple[type, type], bool] = {}


def conforms(obj: Any, protocol: type) -> bool:
    """isinstance(obj, protocol), answered once per (class, protocol), for runtime-checkable
    Protocols whose members are methods (a method is found on the class; a data member may differ
    between instances: check those with isinstance). A Protocol isinstance looks up every member
    on each call (~10 µs), and the batched engine asks per sequence per step."""
    key = (type(obj), protocol)
    hit = _CONFORMS.get(key)
    if hit is None:
        hit = _CONFORMS[key] = isinstance(obj, protocol)
    return hit


def well_formed(proposal: Any) -> bool:
    """A built-in kind (`WellFormed`), or a `MergedProposal` of such."""
    if type(proposal) is MergedProposal:
        return all(well_formed(p) for p in proposal.parts)
    return isinstance(proposal, WellFormed)


def reading(proposal: Any, who: str, vocab: int) -> Any:
    """`proposal` as the round's scorer reads it: a well-formed one as it is, any other `Checked`."""
    return proposal if well_formed(proposal) else Checked(proposal, who, vocab)


def blame_proposal(proposal: Any, build: Any, who: str, vocab: int) -> None:
    """After a failed build or tree check: raise the drafter's fault, if the proposal has one. A
    `Checked` one re-reads the paths the scorer asked for; an unchecked (well-formed) one is built
    again, `build(checked)`, through `Checked` first."""
    if not isinstance(proposal, Checked):
        proposal = Checked(proposal, who, vocab)
        try:
            build(proposal)
        except Exception:  # the scorer's failure again, or the drafter's fault, raised by blame below
            pass
    proposal.blame()


class Checked:
    """A proposal whose `children` lists are checked as a scorer reads them.

    The fast path accepts a list or tuple of (int, float) pairs inside the vocabulary in one
    loop over it, and a tuple it has accepted before (the same object: a parallel head's
    per-depth row, offered under every path of that length) without reading it again; anything
    else (other number types, a malformed item) goes through `_strict`, which
    converts what it can and names what it cannot. Twin siblings are not looked for here (the
    tree check finds them): when a build or a tree check fails, `blame` re-reads every path the
    scorer asked for strictly, so a drafter's fault is reported as the drafter's."""

    __slots__ = ("inner", "who", "vocab", "paths", "fault", "_accepted")

    def __init__(self, inner: Any, who: str, vocab: int):
        if not conforms(inner, Proposal):
            raise PluginError(f"{who} returned {type(inner).__name__} from propose; expected a Proposal (an object with children(path))")
        self.inner, self.who, self.vocab = inner, who, vocab
        self.paths: list[tuple[int, ...]] = []
        self.fault: PluginError | None = None
        self._accepted: dict[int, tuple] = {}  # id -> tuple that passed (held, so that its id is not reused)

    def children(self, path: tuple[int, ...]) -> Sequence[tuple[int, float]]:
        self.paths.append(path)
        kids = self._read(path)
        frozen = type(kids) is tuple  # immutable all the way down if every pair is a tuple too
        if frozen and self._accepted.get(id(kids)) is kids:  # checked already
            return kids
        if kids is None:
            return self._strict(path, kids, twins=False)
        vocab = self.vocab
        for pair in kids:  # one pass, no generator: a scorer reads ~one row per node it adds
            if type(pair) is not tuple:
                if type(pair) is not list or len(pair) != 2:
                    return self._strict(path, kids, twins=False)
                frozen = False
            elif len(pair) != 2:
                return self._strict(path, kids, twins=False)
            t, lp = pair
            if type(t) is not int or not 0 <= t < vocab or type(lp) is not float or lp != lp:
                return self._strict(path, kids, twins=False)
        if frozen:
            self._accepted[id(kids)] = kids
        return kids

    def blame(self) -> None:
        """Raise the drafter's fault, if any path the scorer read was malformed."""
        if self.fault is None:
            for path in self.paths:
                self._strict(path, self._read(path), twins=True)
        if self.fault is not None:
            raise self.fault

    def _read(self, path: tuple[int, ...]) -> Any:
        try:
            kids = self.inner.children(path)
        except (JetSpecError, AssertionError):
            raise
        except (Exception, SystemExit) as e:
            self._fail(f"{self.who} raised {one_line(e)} in children({path})", e)
        return kids if type(kids) is list or type(kids) is tuple or kids is None else list(kids)

    def _fail(self, message: str, cause: BaseException | None = None) -> None:
        self.fault = PluginError(message)
        raise self.fault from cause

    def _strict(self, path: tuple[int, ...], kids: Any, twins: bool) -> list[tuple[int, float]]:
        if kids is None:
            self._fail(f"{self.who}: children({path}) returned None; expected a list of (token, log-prob) pairs")
        out: list[tuple[int, float]] = []
        seen: set[int] = set()
        for item in kids:
            token, logp = self._pair(path, item)
            if twins and token in seen:
                self._fail(f"{self.who}: children({path}) offers token {token} twice; sibling tokens must differ")
            seen.add(token)
            out.append((token, logp))
        return out

    def _pair(self, path: tuple[int, ...], item: Any) -> tuple[int, float]:
        where = f"{self.who}: children({path}) holds {_short(item)}"
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            self._fail(f"{where}; expected (token, log-prob) pairs")
        token, logp = item
        if isinstance(token, (bool, float)) or not hasattr(type(token), "__index__"):
            self._fail(f"{where}; a token must be an integer id, not {type(token).__name__}")
        token = operator.index(token)
        if not 0 <= token < self.vocab:
            self._fail(f"{where}; token {token} is outside the vocabulary [0, {self.vocab})")
        try:
            logp = float(logp)
        except (TypeError, ValueError):
            self._fail(f"{where}; a log-prob must be a number, not {type(logp).__name__}")
        if math.isnan(logp):
            self._fail(f"{where}; a log-prob must be a number, not NaN")
        return token, logp


def check_tree(tree: Any, root: int, budget: int, vocab: int, who: str) -> DraftTree:
    """`tree` as the round needs it, or a one-line `PluginError` naming `who` (see module doc)."""
    if not isinstance(tree, DraftTree):
        raise PluginError(f"{who} returned {type(tree).__name__} from build; expected a DraftTree")
    fields = (tree.tokens, tree.parents, tree.depths, tree.subtree_sizes)
    if not all(isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.dim() == 1 for t in fields):
        raise PluginError(f"{who} built a tree whose tokens/parents/depths/subtree_sizes are not 1-d int64 tensors")
    n = tree.tokens.numel()
    if n == 0 or any(t.numel() != n for t in fields) or tree.scores.shape != (n,):
        raise PluginError(f"{who} built a tree whose fields do not all have shape [N]")
    if n - 1 > budget:
        raise PluginError(f"{who} built a tree of {n - 1} draft nodes; the budget is {budget}")
    if not _consistent(tree, root, vocab):
        raise PluginError(f"{who} built an invalid tree: {_first_problem(tree, root, vocab)}")
    return tree


def _consistent(tree: DraftTree, root: int, vocab: int) -> bool:
    """Every invariant holds (`tree.invariants_hold`), the root is the last committed token, and
    every token is in the vocabulary (a tree on the device is copied once)."""
    tokens, parents, depths, sizes = (x.tolist() for x in (tree.tokens, tree.parents, tree.depths, tree.subtree_sizes))
    if not (tokens[0] == root and min(tokens) >= 0 and max(tokens) < vocab):
        return False
    return invariants_hold(tokens, parents, depths, sizes)


def _first_problem(tree: DraftTree, root: int, vocab: int) -> str:
    """The slow path: name the first broken invariant."""
    tokens = tree.tokens.tolist()
    if tokens[0] != root:
        return f"its root token is {tokens[0]}, but the last committed token is {root}"
    bad = next((t for t in tokens if not 0 <= t < vocab), None)
    if bad is not None:
        return f"token {bad} is outside the vocabulary [0, {vocab})"
    try:
        tree.validate()
    except InputError as e:
        return str(e)
    return "its invariants do not hold"  # unreachable while _consistent and validate agree


def check_acceptance(acc: Any, tree: DraftTree, vocab: int, who: str) -> Acceptance:
    """A root-down path of `tree` plus an in-vocabulary bonus token, or a one-line `PluginError`."""
    if not isinstance(acc, Acceptance):
        raise PluginError(f"{who} returned {type(acc).__name__} from accept; expected an Acceptance")
    try:
        path: Sequence[int] = [operator.index(x) for x in acc.path]
    except TypeError:
        raise PluginError(f"{who} accepted path {_short(acc.path)}; a path is a list of node indices") from None
    parents = tree.parents.tolist()
    if not path or path[0] != 0:
        raise PluginError(f"{who} accepted path {_short(path)}; a path starts at the root (node 0)")
    for a, b in zip(path, path[1:]):
        if not (0 < b < len(parents) and parents[b] == a):
            raise PluginError(f"{who} accepted path {_short(path)}: node {b} is not a child of node {a}")
    bonus = acc.bonus
    if isinstance(bonus, (bool, float)) or not hasattr(type(bonus), "__index__") or not 0 <= operator.index(bonus) < vocab:
        raise PluginError(f"{who} returned bonus token {_short(bonus)}; expected an integer id in [0, {vocab})")
    return acc


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."
