"""The component under test: resolved from a registry (or given as an `Implementation`), with
its validated options and a `fail` that names it in every message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import BaseModel

from ..core.errors import ConfigError
from ..core.registry import Implementation, Registry


class ConformanceError(AssertionError):
    """A component broke its contract. The message is one line: `<kind> '<name>': <check>: <what>`,
    plus the example that shows it where one was drawn."""


@dataclass
class Subject:
    kind: str
    impl: Implementation
    options: BaseModel
    registry: Registry

    @property
    def label(self) -> str:
        return f"{self.kind} '{self.impl.name}'"

    def fail(self, check: str, message: str) -> NoReturn:
        raise ConformanceError(f"{self.label}: {check}: {message}")


def resolve(kind: str, component: str | Implementation, options: dict[str, Any] | None, registry: Registry | None) -> Subject:
    """Look the component up (by name) and validate its options; both failures name it."""
    if registry is None:
        import jetspec

        registry = jetspec.default_registry()
    if isinstance(component, Implementation):
        impl = component
    else:
        try:
            impl = registry.get(kind, component)
        except ConfigError as e:
            raise ConformanceError(f"{kind} '{component}': registration: {e}") from None
    from .protocol import check_options  # options are the first protocol check

    return Subject(kind, impl, check_options(kind, impl, options), registry)
