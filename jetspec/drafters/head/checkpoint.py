"""Head checkpoints: a folder with `head.safetensors` (the head's own weights only: no embedding,
no LM head; bfloat16, the dtype heads run in on GPUs: ~16 MB for a 2-layer SmolLM2 head) and `head.json` (its `HeadConfig`, which records the target's name, fingerprint and
fused layer ids). Loading onto another target is a one-line `CheckpointError`. A folder may also
hold `lookup.json`: the acceptance rates of prompt lookup on the head's target, which the
`jetspec` drafter scores its lookup edges with (`jetspec fit-lookup`, `drafters/lookup_calibration.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ...core.errors import CheckpointError
from ...core.interfaces import TargetInfo
from .model import DraftHead, HeadConfig

WEIGHTS, CONFIG, CALIBRATION = "head.safetensors", "head.json", "lookup.json"


def save_head(head: DraftHead, folder: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in head.state_dict().items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS)  # atomic: a crash never leaves a half-written checkpoint
    (folder / CONFIG).write_text(json.dumps(head.config.to_json(), indent=2) + "\n")
    return folder


def read_config(folder: str | Path) -> HeadConfig:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"no head checkpoint at {folder}: {CONFIG} is missing")
    try:
        return HeadConfig(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"head config {path} is unreadable: {str(e).splitlines()[0]}") from None


def check_target(config: HeadConfig, info: TargetInfo, where: str | Path) -> None:
    """The head must have been trained on this very target (same fingerprint, else same name)."""
    same = (
        config.target_fingerprint == info.fingerprint
        if config.target_fingerprint and info.fingerprint
        else config.target_name == info.name
    )
    if not same or config.hidden_size != info.hidden_size or max(config.target_layers) >= info.num_layers:
        raise CheckpointError(
            f"head checkpoint {where} was trained for target {config.target_name!r} "
            f"(fingerprint {config.target_fingerprint or '?'}), not {info.name!r} (fingerprint {info.fingerprint or '?'})"
        )


def load_head(folder: str | Path, info: TargetInfo | None = None) -> DraftHead:
    """Load a head (float32, CPU); with `info`, refuse a head trained for another target."""
    config = read_config(folder)
    if info is not None:
        check_target(config, info, folder)
    head = DraftHead(config)
    try:
        state = load_file(str(Path(folder) / WEIGHTS))
        head.load_state_dict({k: v.float() for k, v in state.items()})
    except Exception as e:  # a truncated or foreign file raises safetensors' own SafetensorError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"head weights {Path(folder) / WEIGHTS} do not load ({first[:160]}); re-export or retrain the head") from None
    return head


class UntrainedHeadError(CheckpointError):
    """No checkpoint was given and none ships for the target. `target` is the loaded target, so a
    caller that chose the drafter by default can fall back to another on it without reloading."""

    def __init__(self, kind: str, info: TargetInfo, target: object = None):
        super().__init__(
            f"no trained {kind} head for target {info.name!r}: train one with `jetspec train-head --target MODEL_DIR "
            f"--prompts FILE.jsonl --out DIR --kind {kind}` and set checkpoint = \"DIR\" "
            "(checkpoint = \"random\" drafts with untrained random weights: lossless, but nothing useful)"
        )
        self.target = target
