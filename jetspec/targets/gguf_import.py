"""Import a GGUF file as a Hugging Face folder (config.json + model.safetensors + tokenizer files)
that `load_decoder_target` reads.

Dequantization is `transformers`' own GGUF support (which uses the `gguf` package); nothing here
decodes quantized blocks. A GGUF-loaded transformers model carries a GGUF quantization config and
cannot be saved as is, so the weights are moved into a fresh model built from its config, and
that one is saved. Output is written to a staging folder and renamed into place, so a folder that
exists is always complete. A conversion holds a lock on the folder that receives `out_dir`, so two
at once take turns (the second then finds `out_dir` there), and under it removes the
`.<name>.partial-*` staging folders a killed conversion left behind.

Needs the `gguf` and `accelerate` packages (`pip install jetspec[gguf]`).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..core.errors import CheckpointError
from ..core.files import locked, remove_stale

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, progress: bool = True, dtype: str = "float32") -> Path:
    """GGUF file -> HF folder `out_dir` (must not exist yet, or be empty); returns `out_dir`.

    `dtype` is the storage dtype of the saved weights; float32 keeps the dequantized values exact.
    """
    gguf_path, out_dir = Path(gguf_path).expanduser().resolve(), Path(out_dir).expanduser()
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r} for a GGUF import; choose one of {', '.join(DTYPES)}")
    if not gguf_path.is_file():
        raise CheckpointError(f"GGUF file {gguf_path} does not exist")
    say = (lambda msg: print(f"jetspec: {msg}", file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    refuse_existing(gguf_path, out_dir)
    start = time.perf_counter()

    say(f"checking {gguf_path.name} ({gguf_path.stat().st_size / 1e6:.0f} MB)")
    architecture = check_gguf(gguf_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    waiting = lambda: say(f"waiting for another process writing {out_dir}")  # noqa: E731
    with locked(out_dir.parent, waiting):
        refuse_existing(gguf_path, out_dir)  # the other process may have written it meanwhile
        for stale in remove_stale(out_dir.parent, (f".{glob.escape(out_dir.name)}.partial-*",)):
            say(f"removed {stale.name}, left by an interrupted conversion")
        staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
        try:
            with transformers_progress_bars(progress):
                say(f"dequantizing the {architecture} weights with transformers")
                model, tokenizer = read_with_transformers(gguf_path)
                say(f"writing safetensors ({dtype}) to {out_dir}")
                save_fresh_copy(model, staging, DTYPES[dtype])
                tokenizer.save_pretrained(staging)
            if out_dir.exists():
                out_dir.rmdir()  # empty (checked above, under the lock)
            staging.rename(out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    say(f"imported {gguf_path.name} in {time.perf_counter() - start:.1f} s")
    return out_dir


def refuse_existing(gguf_path: Path, out_dir: Path) -> None:
    """`out_dir` must be missing or an empty folder: one-line CheckpointError otherwise."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"cannot import {gguf_path.name} into {out_dir}: it is a file, not a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(f"cannot import {gguf_path.name} into {out_dir}: the folder exists and is not empty")


def check_gguf(path: Path) -> str:
    """Parse the GGUF header and tensor table; -> its `general.architecture`. One-line error when
    the file is corrupt or truncated (transformers' own errors are less direct)."""
    try:
        import gguf
    except ImportError:
        raise CheckpointError("importing a GGUF file needs the gguf package: pip install gguf accelerate") from None
    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode()
        end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path.name} is not a readable GGUF file (corrupt or truncated?): {reason}") from None
    if end > path.stat().st_size:
        raise CheckpointError(f"{path.name} is truncated: its tensors need {end} bytes, the file has {path.stat().st_size}")
    return architecture


@contextmanager
def transformers_progress_bars(enabled: bool):
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def read_with_transformers(path: Path):
    """-> (transformers model in float32 with dequantized weights, tokenizer), local files only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        kwargs = dict(gguf_file=path.name, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kwargs)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"transformers cannot read {path.name}: {reason}") from None
    return model, tokenizer


def save_fresh_copy(model: torch.nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """Save `model`'s weights through a fresh model of the same config minus the GGUF quantization."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict({k: v.to(dtype) for k, v in model.state_dict().items()})
    fresh.save_pretrained(folder)  # safetensors (+ generation_config.json); tied embeddings stored once
