"""Overlap of training text with the evaluation sets: word n-grams (n = 13, the GPT-3 check).

Every n-gram of every evaluation item (its prompt, and its reference solution or answer where the
file has one) goes into one set; a training text that shares any n-gram with it overlaps, and the
corpus drops it. A text shorter than n words cannot overlap (nor can a short evaluation item be
found: 13 words is the usual compromise between missing a paraphrase and flagging boilerplate).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from ...core.errors import InputError
from .dedupe import words

# file -> the fields whose text is checked (a list field: every element)
EVAL_FILES = {
    "math500.jsonl": ("problem", "solution"),
    "gsm8k_test.jsonl": ("question", "answer"),
    "humaneval.jsonl.gz": ("prompt", "canonical_solution"),
    "spec_bench.jsonl": ("turns", "reference"),
}


def ngrams(text: str, n: int) -> set[int]:
    w = words(text)
    return {hash(" ".join(w[i : i + n])) for i in range(len(w) - n + 1)}


class EvalOverlap:
    """The n-grams of the evaluation sets; `find(text)` names the first set `text` overlaps, or None."""

    def __init__(self, folder: str | Path, n: int = 13):
        folder = Path(folder)
        missing = [f for f in EVAL_FILES if not (folder / f).is_file()]
        if missing:
            raise InputError(f"the overlap check needs the evaluation sets in {folder}: missing {', '.join(missing)} "
                             f"(pass --eval-dir: a folder holding {', '.join(EVAL_FILES)})")  # fmt: skip
        self.n = n
        self.sets: dict[str, set[int]] = {}
        self.items: dict[str, int] = {}
        for name, fields in EVAL_FILES.items():
            grams, count = set(), 0
            opener = gzip.open if name.endswith(".gz") else open
            with opener(folder / name, "rt", encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    rec = json.loads(line)
                    count += 1
                    for field in fields:
                        value = rec.get(field)
                        for text in value if isinstance(value, list) else [value]:
                            if isinstance(text, str):
                                grams |= ngrams(text, n)
            self.sets[name.split(".")[0]], self.items[name.split(".")[0]] = grams, count

    def find(self, text: str) -> str | None:
        grams = ngrams(text, self.n)
        return next((name for name, s in self.sets.items() if not grams.isdisjoint(s)), None)

    def describe(self) -> dict:
        return {"n": self.n, "unit": "word", "sets": {k: {"items": self.items[k], "ngrams": len(v)} for k, v in self.sets.items()}}
