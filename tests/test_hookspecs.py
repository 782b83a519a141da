"""Meta-tests (the datasette pattern): every hook is documented and has a test, and built-ins
register through the same hooks as any plugin."""

import inspect
import pathlib
import re

import pytest

import jetspec
from jetspec.core import hookspecs
from jetspec.core.registry import Registry

HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("jetspec_")]
TESTS_DIR = pathlib.Path(__file__).parent


def test_every_kind_has_exactly_one_hook():
    assert sorted(HOOKS) == sorted(hookspecs.HOOK_OF_KIND.values())


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook))
    assert doc and "factory(" in doc, f"{hook} needs a docstring naming its factory signature"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    tests = "".join(p.read_text() for p in TESTS_DIR.rglob("test_*.py") if p.name != "test_hookspecs.py")
    assert hook in tests, f"no test mentions {hook}"


def test_builtins_register_through_the_hooks():
    reg = jetspec.default_registry()
    assert not [p for p in reg.problems if "jetspec.builtins" in p]
    for kind in hookspecs.KINDS:
        for impl in reg.implementations[kind].values():
            if impl.plugin == "jetspec.builtins":
                break
        else:
            pytest.fail(f"no built-in {kind}")


def test_builtin_summaries_carry_no_benchmark_figures():
    """A speed figure in a summary goes stale (`cute` was long called "~5x slower than triton" after
    it overtook it): the figure belongs in bench/RESULTS.md, the summary keeps only the claim."""
    reg = jetspec.default_registry()
    figures = [f"{kind} '{impl.name}': {impl.summary}" for kind in hookspecs.KINDS
               for impl in reg.implementations[kind].values()
               if impl.plugin == "jetspec.builtins" and re.search(r"\d(\.\d+)?\s*[x×]\b|\d+\s*(µs|ms|tok/s)", impl.summary)]
    assert not figures, figures
