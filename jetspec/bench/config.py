"""`BenchConfig`: what one `jetspec bench` run measures, as one validated object.

    name = "smollm2_h200"
    target = { name = "decoder", dtype = "bfloat16" }
    datasets = ["math500", "spec_bench/mt_bench", { name = "mine", path = "p.jsonl", field = "text" }]
    count = 20                      # prompts per dataset (a seeded subset); a dataset may override
    max_new_tokens = 256
    [[pipelines]]
    name = "ngram"
    drafter = { name = "ngram", n_max = 4 }
    budgets = [16, 64, 256]         # one pipeline per budget: ngram@16, ngram@64, ngram@256
    [peers]
    include = ["generate", "prompt_lookup", "assisted"]

Component choices are `jetspec.Component`s, validated against the registry by name, so a new
drafter, scorer, verifier, cache or attention backend is benchmarked by naming it here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..core.config import Component, GenerationConfig, PipelineConfig, read_config_file, validate_config

PEERS = ("generate", "prompt_lookup", "assisted", "llama.cpp:greedy", "llama.cpp:lookup")
PIPELINE_KINDS = ("drafter", "scorer", "verifier", "kv_cache", "attention")


def _component(name: str) -> Any:
    return Field(default_factory=lambda: Component(name=name))


def _shorthand(v: Any) -> Any:
    return {"name": v} if isinstance(v, str) else v


# a user's run goes to a folder of the user's, under the current folder; the repository's tracked
# bench/results and bench/RESULTS.md are written only when named (`--output bench`)
DEFAULT_OUTPUT = "jetspec-bench"

class DatasetSpec(BaseModel):
    """A built-in prompt set (`math500`, `gsm8k`, `humaneval`, `spec_bench`,
    `spec_bench/<category>`, `spec_bench/mt_bench`) or, with `path` and `field`, a user JSONL."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str
    path: str | None = Field(None, description="a JSONL (or .jsonl.gz) file of prompts; `name` is then its label")
    field: str | None = Field(None, description="the prompt field; dots index into nested values: 'turns.0'")
    count: int | None = Field(None, ge=1, description="prompts taken (a seeded random subset); None: the bench's `count`")
    seed: int | None = Field(None, description="subset seed; None: the bench's `seed`")
    chat_template: bool | None = Field(None, description="None: the bench's `chat_template`")

    @model_validator(mode="before")
    @classmethod
    def _name_shorthand(cls, v: Any) -> Any:
        return _shorthand(v)


class PipelineSpec(BaseModel):
    """One speculative pipeline on the bench's target; `budgets` expands it to one per budget."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str
    drafter: Component = _component("ngram")
    scorer: Component = _component("best-first")
    verifier: Component = _component("greedy")
    kv_cache: Component = _component("dense")
    attention: Component = _component("torch")
    budget: int | None = Field(None, ge=0, le=4096, description="draft nodes per round (0: plain decoding through this "
                               "pipeline's own settings, a row timed against the bench's plain row)")
    budgets: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(None, min_length=1, max_length=64, description="a sweep: one pipeline per budget")
    plain_ahead: bool = Field(True, description="its generation.plain_ahead (with budget = 0 and false: plain decoding one "
                              "step at a time, against the bench's plain row, which queues each step ahead where it can)")

    @field_validator("drafter", "scorer", "verifier", "kv_cache", "attention", mode="before")
    @classmethod
    def _component_shorthand(cls, v: Any) -> Any:
        return _shorthand(v)

    @model_validator(mode="after")
    def _one_budget_field(self) -> "PipelineSpec":
        if self.budget is not None and self.budgets is not None:
            raise ValueError(f"pipeline '{self.name}': give `budget` or `budgets`, not both")
        if self.budgets is not None and not all(1 <= b <= 4096 for b in self.budgets):
            raise ValueError(f"pipeline '{self.name}': every budget must be in [1, 4096]")
        return self


class PeersConfig(BaseModel):
    """Baselines run on the same prompts: `transformers` on the target's weights (`peers.py`) and
    llama.cpp on its GGUF (`llama_cpp_peer.py`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    include: list[Literal["generate", "prompt_lookup", "assisted", "llama.cpp:greedy", "llama.cpp:lookup"]] = Field(default_factory=list)
    count: int | None = Field(None, ge=1, description="peers run on the first `count` prompts of each dataset; None: all")
    path: str | None = Field(None, description="HF folder of the target; None: the target's `path` (or the default model)")
    prompt_lookup_num_tokens: int = Field(10, ge=1, le=1024)
    assistant_path: str | None = Field(None, description="HF folder of a draft model with the target's vocabulary")
    llama_cpp_gguf: str = Field("q4_1", description="llama.cpp's model: the default model's GGUF at q4_1 (its own "
                                "file), f16, bf16 or f32, or a path to a .gguf file")
    llama_cpp_n_gpu_layers: int = Field(-1, ge=-1, description="layers llama.cpp offloads to the GPU (-1: all)")
    llama_cpp_flash_attn: bool = Field(True, description="llama.cpp's flash attention")
    llama_cpp_n_ctx: int = Field(4096, ge=16, le=1 << 20, description="llama.cpp's context: prompt + max_new_tokens + "
                                 "a lookup draft must fit (`llama.cpp:lookup` keeps n_ctx x vocab float32 logits)")
    llama_cpp_max_ngram: int = Field(2, ge=1, le=64, description="longest n-gram `llama.cpp:lookup` matches")


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # as the pipeline's own: `count = "8"` is an error
    name: str = Field("bench", description="results go to <output>/results/<name>.jsonl")
    target: Component = _component("decoder")
    datasets: list[DatasetSpec] = Field(min_length=1)
    pipelines: list[PipelineSpec] = Field(min_length=1)
    max_new_tokens: int = Field(256, ge=1, le=1 << 20)
    chat_template: bool = True
    count: int | None = Field(None, ge=1, description="prompts per dataset unless it says otherwise; None: all")
    seed: int = 0
    prompts_dir: str | None = Field(None, description="built-in prompt files; None: $JETSPEC_PROMPTS, else ../shared/data/prompts")
    peers: PeersConfig = Field(default_factory=PeersConfig)
    output: str = Field(DEFAULT_OUTPUT, description="folder of results/, plots/ and RESULTS.md (default: ./jetspec-bench)")
    warmup_tokens: int = Field(16, ge=0, le=4096, description="untimed tokens each pipeline and peer generates first")
    near_tie_gap: float = Field(0.5, ge=0, description="a mismatch whose top-2 logit gap is at most this is a near-tie")
    faithfulness: Literal["auto", "all", "off"] = Field(
        "auto", description="rank-1 faithfulness: auto = drafters that provide 'branch_scores'"
    )
    faithfulness_nats: float = Field(5.0, gt=0)
    faithfulness_rounds: int = Field(8, ge=1, le=10_000, description="rounds sampled per prompt for faithfulness")
    faithfulness_budgets: list[int] | None = Field(
        None, description="measure faithfulness only for pipelines of these budgets (a drafter's rank-1 branch "
        "hardly depends on the budget); None: every budget"
    )
    max_minutes: float | None = Field(None, gt=0, description="start no new prompt after this; --resume continues")
    replay: bool = Field(
        False,
        description="τ only: each greedy pipeline's drafter and scorer are replayed against plain decoding's output "
        "(jetspec.bench.replay) instead of verifying trees; rows carry τ, acceptance and faithfulness, no speeds",
    )

    @field_validator("target", mode="before")
    @classmethod
    def _target_shorthand(cls, v: Any) -> Any:
        return _shorthand(v)

    @model_validator(mode="after")
    def _unique_names(self) -> "BenchConfig":
        for what, names in (("dataset", [d.name for d in self.datasets]), ("pipeline", [p.name for p in expand(self)])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} names must be unique; repeated: {', '.join(dup)}")
        return self

    @staticmethod
    def parse(data: dict[str, Any]) -> "BenchConfig":
        return validate_config(BenchConfig, data, "bench config")

    @staticmethod
    def load(path: str | Path) -> "BenchConfig":
        data = read_config_file(path)
        data.setdefault("name", Path(path).stem)
        return BenchConfig.parse(data)


@dataclass(frozen=True)
class BenchPipeline:
    """One expanded pipeline: a name, its full `PipelineConfig`, and the spec it came from."""

    name: str
    config: PipelineConfig
    spec: PipelineSpec

    @property
    def engine(self) -> tuple[str, str]:
        """What plain decoding shares with this pipeline: its KV cache and attention choices."""
        c = self.config
        return (_key(c.kv_cache), _key(c.attention))


def expand(bench: BenchConfig) -> list[BenchPipeline]:
    out = []
    for spec in bench.pipelines:
        budgets = spec.budgets if spec.budgets is not None else [32 if spec.budget is None else spec.budget]
        for b in budgets:
            name = f"{spec.name}@{b}" if spec.budgets is not None else spec.name
            config = PipelineConfig(
                target=bench.target,
                **{k: getattr(spec, k) for k in PIPELINE_KINDS},
                generation=GenerationConfig(max_new_tokens=bench.max_new_tokens, budget=b, chat_template=bench.chat_template,
                                            plain_ahead=spec.plain_ahead),
            )
            out.append(BenchPipeline(name, config, spec))
    return out


def _key(c: Component) -> str:
    return c.name if not c.options else f"{c.name}{json.dumps(c.options, sort_keys=True)}"


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts: rows carry it, and `--resume` redoes rows whose differs."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
