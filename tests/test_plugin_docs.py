"""docs/plugins.md covers every hook and every check of the conformance kit (the datasette
pattern: a hook or check added without documentation fails here)."""

import inspect
import pathlib
import re

import pytest

import jetspec
import jetspec.testing
from jetspec.core import hookspecs, interfaces
from jetspec.core.errors import ConfigError
from jetspec.core.registry import Registry

GUIDE = (pathlib.Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
CHECKS = [name for name in jetspec.testing.__all__ if name.startswith("check_")]


@pytest.mark.parametrize("hook", sorted(hookspecs.HOOK_OF_KIND.values()))
def test_every_hook_is_in_the_guide(hook):
    assert f"`{hook}`" in GUIDE


@pytest.mark.parametrize("check", CHECKS)
def test_every_check_is_in_the_guide(check):
    assert f"`{check}`" in GUIDE


def test_the_guide_names_the_worked_example_that_exists():
    assert "plugins/jetspec-suffix-drafter" in GUIDE
    assert (pathlib.Path(__file__).parents[1] / "plugins" / "jetspec-suffix-drafter" / "pyproject.toml").is_file()


def test_the_names_the_guide_uses_from_jetspec_are_exported():
    used = set(re.findall(r"`jetspec\.([A-Z]\w*)", GUIDE))
    assert {"MergedProposal", "EmptyProposal", "TokenTrie"} <= used
    assert not used - set(jetspec.__all__), f"the guide uses names jetspec does not export: {used - set(jetspec.__all__)}"


def test_the_guide_quotes_the_very_line_each_pitfall_produces():
    """The pitfalls section shows what an author will see; a reworded report fails here."""
    from test_registry import MisspelledPlugin, OneImplementationPlugin, UnmarkedPlugin, WrongSignaturePlugin

    for plugin in (MisspelledPlugin(), UnmarkedPlugin(), WrongSignaturePlugin(), OneImplementationPlugin()):
        reg = Registry.create(builtin_modules=jetspec.BUILTINS, extra_plugins=[("my-plugin", plugin)], entry_points=False)
        (problem,) = reg.problems
        assert f"\n  {problem}\n" in GUIDE, problem
    unmarked = Registry.create(builtin_modules=jetspec.BUILTINS, extra_plugins=[("my-plugin", UnmarkedPlugin())], entry_points=False)
    with pytest.raises(ConfigError) as e:
        unmarked.get("drafter", "mine")
    assert f"\n{e.value}\n" in GUIDE


PROTOCOL_METHODS = [(cls.__name__, name) for cls in vars(interfaces).values()
                    if isinstance(cls, type) and getattr(cls, "_is_protocol", False) and cls.__module__ == interfaces.__name__
                    for name, f in vars(cls).items() if callable(f) and not name.startswith("_")]  # fmt: skip


@pytest.mark.parametrize("protocol, method", PROTOCOL_METHODS)
def test_every_protocol_method_states_its_contract(protocol, method):
    """The guide sends authors to these docstrings: "they are the contract"."""
    assert inspect.getdoc(getattr(getattr(interfaces, protocol), method)), f"{protocol}.{method} has no docstring"


def test_the_scorer_contract_names_the_root_and_the_tree_invariants():
    doc = inspect.getdoc(interfaces.TreeScorer.build)
    for needed in ("token id", "tokens[0] == root", "distinct", "scores[i]", "cumulative"):
        assert needed in doc, needed
