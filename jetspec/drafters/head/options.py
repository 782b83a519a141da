"""Options of the head drafters (one validated pydantic model each, `extra="forbid"`).

Architecture fields (`layers`, `block_size`, `target_layers`, `causal`) come from the checkpoint
when one is given; setting one to a different value is a `ConfigError`. Without a checkpoint the
`jetspec` drafter uses the head shipped for the target, and fails in one line saying how to train
one where none ships: random weights (lossless, drafting nothing useful; tests and plumbing) only
when asked for by name, `checkpoint = "random"`.

Every size has an upper bound, so a typo cannot allocate gigabytes before anything checks it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

RANDOM = "random"  # checkpoint = "random": seeded random weights, asked for by name
MAX_LAYERS, MAX_BLOCK, MAX_TOP_K = 32, 256, 1024


class HeadOptions(BaseModel):
    """`jetspec`: the causal parallel draft head (one forward -> per-depth distributions)."""

    model_config = ConfigDict(extra="forbid")

    # folder with head.safetensors + head.json; None: the head shipped for the target; "random"
    checkpoint: str | None = None
    layers: int | None = Field(None, ge=1, le=MAX_LAYERS)  # head decoder layers (default 1)
    block_size: int | None = Field(None, ge=2, le=MAX_BLOCK)  # B = anchor + B - 1 drafted depths (default 16)
    target_layers: list[int] | None = Field(None, max_length=MAX_LAYERS)  # fused target layers (default: evenly spaced 1 .. N-3)
    causal: bool | None = None  # mask inside the block (default True; `dflash` default False)
    top_k: int = Field(16, ge=1, le=MAX_TOP_K)  # candidates per depth (the scorer takes as many as the budget pays for)
    rescore: bool = False  # parent-conditioned rescoring: a second head pass over a candidate tree
    rescore_factor: float = Field(2.0, ge=1.0, le=16.0)  # candidate tree = factor x budget nodes
    rescore_top_k: int = Field(4, ge=0, le=MAX_TOP_K)  # new children per rescored node from its own distribution
    rescore_passes: int = Field(1, ge=1, le=4)  # conditioned passes: each rebuilds the candidate tree from the last one's trie
    # prompt lookup in the same tree: the `ngram` drafter's continuations (default options) are
    # merged into the head's proposal, and the scorer spends the budget on the best of both. On
    # SmolLM2 this beats the head and n-gram alone on every prompt set (bench/RESULTS.md).
    lookup: bool = True
    # score the lookup's edges by the acceptance rates measured for the head's target, the
    # checkpoint's `lookup.json` (`jetspec fit-lookup`), where it has one; false: by count fractions
    lookup_calibration: bool = True
    # true: score the head's candidates by the acceptance rates measured for it on held-out answers
    # (the checkpoint's `head_rates.json`, `jetspec calibrate-head`: by depth, the parent's rank and
    # q), where it has one; false: by the head's log q. Off by default: on SmolLM2 it lifts the
    # default drafter's τ ~1-2 % at budget 16 and not at 64 or 256, for ~90 µs more host time a
    # round on a 2-core CPU (bench/RESULTS.md, 2026-12-05 09:07)
    head_calibration: bool = False
    cuda_graphs: bool = True  # on CUDA, replay the one-forward draft and the context append from captured graphs
    # the one-forward draft, the context append and rescoring's forward through torch.compile (inductor
    # fuses their ~100 and ~30 small operators into a few kernels; the CUDA graphs capture those). Drafts only, so the
    # output stays exact whatever the fused arithmetic rounds. The first draft of a process compiles
    # (seconds; one compile serves every shape and drafter of the head's class)
    compiled: bool = False
    # on the pipeline's device path, queue the next round's context append and draft before the
    # host reads this round's result (`DraftsAhead`); false: after it (the same drafts, later)
    draft_ahead: bool = True
    # in a batch, the drafters of a step's sequences draft ahead in one job over one pool of their
    # contexts (`pool.py`); false: each in its own (the same drafts, S jobs)
    draft_together: bool = True
    # with draft_together, the prompt lookup runs on the device in the pooled job (`lookup_device.py`: each slot's
    # token history there, its trie made in array ops, the same trie as the host's) instead of on the host for each
    # sequence; false: on the host. Off until measured on a GPU
    lookup_on_device: bool = False
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

    checkpoint: str | None = None  # folder with head.safetensors + head.json, or "random"
    layers: int | None = Field(None, ge=1, le=MAX_LAYERS)
    target_layers: list[int] | None = Field(None, max_length=MAX_LAYERS)
    depth: int = Field(6, ge=1, le=MAX_BLOCK)  # head forwards per round = max draft depth
    top_k: int = Field(8, ge=1, le=MAX_TOP_K)  # children per expanded node
    frontier: int = Field(8, ge=1, le=MAX_TOP_K)  # nodes expanded per depth (best cumulative log-prob first)
    cuda_graphs: bool = True  # on CUDA, replay the context append from a captured graph
    seed: int = 0
