"""`tiny_checkpoint(family)` -> (folder, hf_model): the folder holds config.json + model.safetensors
written by transformers' `save_pretrained`; hf_model is the transformers model with the same
weights (fp32, eager attention). One of each per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from support.hf_checkpoints import make_hf_model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    made: dict[str, tuple[Path, torch.nn.Module]] = {}

    def get(family: str) -> tuple[Path, torch.nn.Module]:
        if family not in made:
            folder = tmp_path_factory.mktemp(family)
            model = make_hf_model(family)
            model.save_pretrained(folder)  # safetensors
            made[family] = (folder, model)
        return made[family]

    return get
