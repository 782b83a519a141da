"""Building a `Pipeline` from a config, in one place.

`build_pipeline(config, registry)` resolves each component name in the registry, validates its
options, checks capabilities, and calls the factories. `PipelineBuilder` is the fluent Python
front end: it only assembles a `PipelineConfig`, so a builder and a config file with the same
choices produce the same pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .checks import Blame
from .config import Component, PipelineConfig
from .errors import ConfigError, PluginError
from .interfaces import AttentionBackend, Drafter, Target, TreeScorer, Verifier, observed_layers
from .pipeline import Pipeline
from .registry import Implementation, Registry, check_compatible


class _LiveTargetOptions(BaseModel):
    """A target passed as a loaded object has no options."""


def build_pipeline(config: PipelineConfig, registry: Registry, target: Target | None = None) -> Pipeline:
    """Resolve, validate, check and construct. `target` replaces the configured target loader
    with an already loaded model (tests, notebooks)."""
    options = config.validate_with(registry) if target is None else {
        k: registry.options(k, c.name, c.options) for k, c in config.components().items() if k != "target"
    }
    chosen: dict[str, Implementation] = {k: registry.get(k, c.name) for k, c in config.components().items() if k in options}
    budget = config.generation.budget
    if budget == 0:  # plain decoding builds no drafter, so none of its requirements apply
        del chosen["drafter"]
    if target is not None:
        chosen["target"] = Implementation(
            name=type(target).__name__, factory=lambda *a: target, options=_LiveTargetOptions,
            provides=frozenset(getattr(target, "provides", ())),
        )
    check_compatible(chosen)
    labels = {k: label(k, impl) for k, impl in chosen.items()}

    def make(kind: str, protocol: type, *args: Any) -> Any:
        """Call the factory of `kind`; anything but a `protocol` object is a one-line PluginError."""
        with Blame(labels[kind], "while being built"):
            obj = chosen[kind].factory(options[kind], *args)
        if not isinstance(obj, protocol):
            raise PluginError(f"{labels[kind]}: its factory returned {type(obj).__name__}, which is not a {protocol.__name__}")
        return obj

    attention = make("attention", AttentionBackend)
    if target is None:
        target = make("target", Target, attention)
    kv = chosen["kv_cache"]
    drafter = make("drafter", Drafter, target) if budget > 0 else None
    layers = observed_layers(drafter)
    if not all(type(l) is int and 0 <= l < target.info.num_layers for l in layers):
        raise PluginError(f"{labels['drafter']} asks for hidden_layers {list(layers)}; the target has layers 0..{target.info.num_layers - 1}")
    return Pipeline(
        target=target,
        drafter=drafter,
        scorer=make("scorer", TreeScorer),
        verifier=make("verifier", Verifier),
        new_cache=lambda capacity: kv.factory(options["kv_cache"], target.info, capacity),
        config=config,
        labels=labels,
        new_drafter=(lambda: make("drafter", Drafter, target)) if budget > 0 else None,
        new_verifier=lambda: make("verifier", Verifier),
    )


def label(kind: str, impl: Implementation) -> str:
    """How errors name a component: `drafter 'ngram' (plugin 'jetspec.builtins')`."""
    return f"{kind} '{impl.name}'" + (f" (plugin '{impl.plugin}')" if impl.plugin else "")


class PipelineBuilder:
    """Fluent construction:

        pipe = (PipelineBuilder(registry)
                .target("decoder", path="models/smollm2")
                .drafter("ngram", n_max=3)
                .scorer("best-first")
                .generation(budget=64, max_new_tokens=256)
                .build())
    """

    def __init__(self, registry: Registry):
        self._registry = registry
        self._data: dict[str, Any] = {}
        self._target: Target | None = None

    def _set(self, kind: str, name: str, options: dict[str, Any]) -> "PipelineBuilder":
        self._data[kind] = {"name": name, **options}
        return self

    def target(self, name_or_model: str | Target, **options: Any) -> "PipelineBuilder":
        if isinstance(name_or_model, str):
            self._target = None
            return self._set("target", name_or_model, options)
        if options:
            raise ConfigError("options cannot be given with an already loaded target")
        self._target = name_or_model
        return self

    def drafter(self, name: str, **options: Any) -> "PipelineBuilder":
        return self._set("drafter", name, options)

    def scorer(self, name: str, **options: Any) -> "PipelineBuilder":
        return self._set("scorer", name, options)

    def verifier(self, name: str, **options: Any) -> "PipelineBuilder":
        return self._set("verifier", name, options)

    def kv_cache(self, name: str, **options: Any) -> "PipelineBuilder":
        return self._set("kv_cache", name, options)

    def attention(self, name: str, **options: Any) -> "PipelineBuilder":
        return self._set("attention", name, options)

    def generation(self, **settings: Any) -> "PipelineBuilder":
        self._data["generation"] = {**self._data.get("generation", {}), **settings}
        return self

    def config(self) -> PipelineConfig:
        if self._target is not None:  # a loaded target: named by its class, so no device policy for our decoder applies
            return PipelineConfig.parse({**self._data, "target": {"name": type(self._target).__name__}})
        return PipelineConfig.parse(self._data)

    def build(self) -> Pipeline:
        return build_pipeline(self.config(), self._registry, target=self._target)


def from_config(config: PipelineConfig | dict | str | Path, registry: Registry, target: Target | None = None) -> Pipeline:
    """A pipeline from a `PipelineConfig`, a dict, or a TOML/YAML/JSON file path."""
    if isinstance(config, (str, Path)):
        config = PipelineConfig.load(config)
    elif isinstance(config, dict):
        config = PipelineConfig.parse(config)
    return build_pipeline(config, registry, target=target)


__all__ = ["PipelineBuilder", "build_pipeline", "from_config", "Component"]
