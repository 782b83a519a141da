"""The parallel draft head (JetSpec causal / DFlash bidirectional) and what it shares with the
EAGLE-style head: model, masks, context cache, checkpoints, options, training."""

from .checkpoint import load_head, save_head
from .drafter import HeadDrafter, build_head, dflash_drafter, jetspec_drafter
from .model import DraftHead, HeadConfig
from .options import DFlashOptions, EagleOptions, HeadOptions

__all__ = [
    "DFlashOptions",
    "DraftHead",
    "EagleOptions",
    "HeadConfig",
    "HeadDrafter",
    "HeadOptions",
    "build_head",
    "dflash_drafter",
    "jetspec_drafter",
    "load_head",
    "save_head",
]
