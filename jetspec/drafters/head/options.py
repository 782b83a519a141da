"""Options of the head drafters (one validated pydantic model each, `extra="forbid"`).

Architecture fields (`layers`, `block_size`, `target_layers`, `causal`) come from the checkpoint
when one is given; setting one to a different value is a `ConfigError`. Without a checkpoint the
head has random (seeded) weights: lossless but useless, for tests and plumbing.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class HeadOptions(BaseModel):
    """`jetspec`: the causal parallel draft head (one forward -> per-depth distributions)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None  # folder with head.safetensors + head.json
    layers: int | None = Field(None, ge=1)  # head decoder layers (default 1)
    block_size: int | None = Field(None, ge=2)  # B = anchor + B - 1 drafted depths (default 16)
    target_layers: list[int] | None = None  # fused target layers (default: evenly spaced 1 .. N-3)
    causal: bool | None = None  # mask inside the block (default True; `dflash` default False)
    top_k: int = Field(8, ge=1)  # candidates per depth
    rescore: bool = False  # parent-conditioned rescoring: a second head pass over a candidate tree
    rescore_factor: float = Field(2.0, ge=1.0)  # candidate tree = factor x budget nodes
    rescore_top_k: int = Field(4, ge=0)  # new children per rescored node from its own distribution
    # prompt lookup in the same tree: the `ngram` drafter's continuations (default options) are
    # merged into the head's proposal, and the scorer spends the budget on the best of both. On
    # SmolLM2 this beats the head and n-gram alone on every prompt set (bench/RESULTS.md).
    lookup: bool = True
    cuda_graphs: bool = True  # on CUDA, replay the one-forward draft and the context append from captured graphs
    seed: int = 0  # random init when there is no checkpoint


class DFlashOptions(HeadOptions):
    """`dflash`: the same head with a bidirectional block (DFlash-style), no rescoring; the
    baseline, so no prompt lookup unless asked for."""

    lookup: bool = False

    @model_validator(mode="after")
    def _no_rescore(self) -> "DFlashOptions":
        if self.rescore:
            raise ValueError("rescore needs a causal head; dflash heads are bidirectional")
        return self


class EagleOptions(BaseModel):
    """`eagle`: an autoregressive head, one forward per depth, top-k expansion of the best nodes."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None
    layers: int | None = Field(None, ge=1)
    target_layers: list[int] | None = None
    depth: int = Field(6, ge=1)  # head forwards per round = max draft depth
    top_k: int = Field(8, ge=1)  # children per expanded node
    frontier: int = Field(8, ge=1)  # nodes expanded per depth (best cumulative log-prob first)
    cuda_graphs: bool = True  # on CUDA, replay the context append from a captured graph
    seed: int = 0
