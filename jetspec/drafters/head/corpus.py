"""A self-distilled training corpus on disk: chunk files of token ids and one manifest.

    DIR/manifest.json            what the corpus is: target identity, settings, seed, the command of
                                 every call, counts per source / topic / answer temperature, what
                                 was dropped and why (duplicates, overlap with the evaluation sets)
    DIR/chunk-00000.safetensors  one chunk of question slots, made and saved whole:
        tokens        [total] uint16 (int32 when the vocabulary exceeds 65536)
                                   prompt (chat template applied) + answer, row after row
        offsets       [S + 1] int64  row s = tokens[offsets[s] : offsets[s + 1]]
        prompt_lens   [S] int32      row s's answer starts at offsets[s] + prompt_lens[s]
        source        [S] int16      index into SOURCES
        temperature   [S] float32    0: the greedy answer; > 0: sampled at that temperature
        question_hash [S] int64      `dedupe.stable_hash` of the question (rows of one question share it)
      metadata: "questions" (JSON [[source, text], ...] of the chunk's kept questions, for
      deduplication by a later call), "stats" (JSON counts of the chunk)

A chunk file appears only complete (written to a temporary name, then renamed), so a call killed
mid-chunk loses that chunk and nothing else; the next call goes on from the chunks on disk.

Validation holds out whole questions by their hash (`train.split_rows`): both answers of a
question are on the same side.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from ...core.errors import InputError
from .data import TokenData
from .magpie import TOPICS

SOURCES = ("gsm8k_train",) + tuple(f"magpie/{t}" for t in TOPICS)
FORMAT = "jetspec-corpus/1"


def chunk_path(folder: Path, k: int) -> Path:
    return folder / f"chunk-{k:05d}.safetensors"


def chunk_files(folder: Path) -> list[Path]:
    """The chunks 0, 1, ... present without a gap (a later file after a gap is not part of it)."""
    out = []
    while chunk_path(folder, len(out)).is_file():
        out.append(chunk_path(folder, len(out)))
    return out


def save_chunk(path: Path, rows: list[dict[str, Any]], questions: list[tuple[str, str]], stats: dict, vocab_size: int) -> None:
    """rows: dicts with prompt (ids), answer (ids), source (name), temperature, question_hash."""
    lengths = np.array([len(r["prompt"]) + len(r["answer"]) for r in rows], dtype=np.int64)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.int32
    tokens = np.fromiter((t for r in rows for t in (*r["prompt"], *r["answer"])), dtype=dtype, count=int(offsets[-1]))
    tensors = {
        "tokens": tokens, "offsets": offsets,  # [total], [S + 1]
        "prompt_lens": np.array([len(r["prompt"]) for r in rows], dtype=np.int32),  # [S]
        "source": np.array([SOURCES.index(r["source"]) for r in rows], dtype=np.int16),  # [S]
        "temperature": np.array([r["temperature"] for r in rows], dtype=np.float32),  # [S]
        "question_hash": np.array([r["question_hash"] for r in rows], dtype=np.int64),  # [S]
    }  # fmt: skip
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"questions": json.dumps(questions), "stats": json.dumps(stats)})
    os.replace(tmp, path)


def chunk_meta(path: Path) -> tuple[list[tuple[str, str]], dict]:
    with safe_open(str(path), "np") as f:
        meta = f.metadata() or {}
    return [tuple(q) for q in json.loads(meta["questions"])], json.loads(meta["stats"])


def write_manifest(folder: Path, manifest: dict) -> None:
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, folder / "manifest.json")


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise InputError(f"{folder} is not a corpus (no manifest.json); make one with `jetspec make-corpus`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path} is not a {FORMAT} manifest (format {manifest.get('format')!r})")
    return manifest


def summarize(stats: list[dict]) -> dict:
    """Counts of a corpus from its chunks' stats (each a flat dict of counters)."""
    total: Counter = Counter()
    for s in stats:
        total.update(s)
    keys = sorted(total)
    group = lambda prefix: {k[len(prefix):]: total[k] for k in keys if k.startswith(prefix)}  # noqa: E731
    return {
        "rows": total["rows"], "questions": total["questions"], "answer_tokens": total["answer_tokens"],
        "rows_by_source": group("rows/"), "questions_by_source": group("questions/"), "rows_by_temperature": group("temperature/"),
        "slots": group("slots/"), "dropped": group("dropped/"), "overlap_dropped": group("overlap/"),
        "generation_seconds": round(total["seconds"], 1),
    }  # fmt: skip


def load_corpus(folder: str | Path) -> TokenData:
    """All chunks as one TokenData (tokens as int32), with the per-row columns `source`,
    `temperature`, `question_hash`, and the manifest's target identity in `meta`."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = chunk_files(folder)
    if not files:
        raise InputError(f"corpus {folder} has no chunks yet; run `jetspec make-corpus` into it")
    parts: dict[str, list[torch.Tensor]] = {}
    base = 0
    for path in files:
        with safe_open(str(path), "np") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}
        t["tokens"] = t["tokens"].astype(np.int32)
        t["offsets"] = t["offsets"][:-1] + base
        base += int(t["tokens"].shape[0])
        for k, v in t.items():
            parts.setdefault(k, []).append(torch.from_numpy(v))
    cat = {k: torch.cat(v) for k, v in parts.items()}
    offsets = torch.cat([cat["offsets"], torch.tensor([base])])  # [S + 1]
    target = manifest["target"]
    meta = {"target_name": target["target_name"], "target_fingerprint": target["target_fingerprint"],
            "prompts": f"corpus {folder.name}", "corpus_rows": str(len(cat["prompt_lens"]))}  # fmt: skip
    columns = {"source": cat["source"], "temperature": cat["temperature"], "question_hash": cat["question_hash"]}
    return TokenData(cat["tokens"], offsets, cat["prompt_lens"], meta, columns)
