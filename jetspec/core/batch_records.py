"""What a batched run (`batch_engine.py`) keeps: per sequence in flight, per step queued on the device,
and per prompt finished."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .batch import BatchMeta
from .batch_accept import Accepted
from .batch_grow import Grower
from .errors import JetSpecError
from .interfaces import DecodeState
from .on_device import DeviceTree, Readback
from .results import GenerationResult, GenerationStats
from .tree import DraftTree


@dataclass
class Finished:
    """One prompt done: `result` (None if it failed before its prefill) and `error` (None if it
    succeeded; else the one-line error, with `error.partial` what it had committed)."""

    index: int  # the prompt's position in the input list
    result: GenerationResult | None
    error: Exception | None
    seconds: float  # wall time from admission to finish


@dataclass
class SequenceInFlight:
    """A prompt in a slot: its state and statistics so far."""

    index: int
    slot: int
    state: DecodeState
    stats: GenerationStats
    started: float


@dataclass
class LaunchedStep:
    """A step queued on the device whose host side is not done yet (`BatchEngine._land`)."""

    trees: list[tuple[SequenceInFlight, DraftTree | None]]  # None: grown on the device, read back when it lands
    meta: BatchMeta
    dtrees: list[DeviceTree]  # the device path's (empty on the host path)
    hidden: torch.Tensor | None  # [R, k, H] the rows the drafters observe
    readback: Readback  # its half's
    t0: float  # host clock before the caches' reservations
    t1: float  # after the forward was queued
    paths: list[torch.Tensor | JetSpecError] | None = None  # device path: `start_on_device`'s
    accepted: list[Accepted] | None = None  # host path: decided at launch
    queued: float = 0.0  # host seconds queueing (device path) or deciding (host path) the acceptance
    failed: dict[int, JetSpecError] = field(default_factory=dict)  # sequence -> its `draft_ahead` error, or its grown tree's
    grower: Grower | None = None  # the trees were grown on the device: read back by this half's `Grower` when it lands
