"""Self-distillation data: the frozen target answers training prompts greedily, and the answers
are kept as token ids, so retraining any head reuses them without regenerating.

Stored as ONE safetensors file (ragged rows as a flat tensor + offsets):
    tokens      [total] int32   prompt (chat template applied) + answer (up to and incl. EOS), row after row
    offsets     [S + 1] int64   row s = tokens[offsets[s] : offsets[s + 1]]
    prompt_lens [S] int32       row s's answer starts at offsets[s] + prompt_lens[s]
and metadata (target name, fingerprint, prompt source, max_new_tokens).
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ...core.errors import InputError

# Evaluation sets: never train on them (checked on the prompt file's name).
EVAL_SETS = ("math500", "gsm8k_test", "humaneval", "spec_bench", "mt_bench")


@dataclass
class TokenData:
    tokens: torch.Tensor  # [total] int32
    offsets: torch.Tensor  # [S + 1] int64
    prompt_lens: torch.Tensor  # [S] int32
    meta: dict[str, str] = field(default_factory=dict)

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


@torch.no_grad()
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
    """Greedy answers of a Hugging Face causal LM, batched with left padding. Prompts are taken in
    a seeded random order, sorted by length within groups of 8 batches (less padding, no length
    bias when `time_limit_s` stops it early, after a whole batch)."""
    device = next(model.parameters()).device
    shuffled = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0)).tolist()
    group = 8 * batch_size
    order = [i for g in range(0, len(shuffled), group) for i in sorted(shuffled[g : g + group], key=lambda i: len(prompts[i]))]
    rows, plens = [], []
    start = time.monotonic()
    bar = tqdm(total=len(order), desc="self-distill", unit="prompt")
    eos = set(int(e) for e in eos_ids)
    for b in range(0, len(order), batch_size):
        batch = [list(prompts[i]) for i in order[b : b + batch_size]]
        width = max(map(len, batch))
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch], device=device)  # [b, width]
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        out = model.generate(
            input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=list(eos), pad_token_id=pad_id, top_p=None, top_k=None, temperature=None,
        )  # fmt: skip
        for p, gen in zip(batch, out[:, width:].tolist()):
            end = next((i + 1 for i, t in enumerate(gen) if t in eos), len(gen))
            if end > 0:
                rows.append(p + gen[:end])
                plens.append(len(p))
        bar.update(len(batch))
        if time_limit_s is not None and time.monotonic() - start > time_limit_s:
            break
    bar.close()
    return TokenData.from_rows(rows, plens, meta)
