"""JetSpec: lossless speculative decoding with pluggable parts.

    import jetspec
    pipe = jetspec.builder().target("decoder").drafter("ngram").generation(budget=32).build()
    result = pipe.generate("What is 2 + 2?", max_new_tokens=64)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .core.builder import PipelineBuilder, build_pipeline
from .core.config import Component, GenerationConfig, PipelineConfig
from .core.errors import JetSpecError
from .core.hookspecs import hookimpl
from .core.interfaces import Acceptance, AttentionMeta, DecodeState, TargetInfo, TargetOutput
from .core.pipeline import Pipeline
from .core.results import GenerationResult
from .core.proposal import DepthMarginals, EmptyProposal, MergedProposal, TokenTrie
from .core.registry import Implementation, Registry
from .core.tree import DraftTree

BUILTINS = ("jetspec.builtins",)
_default: Registry | None = None


def default_registry(refresh: bool = False) -> Registry:
    """Built-ins plus every installed plugin of the `jetspec` entry-point group."""
    global _default
    if _default is None or refresh:
        _default = Registry.create(builtin_modules=BUILTINS)
    return _default


def builder(registry: Registry | None = None) -> PipelineBuilder:
    return PipelineBuilder(registry or default_registry())


def from_config(config: PipelineConfig | dict | str | Path, target: Any = None, registry: Registry | None = None) -> Pipeline:
    from .core.builder import from_config as _from_config

    return _from_config(config, registry or default_registry(), target=target)


__all__ = [
    "Acceptance",
    "AttentionMeta",
    "Component",
    "DecodeState",
    "DepthMarginals",
    "DraftTree",
    "EmptyProposal",
    "GenerationConfig",
    "GenerationResult",
    "Implementation",
    "JetSpecError",
    "MergedProposal",
    "Pipeline",
    "PipelineBuilder",
    "PipelineConfig",
    "Registry",
    "TargetInfo",
    "TargetOutput",
    "TokenTrie",
    "build_pipeline",
    "builder",
    "default_registry",
    "from_config",
    "hookimpl",
]
