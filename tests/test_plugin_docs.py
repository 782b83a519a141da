"""docs/plugins.md covers every hook and every check of the conformance kit (the datasette
pattern: a hook or check added without documentation fails here)."""

import pathlib

import pytest

import jetspec.testing
from jetspec.core import hookspecs

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
