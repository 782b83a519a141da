import functools

import jetspec
from jetspec.core.registry import Registry

from . import oracle


@functools.lru_cache(maxsize=1)
def make_test_registry() -> Registry:
    """Built-ins plus the test-only `oracle` drafter plugin; installed entry points ignored."""
    reg = Registry.create(builtin_modules=jetspec.BUILTINS, extra_plugins=[("oracle", oracle)], entry_points=False)
    assert not reg.problems, reg.problems
    return reg
