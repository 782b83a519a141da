"""Prompt sets: the built-in benchmark files, or any JSONL with a named field.

Built-in files live in one folder, found in this order: the bench config's `prompts_dir`, the
environment variable JETSPEC_PROMPTS, then `../shared/data/prompts` next to the checkout that
holds this package. Every problem (unknown name, missing file or field, empty file) is a one-line
`ConfigError` raised while planning, before any model loads.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..core.errors import ConfigError
from .config import BenchConfig, DatasetSpec

PROMPTS_ENV = "JETSPEC_PROMPTS"
# built-in name -> (file, prompt field)
BUILTIN = {
    "math500": ("math500.jsonl", "problem"),
    "gsm8k": ("gsm8k_test.jsonl", "question"),
    "humaneval": ("humaneval.jsonl.gz", "prompt"),
    "spec_bench": ("spec_bench.jsonl", "turns.0"),
}
# Spec-Bench's first 80 questions are MT-Bench, in these categories
MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


@dataclass(frozen=True)
class Prompt:
    dataset: str
    id: str  # stable within the dataset: the record's line number in its file
    text: str
    chat_template: bool


def prompts_dir(configured: str | None = None) -> Path:
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(PROMPTS_ENV):
        return Path(os.environ[PROMPTS_ENV]).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    return checkout.parent / "shared" / "data" / "prompts"


def jsonl_lines(path: Path, errors: str = "strict") -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, record) for each non-blank line of a JSONL file (`.gz` read as gzip); where a
    line is not a JSON object, (line number, what is wrong) instead: the caller decides whether
    that ends the read or is reported and skipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors=errors) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, f"not JSON ({e.msg})"
                continue
            yield n, rec if isinstance(rec, dict) else "not a JSON object"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"prompt file '{path}' not found")
    records = []
    for n, rec in jsonl_lines(path):
        if isinstance(rec, str):
            raise ConfigError(f"prompt file '{path}' line {n} is {rec}")
        records.append(rec)
    if not records:
        raise ConfigError(f"prompt file '{path}' holds no prompts")
    return records


def get_field(record: dict[str, Any], field: str) -> Any:
    """`field` with dots indexing nested values: 'turns.0' is record['turns'][0]; KeyError if absent."""
    value: Any = record
    for part in field.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(field)
    return value


def _resolve(spec: DatasetSpec, folder: Path) -> tuple[Path, str, tuple[str, ...] | None]:
    """(file, field, categories to keep or None) of a dataset spec."""
    if spec.path is not None:
        if spec.field is None:
            raise ConfigError(f"dataset '{spec.name}': a `path` needs a `field` naming the prompt")
        return Path(spec.path).expanduser(), spec.field, None
    base, _, category = spec.name.partition("/")
    if base not in BUILTIN:
        raise ConfigError(
            f"unknown dataset '{spec.name}'; built-in: {', '.join(BUILTIN)}, spec_bench/<category>, "
            "spec_bench/mt_bench; or give `path` and `field`"
        )
    file, field = BUILTIN[base]
    field = spec.field or field
    if not category:
        return folder / file, field, None
    if base != "spec_bench":
        raise ConfigError(f"dataset '{spec.name}': only spec_bench has categories")
    return folder / file, field, MT_BENCH if category == "mt_bench" else (category,)


def load_prompts(spec: DatasetSpec, bench: BenchConfig) -> list[Prompt]:
    path, field, categories = _resolve(spec, prompts_dir(bench.prompts_dir))
    records = list(enumerate(read_jsonl(path)))
    if categories is not None:
        known = sorted({str(r.get("category")) for _, r in records})
        records = [(i, r) for i, r in records if r.get("category") in categories]
        if not records:
            raise ConfigError(f"dataset '{spec.name}': no prompts in that category; categories: mt_bench, {', '.join(known)}")
    texts = []
    for i, rec in records:
        try:
            text = get_field(rec, field)
        except KeyError:
            raise ConfigError(
                f"dataset '{spec.name}': record {i + 1} of '{path}' has no field '{field}'; fields: {', '.join(rec)}"
            ) from None
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"dataset '{spec.name}': record {i + 1} of '{path}' has an empty or non-text '{field}'")
        texts.append((i, text))
    count = spec.count or bench.count
    if count is not None and count < len(texts):
        rng = random.Random(bench.seed if spec.seed is None else spec.seed)
        texts = sorted(rng.sample(texts, count))
    chat = bench.chat_template if spec.chat_template is None else spec.chat_template
    return [Prompt(spec.name, str(i), text, chat) for i, text in texts]


def interleave(prompt_sets: list[list[Prompt]]) -> list[Prompt]:
    """Round-robin over datasets (1st of each, then 2nd of each, ...), so a run stopped early
    holds balanced subsets of every dataset."""
    out = []
    for k in range(max((len(s) for s in prompt_sets), default=0)):
        out.extend(s[k] for s in prompt_sets if k < len(s))
    return out
