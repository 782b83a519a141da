"""`PipelineConfig`: one validated description of a run.

A component is chosen by name with its options beside it:

    [drafter]            # TOML
    name = "ngram"
    n_max = 3

or just `drafter = "ngram"`. The options are validated against the options model the chosen
implementation declares (`Registry.options`), so an unknown name or field is a one-line error
that lists what is allowed. Files may be TOML, YAML or JSON; Python users build the same object
directly or through `PipelineBuilder`.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from .errors import ConfigError
from .registry import Registry, format_validation_error


class Component(BaseModel):
    """A named implementation plus its options (all other keys)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _component(name: str) -> Any:
    return Field(default_factory=lambda: Component(name=name))


class GenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # `budget = true` is an error, not 1
    max_new_tokens: int = Field(256, ge=1, le=1 << 20, description="tokens to generate at most")
    budget: int = Field(32, ge=0, le=4096, description="draft nodes verified per round (0: plain decoding)")
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, description="stop after any of these (EOS always stops); each must be in the target's vocabulary"
    )
    chat_template: bool = Field(True, description="wrap a text prompt in the tokenizer's chat template")
    accept_on_device: Literal["auto", "always", "never"] = Field(
        "auto", description="accept on the target's device and stage the KV commit there, where the verifier and cache can "
        "(one small read-back per round); auto: unless the target runs on the CPU, where the host walk costs less")
    plain_ahead: bool = Field(True, description="plain decoding on the device path queues each step's forward before the "
                              "host reads the step before (its input token taken on the device): the host's work overlaps the GPU's")
    batch_size: int = Field(1, ge=1, le=4096, description="sequences decoded at once by generate_many and `jetspec run` "
                            "(continuous batching; > 1 needs target 'decoder' with attention 'torch' or 'triton' (kv_cache 'paged'; "
                            "exact = true: 'triton'))")
    max_verify_rows: int | None = Field(None, ge=1, le=1 << 20, description="cap on the tree rows verified per step over "
                                        "all sequences (each gets min(budget, cap // sequences - 1) drafts); none: no cap")
    build_on_device: bool | Literal["auto"] = Field(
        "auto", description="batched runs on the device path: each step's trees grown on the device where the drafter and "
        "scorer can (`ProposesOnDevice`, `BuildsOnDevice`: the `jetspec` head with best-first), not drafted to the host, built "
        "there and copied back; the same trees. true: every step; false: never; auto: a step of at least GROW_FROM (8) "
        "sequences (fewer: the device build's small kernels cost the step more than the host's build)")
    overlap: bool | Literal["auto"] = Field(
        "auto", description="batched runs: the slots in two halves whose steps alternate, so that the host drafts, builds and "
        "commits one half while the device verifies the other (batch_size >= 2; each half's step is a step for "
        "max_verify_rows). true: always; false: never; auto: a speculative run of at least OVERLAP_FROM (32) slots "
        "(fewer: halves of few sequences launch twice the steps for what they hide)")

    @model_validator(mode="after")
    def _rows_fit_the_batch(self) -> "GenerationConfig":
        if self.max_verify_rows is not None and self.max_verify_rows < self.batch_size:
            raise ValueError(f"max_verify_rows ({self.max_verify_rows}) must be at least batch_size ({self.batch_size}): "
                             "every sequence verifies at least its root")
        return self


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: Component = _component("decoder")
    # the default drafter: the causal parallel draft head, with prompt lookup merged into its tree
    # (`jetspec`; for SmolLM2 the trained head ships with the package). Without a trained head
    # for the target it has random weights: `jetspec generate` then drafts with `ngram` instead.
    drafter: Component = _component("jetspec")
    scorer: Component = _component("best-first")
    verifier: Component = _component("greedy")
    # where a config names neither: `device_policy` (triton over paged for our decoder on a CUDA
    # GPU with Triton, else these)
    kv_cache: Component = _component("dense")
    attention: Component = _component("torch")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)

    @field_validator("target", "drafter", "scorer", "verifier", "kv_cache", "attention", mode="before")
    @classmethod
    def _name_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _device_policy(self) -> "PipelineConfig":
        if not {"attention", "kv_cache"} & self.model_fields_set:
            chosen = device_policy(self.target)
            if chosen is not None:
                self.attention, self.kv_cache = Component(name=chosen[0]), Component(name=chosen[1])
        return self

    def components(self) -> dict[str, Component]:
        return {k: getattr(self, k) for k in ("target", "drafter", "scorer", "verifier", "kv_cache", "attention")}

    # ------------------------------------------------------------------ loading
    @staticmethod
    def parse(data: dict[str, Any]) -> "PipelineConfig":
        return validate_config(PipelineConfig, data, "config", "top-level fields")

    @staticmethod
    def load(path: str | Path) -> "PipelineConfig":
        """Load TOML (.toml), YAML (.yaml/.yml) or JSON (.json)."""
        return PipelineConfig.parse(read_config_file(path))

    def validate_with(self, registry: Registry) -> dict[str, BaseModel]:
        """Resolve every component against the registry: kind -> validated options."""
        return {kind: registry.options(kind, c.name, c.options) for kind, c in self.components().items()}


DEVICE_POLICY = """\
device: the target's `device = "auto"` (CUDA when available, else CPU); on a CUDA GPU with Triton,
and unless the config names them, attention "triton" over a "paged" KV cache (CUDA graphs),
otherwise the library defaults: attention "torch" over a "dense" KV cache. The same with batch_size > 1:
the batch shares one page pool, and the decoder's exact mode (its default there) keeps every prompt's
output bit for bit its batch-1 output."""


def device_policy(target: Component) -> tuple[str, str] | None:
    """(attention, kv_cache) for a config that names neither, or None for the defaults: Triton
    attention over a paged cache, which CUDA graphs need, where our decoder will run on a CUDA
    GPU with Triton installed (the defaults, reference attention over a dense cache, run anywhere
    but eagerly). The one device policy: `jetspec generate`, `jetspec.builder()` and
    `jetspec.from_config` all get it here."""
    if target.name != "decoder" or target.options.get("device", "auto") == "cpu":
        return None
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        return "triton", "paged"
    return None


Model = TypeVar("Model", bound=BaseModel)


def validate_config(model: type[Model], data: dict[str, Any], label: str, fields: str = "fields") -> Model:
    """`model.model_validate(data)`; a ValidationError becomes a one-line ConfigError:
    `<label>: <what is wrong>; <fields>: <the model's fields>`."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{label}: {format_validation_error(e)}; {fields}: {', '.join(model.model_fields)}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found")
    text = p.read_text()
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file '{p}' must end in .toml, .yaml, .yml or .json")
    except ConfigError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"config file '{p}' is not valid {suffix[1:].upper()}: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a table/mapping at the top level")
    return data


def config_schema(registry: Registry) -> dict[str, Any]:
    """JSON schema of a pipeline config in which each component is a union over the registered
    implementations of its kind, each with its own options."""
    fields: dict[str, Any] = {}
    for kind in PipelineConfig().components():
        variants = []
        for name in registry.names(kind):
            impl = registry.get(kind, name)
            m = create_model(
                f"{kind}_{name}".replace("-", "_"),
                __base__=impl.options,
                name=(Literal[name], ...),  # type: ignore[valid-type]
            )
            m.__doc__ = impl.summary or None
            variants.append(m)
        if variants:
            from typing import Union

            fields[kind] = (Union[tuple(variants)] if len(variants) > 1 else variants[0], None)  # type: ignore[misc]
    fields["generation"] = (GenerationConfig, None)
    model = create_model("PipelineConfig", __config__=ConfigDict(extra="forbid"), **fields)
    return model.model_json_schema()
