"""The registry: named implementations of every component kind, collected through pluggy.

Identity (a name) is separate from capability: each implementation declares what it `provides`
(e.g. "hidden_states", "paged") and what it `requires` of the components of other kinds
("target:hidden_states"). `check_compatible` turns a missing capability into one sentence.

Plugin safety: each plugin is loaded and each of its hooks called on its own, so a plugin that
raises, registers a duplicate name or an options model that is not a pydantic model is reported
in one line (`Registry.problems`) and skipped while every other plugin keeps working. pluggy's
silent pitfalls are reported too: a `jetspec_*` function that names no hook (a misspelling), one
without `@jetspec.hookimpl` (it registers nothing), and a wrong hook signature (pluggy's whole
message, its lines joined). Every `unknown <kind>` error repeats these problems. The
environment variable JETSPEC_PLUGINS restricts which entry-point plugins load: a comma-separated
list of entry-point names, or "none".
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
import os
from collections import abc
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Callable, Iterable

import pluggy
from pydantic import BaseModel

from . import hookspecs
from .errors import ConfigError, IncompatibleError

ENTRY_POINT_GROUP = "jetspec"
PLUGINS_ENV = "JETSPEC_PLUGINS"


@dataclass(frozen=True)
class Implementation:
    """One named implementation of a component kind."""

    name: str
    factory: Callable[..., Any]
    options: type[BaseModel]
    summary: str = ""
    provides: frozenset[str] = frozenset()
    requires: frozenset[str] = frozenset()  # "kind:capability"
    plugin: str = ""  # filled in by the registry: which plugin registered it


@dataclass
class Registry:
    implementations: dict[str, dict[str, Implementation]] = field(
        default_factory=lambda: {k: {} for k in hookspecs.KINDS}
    )
    problems: list[str] = field(default_factory=list)  # one line per plugin problem
    plugins: list[str] = field(default_factory=list)  # names of plugins that loaded

    @staticmethod
    def create(
        builtin_modules: Iterable[str] = (),
        extra_plugins: Iterable[tuple[str, Any]] = (),
        entry_points: bool = True,
        allow: str | None = None,
    ) -> "Registry":
        """Collect implementations from built-in modules (by import name), explicit
        (name, plugin object) pairs, and installed `jetspec` entry points."""
        pm = pluggy.PluginManager("jetspec")
        pm.add_hookspecs(hookspecs)
        reg = Registry()
        candidates: list[tuple[str, Callable[[], Any]]] = []
        for mod in builtin_modules:
            candidates.append((mod, lambda mod=mod: importlib.import_module(mod)))
        for name, obj in extra_plugins:
            candidates.append((name, lambda obj=obj: obj))
        if entry_points:
            allowed = _allowed(os.environ.get(PLUGINS_ENV) if allow is None else allow)
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                if ep.value in builtin_modules:
                    continue  # our own built-ins, already listed
                if allowed is None or ep.name in allowed:
                    candidates.append((ep.name, ep.load))
        for name, load in candidates:
            try:
                plugin = load()
            except (Exception, SystemExit) as e:  # a plugin calling sys.exit() on import ends nothing else
                reg.problems.append(f"plugin '{name}' failed to load: {_one_line(e)}")
                continue
            try:
                pm.register(plugin, name=name)
            except pluggy.PluginValidationError as e:  # a wrong signature: keep all of pluggy's explanation
                reg.problems.append(f"plugin '{name}' failed to load: invalid hook: {_joined(e)}")
                continue
            reg.plugins.append(name)
            reg.problems.extend(_hook_pitfalls(pm, name, plugin))
            reg._collect(pm, name, plugin)
        return reg

    def _collect(self, pm: pluggy.PluginManager, name: str, plugin: Any) -> None:
        for kind, hook_name in hookspecs.HOOK_OF_KIND.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                try:
                    returned = impl.function()
                    items = _hook_items(returned)
                except (Exception, SystemExit) as e:
                    self.problems.append(f"plugin '{name}' raised in {hook_name}: {_one_line(e)}")
                    continue
                if items is None:
                    what = "one Implementation" if isinstance(returned, Implementation) else type(returned).__name__
                    self.problems.append(f"plugin '{name}': {hook_name} returned {what}; a hook returns a list of "
                                         "jetspec.Implementation (return [Implementation(...)])")
                    continue
                for item in items:
                    self._add(kind, name, item)

    def _add(self, kind: str, plugin: str, item: Any) -> None:
        if not isinstance(item, Implementation):
            self.problems.append(f"plugin '{plugin}' returned {type(item).__name__} from its {kind} hook; expected jetspec.Implementation")
            return
        if not (isinstance(item.options, type) and issubclass(item.options, BaseModel)):
            self.problems.append(f"plugin '{plugin}': {kind} '{item.name}' options must be a pydantic model class")
            return
        try:
            item.options.model_json_schema()  # a broken options model fails here, not mid-run
        except Exception as e:
            self.problems.append(f"plugin '{plugin}': {kind} '{item.name}' has an invalid options model: {_one_line(e)}")
            return
        existing = self.implementations[kind].get(item.name)
        if existing is not None:
            self.problems.append(
                f"plugin '{plugin}' registers {kind} '{item.name}', already provided by '{existing.plugin}'; ignored"
            )
            return
        self.implementations[kind][item.name] = replace(item, plugin=plugin)

    # ------------------------------------------------------------------ lookup
    def names(self, kind: str) -> list[str]:
        return sorted(self.implementations[kind])

    def get(self, kind: str, name: str) -> Implementation:
        if kind not in self.implementations:
            raise ConfigError(f"unknown component kind '{kind}'; kinds: {', '.join(hookspecs.KINDS)}")
        impl = self.implementations[kind].get(name)
        if impl is None:
            registered = ", ".join(self.names(kind)) or "(none)"
            raise ConfigError(f"unknown {kind} '{name}'; registered: {registered}{self._problems_note()}")
        return impl

    def _problems_note(self) -> str:
        """The plugin problems, as a tail for an `unknown <kind>` error: the name asked for may be
        in a plugin that failed to load."""
        return f"; plugin problems: {' | '.join(self.problems)}" if self.problems else ""

    def options(self, kind: str, name: str, values: dict[str, Any]) -> BaseModel:
        """Validate `values` against the options model of `kind` `name`; one-line ConfigError."""
        impl = self.get(kind, name)
        from pydantic import ValidationError

        try:
            return validate_options(impl.options, values)
        except (ValidationError, ValueError) as e:
            allowed = ", ".join(impl.options.model_fields) or "(no options)"
            problem = format_validation_error(e) if isinstance(e, ValidationError) else str(e)
            raise ConfigError(f"{kind} '{name}': {problem} (options: {allowed})") from None


def validate_options(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    """Options as a config file states them: strictly typed (`true` is not 1, "4" is not 4; an int
    is a float), validated in pydantic's JSON mode so that what a file cannot spell (a tuple, a
    Path) is read from a list or a string; a NaN or infinity is a ValueError naming its field."""
    bad = _non_finite(values)
    if bad is not None:
        raise ValueError(f"{bad}: must be a finite number, got {values_at(values, bad)!r}")
    return model.model_validate_json(json.dumps(values, default=str), strict=True)


def _non_finite(value: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinite float in `value`, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "value"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def values_at(values: Any, path: str) -> Any:
    for key in path.split("."):
        values = values[int(key)] if isinstance(values, (list, tuple)) else values[key]
    return values


def check_compatible(chosen: dict[str, Implementation]) -> None:
    """Every `requires` entry "kind:capability" of each chosen implementation must be provided
    by the implementation chosen for that kind."""
    for kind, impl in chosen.items():
        for req in sorted(impl.requires):
            other_kind, _, cap = req.partition(":")
            other = chosen.get(other_kind)
            if other is not None and cap not in other.provides:
                have = ", ".join(sorted(other.provides)) or "nothing"
                raise IncompatibleError(
                    f"{kind} '{impl.name}' needs a {other_kind} that provides '{cap}', "
                    f"but {other_kind} '{other.name}' provides {have}"
                )


def format_validation_error(e: Any) -> str:
    """A pydantic ValidationError as one line: `field.path: message; ...`."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "value"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif str(err.get("type", "")).endswith("_type") and "input" in err:  # a wrong type: show what was given
            msg = f"{msg}, got {err['input']!r}"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _hook_items(returned: Any) -> list[Any] | None:
    """A hook's result as a list (None: nothing), or None when it is one `Implementation` or not
    iterable at all (a hook returns a list of them)."""
    if isinstance(returned, Implementation) or not (returned is None or isinstance(returned, abc.Iterable)):
        return None
    return list(returned or [])


def _hook_pitfalls(pm: pluggy.PluginManager, name: str, plugin: Any) -> list[str]:
    """One line per hook that pluggy would register silently wrong: a marked function whose hook
    name is not ours (what `PluginManager.check_pending` raises for, once, for the first plugin
    only; here per plugin and per hook), and a `jetspec_*` function left without
    `@jetspec.hookimpl`, which pluggy skips."""
    problems = []
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec() and any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls()):
            problems.append(f"plugin '{name}': {_not_a_hook(caller.name)}")
    for attr in sorted(a for a in dir(plugin) if a.startswith("jetspec_")):
        if not callable(getattr(plugin, attr, None)) or pm.parse_hookimpl_opts(plugin, attr) is not None:
            continue
        if attr in hookspecs.HOOK_OF_KIND.values():
            problems.append(f"plugin '{name}': '{attr}' lacks @jetspec.hookimpl, so it registers nothing")
        else:
            problems.append(f"plugin '{name}': {_not_a_hook(attr)}")
    return problems


def _not_a_hook(attr: str) -> str:
    hooks = list(hookspecs.HOOK_OF_KIND.values())
    close = difflib.get_close_matches(attr, hooks, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"'{attr}' is not a jetspec hook{hint}; hooks: {', '.join(hooks)}"


def _allowed(spec: str | None) -> set[str] | None:
    if spec is None or spec.strip() == "":
        return None
    if spec.strip().lower() == "none":
        return set()
    return {s.strip() for s in spec.split(",") if s.strip()}


def _joined(e: BaseException) -> str:
    """All of an error's lines on one line: for messages whose later lines carry the reason."""
    return "; ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
