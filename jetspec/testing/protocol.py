"""Protocol checks: what every component must satisfy before any decoding.

* the options model is a pydantic model, forbids unknown fields (so a typo in a config is an
  error, not a silent default), and validates with its defaults or the options given;
* capabilities: `provides` is a set of names (`[a-z0-9_.-]+`), `requires` a set of "kind:cap"
  with a known kind and a capability some registered implementation (or a kit target) provides;
* the built object satisfies its `typing.Protocol` (`isinstance` with a runtime-checkable one);
* a proposal's `children(path)` are distinct in-vocabulary tokens with log-probs <= 0, sorted
  descending; a tree is valid (`DraftTree.validate`), has the given root and at most `budget`
  drafts, at least one when the budget is >= 1 and the proposal offers a candidate after the
  root, is made of the proposal's candidates, and scores each node by its cumulative log-prob;
* an acceptance is a root-down path of the tree plus an in-vocabulary bonus token.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from ..core import hookspecs
from ..core.errors import JetSpecError
from ..core.interfaces import Acceptance, Proposal
from ..core.registry import Implementation, format_validation_error, validate_options
from ..core.tree import DraftTree
from .subject import ConformanceError, Subject

CAPABILITY = re.compile(r"[a-z0-9][a-z0-9_.-]*")
KIT_TARGET_PROVIDES = frozenset({"hidden_states", "attention_backend"})  # the tiny targets
MAX_WALK = 64  # proposal nodes inspected per proposal


def check_options(kind: str, impl: Implementation, values: dict[str, Any] | None) -> BaseModel:
    label = f"{kind} '{impl.name}'"
    model = impl.options
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConformanceError(f"{label}: options: {model!r} is not a pydantic model class")
    if model.model_config.get("extra") != "forbid":
        raise ConformanceError(
            f"{label}: options: {model.__name__} must forbid unknown fields "
            "(model_config = ConfigDict(extra='forbid')) so a misspelt option is an error"
        )
    try:
        model.model_json_schema()
        return validate_options(model, values or {})  # as the registry does: strict, finite
    except ValidationError as e:
        given = "the given options" if values else "its defaults"
        raise ConformanceError(f"{label}: options: {model.__name__} rejects {given}: {format_validation_error(e)}") from None
    except ValueError as e:  # a NaN or infinity (validate_options)
        raise ConformanceError(f"{label}: options: {model.__name__} rejects {'the given options' if values else 'its defaults'}: {e}") from None
    except Exception as e:
        raise ConformanceError(f"{label}: options: {model.__name__} is broken: {type(e).__name__}: {e}") from None


def check_capabilities(s: Subject) -> None:
    impl = s.impl
    for field in ("provides", "requires"):
        value = getattr(impl, field)
        if not isinstance(value, (set, frozenset)) or not all(isinstance(c, str) for c in value):
            s.fail("capabilities", f"{field} must be a frozenset of strings, got {value!r}")
    for cap in sorted(impl.provides):
        if not CAPABILITY.fullmatch(cap):
            s.fail("capabilities", f"provides '{cap}': a capability is a lower-case name like 'hidden_states'")
    for req in sorted(impl.requires):
        kind, sep, cap = req.partition(":")
        if not sep or kind not in hookspecs.KINDS or not CAPABILITY.fullmatch(cap):
            s.fail("capabilities", f"requires '{req}': expected 'kind:capability' with kind one of {', '.join(hookspecs.KINDS)}")
        offered = set().union(*(i.provides for i in s.registry.implementations[kind].values()))
        if kind == "target":
            offered |= KIT_TARGET_PROVIDES
        if cap not in offered:
            s.fail("capabilities", f"requires '{req}' but no registered {kind} provides '{cap}'")


def check_registration(s: Subject) -> None:
    """The registry reported no problem for the plugin that registered the subject."""
    if s.impl.plugin:
        mine = [p for p in s.registry.problems if p.startswith(f"plugin '{s.impl.plugin}'")]
        if mine:
            s.fail("registration", mine[0])


def check_instance(s: Subject, obj: Any, protocol: type) -> Any:
    if not isinstance(obj, protocol):
        members = {m for m in vars(protocol) if not m.startswith("_")} | set(getattr(protocol, "__annotations__", {}))
        missing = [m for m in members if not hasattr(obj, m)]
        s.fail("protocol", f"the factory built a {type(obj).__name__}, which is not a {protocol.__name__}" + (f" (missing: {', '.join(sorted(missing))})" if missing else ""))
    return obj


def build(s: Subject, *args: Any) -> Any:
    """Call the factory; an exception becomes a one-line failure naming the subject."""
    try:
        return s.impl.factory(s.options, *args)
    except (ConformanceError, JetSpecError):
        raise
    except Exception as e:
        s.fail("factory", f"raised {type(e).__name__}: {e}")


def check_proposal(s: Subject, proposal: Any, vocab: int, where: str = "") -> None:
    """Walk the proposal breadth-first (at most MAX_WALK paths) checking every `children` list."""
    if not isinstance(proposal, Proposal):
        s.fail("proposal", f"propose returned {type(proposal).__name__}, which has no children(path){where}")
    frontier: list[tuple[int, ...]] = [()]
    walked = 0
    while frontier and walked < MAX_WALK:
        path = frontier.pop(0)
        walked += 1
        kids = list(proposal.children(path))
        seen: set[int] = set()
        prev = 0.0
        for item in kids:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                s.fail("proposal", f"children({path}) holds {item!r}, not a (token, logp) pair{where}")
            tok, logp = int(item[0]), float(item[1])
            if not 0 <= tok < vocab:
                s.fail("proposal", f"children({path}) offers token {tok} outside the vocabulary [0, {vocab}){where}")
            if tok in seen:
                s.fail("proposal", f"children({path}) offers token {tok} twice{where}")
            if math.isnan(logp) or logp > 0:
                s.fail("proposal", f"children({path}) gives token {tok} log-prob {logp}; log-probs must be <= 0{where}")
            if logp > prev:
                s.fail("proposal", f"children({path}) is not sorted by log-prob descending ({prev} then {logp}){where}")
            seen.add(tok)
            prev = logp
            frontier.append(path + (tok,))


def check_tree(s: Subject, tree: Any, proposal: Proposal, root: int, budget: int, where: str = "") -> None:
    if not isinstance(tree, DraftTree):
        s.fail("tree", f"build returned {type(tree).__name__}, not a DraftTree{where}")
    try:
        tree.validate()
    except JetSpecError as e:
        s.fail("tree", f"invalid tree: {e}{where}")
    if int(tree.tokens[0]) != root:
        s.fail("tree", f"root token is {int(tree.tokens[0])}, expected {root}{where}")
    if tree.budget > budget:
        s.fail("tree", f"{tree.budget} draft nodes exceed the budget of {budget}{where}")
    offered = len(list(proposal.children(())))
    if tree.budget == 0 and budget >= 1 and offered:
        s.fail("tree", f"drafts nothing (the root alone) though the budget is {budget} and the proposal offers "
                       f"{offered} candidate(s) after the root: lossless, but plain decoding{where}")
    tokens, parents, scores = tree.tokens.tolist(), tree.parents.tolist(), tree.scores.tolist()
    paths: list[tuple[int, ...]] = [()]
    for i in range(1, tree.size):
        p = parents[i]
        offered = dict((int(t), float(l)) for t, l in proposal.children(paths[p]))
        if tokens[i] not in offered:
            s.fail("tree", f"node {i} (token {tokens[i]}) is not a candidate the proposal offers after {paths[p]}{where}")
        if not math.isclose(scores[i], scores[p] + offered[tokens[i]], rel_tol=1e-4, abs_tol=1e-4):
            s.fail("tree", f"node {i} scores {scores[i]:.4f}; its cumulative log-prob is {scores[p] + offered[tokens[i]]:.4f}{where}")
        paths.append(paths[p] + (tokens[i],))


def check_acceptance(s: Subject, acc: Any, tree: DraftTree, vocab: int, where: str = "") -> None:
    if not isinstance(acc, Acceptance):
        s.fail("acceptance", f"accept returned {type(acc).__name__}, not an Acceptance{where}")
    path = list(acc.path)
    if not path or path[0] != 0:
        s.fail("acceptance", f"path {path} must start at the root (node 0){where}")
    parents = tree.parents.tolist()
    for a, b in zip(path, path[1:]):
        if not 0 <= b < tree.size or parents[b] != a:
            s.fail("acceptance", f"path {path}: node {b} is not a child of node {a}{where}")
    if not 0 <= int(acc.bonus) < vocab:
        s.fail("acceptance", f"bonus token {acc.bonus} is outside the vocabulary [0, {vocab}){where}")
