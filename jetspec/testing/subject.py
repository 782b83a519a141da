"""The component under test: resolved from a registry (or given as an `Implementation`), with
its validated options and a `fail` that names it in every message."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NoReturn

from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed

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

    @contextmanager
    def calling(self, check: str, where: str = "") -> Iterator[None]:
        """An exception raised by the component becomes a one-line failure naming it."""
        try:
            yield
        except ConformanceError:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self.fail(check, f"raised {type(e).__name__}: {first}{where}")


def run_property(prop: Callable[[], None], examples: int, seed: int | None, shrink: bool) -> None:
    """Run a hypothesis property with the kit's settings: `examples` examples drawn from `seed`
    (None: fresh each run), no example database, failures shrunk to small ones if `shrink`."""
    phases = [p for p in Phase if shrink or p not in (Phase.shrink, Phase.explain)]
    prop = settings(max_examples=examples, deadline=None, database=None, phases=phases,
                    suppress_health_check=list(HealthCheck))(prop)
    if seed is not None:
        prop = hypothesis_seed(seed)(prop)
    prop()


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
