"""Self-distillation data: the frozen target answers training prompts greedily, and the answers
are kept as token ids, so retraining any head reuses them without regenerating.

Stored as ONE safetensors file (ragged rows as a flat tensor + offsets):
    tokens      [total] int32   prompt (chat template applied) + answer (up to and incl. EOS), row after row
    offsets     [S + 1] int64   row s = tokens[offsets[s] : offsets[s + 1]]
    prompt_lens [S] int32       row s's answer starts at offsets[s] + prompt_lens[s]
and metadata (target name, fingerprint, prompt source, max_new_tokens). A corpus (`corpus.py`)
adds per-row `columns` ([S] each: source, temperature, question_hash).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from ...core.errors import InputError
from .generation import complete

# Evaluation sets: never train on them (checked on the prompt file's name).
EVAL_SETS = ("math500", "gsm8k_test", "humaneval", "spec_bench", "mt_bench")


@dataclass
class TokenData:
    tokens: torch.Tensor  # [total] int32
    offsets: torch.Tensor  # [S + 1] int64
    prompt_lens: torch.Tensor  # [S] int32
    meta: dict[str, str] = field(default_factory=dict)
    columns: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [S]

    @staticmethod
    def from_rows(rows: Sequence[Sequence[int]], prompt_lens: Sequence[int], meta: dict[str, str] | None = None) -> "TokenData":
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
        offsets[1:] = lengths.cumsum(0)
        flat = torch.tensor([t for r in rows for t in r], dtype=torch.int32)
        return TokenData(flat, offsets, torch.tensor(list(prompt_lens), dtype=torch.int32), dict(meta or {}))

    def __len__(self) -> int:
        return self.prompt_lens.numel()

    def row(self, s: int) -> torch.Tensor:
        return self.tokens[self.offsets[s] : self.offsets[s + 1]].long()

    @property
    def answer_tokens(self) -> int:
        return int((self.offsets[1:] - self.offsets[:-1]).sum() - self.prompt_lens.long().sum())

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"tokens": self.tokens, "offsets": self.offsets, "prompt_lens": self.prompt_lens}
        save_file(tensors, str(path), metadata={k: str(v) for k, v in self.meta.items()})
        return path

    @staticmethod
    def load(path: str | Path) -> "TokenData":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        t = load_file(str(path))
        return TokenData(t["tokens"], t["offsets"], t["prompt_lens"], meta)


def read_questions(path: str | Path, limit: int | None = None) -> list[str]:
    """User prompts of a .jsonl(.gz) file (field `question`, `prompt`, `instruction` or `turns[0]`)."""
    path = Path(path)
    if any(name in path.name.lower().replace("-", "_") for name in EVAL_SETS):
        raise InputError(f"{path.name} is an evaluation set; train heads on training prompts only (e.g. gsm8k_train.jsonl)")
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[str] = []
    with opener(path, "rt") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            text = rec.get("question") or rec.get("prompt") or rec.get("instruction") or (rec.get("turns") or [None])[0]
            if text:
                out.append(str(text))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise InputError(f"no prompts found in {path}")
    return out


def encode_chat(tokenizer: Any, questions: Sequence[str]) -> list[list[int]]:
    """Each question as one user turn of the tokenizer's chat template, ready for the answer."""
    ids = []
    for q in questions:
        text = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def generate_answers(
    model: Any,
    prompts: Sequence[Sequence[int]],
    eos_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    time_limit_s: float | None = None,
    meta: dict[str, str] | None = None,
) -> TokenData:
    """Greedy answers of a Hugging Face causal LM (`generation.complete`), one row per prompt
    reached before `time_limit_s`: prompt + answer."""
    answers = complete(model, prompts, eos_ids, pad_id, max_new_tokens, batch_size, time_limit_s=time_limit_s, desc="self-distill")
    done = [(list(p), a) for p, a in zip(prompts, answers) if a]
    return TokenData.from_rows([p + a for p, a in done], [len(p) for p, _ in done], meta)
