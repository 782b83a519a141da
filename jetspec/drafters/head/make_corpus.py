"""`jetspec make-corpus`: the target writes its own training corpus, chunk by chunk (`corpus.py`).

Question slots come as a stream: each chunk of `chunk_size` slots takes `gsm8k_share` of them from
the training prompts file (GSM8K train, in a seeded order) while it lasts, the rest are Magpie
slots (`magpie.py`: slot i gets topic i mod len(topics) and a subject drawn by a generator seeded
by (seed, i)). A chunk:
  1. writes its Magpie questions (sampled at `question_temperature`), drops unfinished or empty ones;
  2. drops every question that overlaps an evaluation set (`contamination.py`, 13-gram words) or
     duplicates one kept before, in this chunk or any earlier one (`dedupe.py`);
  3. answers each kept question once per answer temperature (0: greedy; default also 0.7),
     drops an answer that overlaps an evaluation set;
  4. is saved whole; the manifest is rewritten from all chunks' stats.
The stream's position is read back from the chunks on disk, so a call stopped by `--minutes` (it
starts no chunk it expects not to finish) or killed loses at most the chunk in progress, and a
later call (also with a larger `--rows`) appends to the same stream. Chunk k samples with seed
(seed, k): the corpus is one command's function of its settings (GPU sampling is not bitwise
reproducible across machines; the settings and counts are).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...core.errors import InputError
from .contamination import EvalOverlap
from .corpus import FORMAT, chunk_files, chunk_meta, chunk_path, save_chunk, summarize, write_manifest
from .data import encode_chat, read_questions
from .dedupe import DuplicateIndex, stable_hash
from .generation import complete
from .magpie import TOPICS, synthesize_questions

# settings a later call must share with the corpus it appends to (the rest may change per call)
STREAM_FIELDS = ("seed", "topics", "gsm8k_share", "chunk_size", "answer_temperatures", "question_temperature",
                 "max_question_tokens", "max_answer_tokens")  # fmt: skip


@dataclass
class CorpusConfig:
    rows: int = 60_000  # stop once the corpus holds this many prompt/answer rows (or the stream ends)
    minutes: float | None = None  # this call's time budget
    seed: int = 0
    topics: tuple[str, ...] = tuple(TOPICS)
    gsm8k_share: float = 0.3  # of each chunk's slots, while training prompts last
    chunk_size: int = 4096  # question slots per chunk
    answer_temperatures: tuple[float, ...] = (0.0, 0.7)  # one answer per kept question at each
    question_temperature: float = 1.0
    max_question_tokens: int = 128
    max_answer_tokens: int = 256
    batch_size: int = 1024  # sequences per generate() call
    max_synthetic: int = 1_000_000  # Magpie slots at most (a stream that only finds duplicates ends)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.topics = tuple(self.topics)
        self.answer_temperatures = tuple(float(t) for t in self.answer_temperatures)
        for name, low, high in (("rows", 1, 10**8), ("chunk_size", 1, 10**6), ("batch_size", 1, 65536),
                                ("max_question_tokens", 1, 4096), ("max_answer_tokens", 1, 32768), ("max_synthetic", 0, 10**9)):  # fmt: skip
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise InputError(f"{name.replace('_', '-')} must be an integer in [{low}, {high}], got {value!r}")
        if not 0.0 <= self.gsm8k_share <= 1.0:
            raise InputError(f"gsm8k-share must be in [0, 1], got {self.gsm8k_share}")
        if not self.answer_temperatures or any(not 0.0 <= t <= 2.0 for t in self.answer_temperatures):
            raise InputError(f"answer temperatures must be one or more numbers in [0, 2], got {list(self.answer_temperatures)}")
        if not 0.0 < self.question_temperature <= 2.0:
            raise InputError(f"question-temperature must be in (0, 2], got {self.question_temperature}")
        if self.minutes is not None and not self.minutes > 0:
            raise InputError(f"minutes must be > 0, got {self.minutes}")
        unknown = [t for t in self.topics if t not in TOPICS]
        if unknown or not self.topics:
            raise InputError(f"unknown topic {', '.join(unknown) or '(none given)'}; topics: {', '.join(TOPICS)}")


def magpie_slot(seed: int, i: int, topics: tuple[str, ...]) -> tuple[str, str]:
    topic = topics[i % len(topics)]
    return topic, random.Random(seed * 10_000_019 + i).choice(TOPICS[topic])


def make_corpus(
    model: Any, tokenizer: Any, out: str | Path, cfg: CorpusConfig, identity: dict[str, Any], prompts: list[str],
    eval_overlap: EvalOverlap, *, command: str = "", progress: bool = True, clock_start: float | None = None,
) -> dict:  # fmt: skip
    """Append chunks to the corpus in `out` until it holds `cfg.rows` rows, the stream ends or the
    time budget would be exceeded; -> the manifest. `prompts`: the training prompts (GSM8K train)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic() if clock_start is None else clock_start
    eos = _eos(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k in STREAM_FIELDS}
    prompts_order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    manifest_path = out / "manifest.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if old is not None:
        _check_same_stream(out, old, settings, identity, len(prompts))

    seen = DuplicateIndex(seed=cfg.seed)
    stats: list[dict] = []
    for path in chunk_files(out):  # the stream's position and the questions kept so far
        questions, s = chunk_meta(path)
        for _, text in questions:
            seen.add(text)
        stats.append(s)
    calls = (old or {}).get("calls", []) + [{"command": command, "chunks_before": len(stats), "chunks_made": 0, "seconds": 0.0}]
    chunk_seconds = [s["seconds"] for s in stats]

    def manifest() -> dict:
        total = summarize(stats)
        return {"format": FORMAT, "target": identity, "settings": settings, "rows_wanted": cfg.rows,
                "prompts": {"file": cfg.extra.get("prompts_file"), "questions": len(prompts)},
                "chunks": len(stats), "complete": done(), **total,
                "overlap_check": {**eval_overlap.describe(), "dropped": total["overlap_dropped"]},
                "dedupe": {"exact": "normalized words", "near": f"MinHash LSH {seen.bands}x{seen.rows}, word 3-gram Jaccard >= {seen.threshold}"},
                "calls": calls}  # fmt: skip

    def done() -> bool:
        rows = sum(s["rows"] for s in stats)
        used_p = sum(s["slots/gsm8k_train"] for s in stats)
        used_m = sum(s["slots/magpie"] for s in stats)
        return rows >= cfg.rows or (used_p >= len(prompts) and used_m >= cfg.max_synthetic)

    while not done():
        elapsed = time.monotonic() - start
        guess = max(chunk_seconds[-3:], default=0.0)  # the slowest of the last chunks
        if cfg.minutes is not None and elapsed + guess > cfg.minutes * 60:
            break
        t0, k = time.monotonic(), len(stats)
        used_p = sum(s["slots/gsm8k_train"] for s in stats)
        used_m = sum(s["slots/magpie"] for s in stats)
        n_p = min(len(prompts) - used_p, round(cfg.gsm8k_share * cfg.chunk_size))
        n_m = min(cfg.chunk_size - n_p, cfg.max_synthetic - used_m)
        s = _make_chunk(model, tokenizer, out, k, cfg, [prompts[i] for i in prompts_order[used_p : used_p + n_p]],
                        [magpie_slot(cfg.seed, used_m + i, cfg.topics) for i in range(n_m)], seen, eval_overlap,
                        eos, pad, identity["vocab_size"], progress, t0)  # fmt: skip
        stats.append(s)
        chunk_seconds.append(s["seconds"])
        calls[-1]["chunks_made"] += 1
        calls[-1]["seconds"] = round(time.monotonic() - start, 1)
        write_manifest(out, manifest())
        print(f"chunk {k}: {s['rows']} rows, {s['questions']} questions in {s['seconds']} s; "
              f"corpus {sum(x['rows'] for x in stats)} rows", file=sys.stderr, flush=True)  # one line per chunk, bars or not
    calls[-1]["seconds"] = round(time.monotonic() - start, 1)
    m = manifest()
    write_manifest(out, m)
    return m


def _make_chunk(model, tokenizer, out: Path, k: int, cfg: CorpusConfig, prompts: list[str], slots: list[tuple[str, str]],
                seen: DuplicateIndex, overlap: EvalOverlap, eos: list[int], pad: int, vocab: int, progress: bool, t0: float) -> dict:  # fmt: skip
    stats = {"rows": 0, "questions": 0, "answer_tokens": 0, "slots/gsm8k_train": len(prompts), "slots/magpie": len(slots)}

    def count(key: str) -> None:
        stats[key] = stats.get(key, 0) + 1

    written, dropped = synthesize_questions(
        model, tokenizer, slots, eos, pad, max_tokens=cfg.max_question_tokens, temperature=cfg.question_temperature,
        batch_size=cfg.batch_size, seed=cfg.seed * 100_003 + k, progress=progress,
    ) if slots else ([], {})  # fmt: skip
    for reason, n in dropped.items():
        stats[f"dropped/{reason}"] = n
    questions: list[tuple[str, str]] = []
    for source, text in [("gsm8k_train", q) for q in prompts] + [(f"magpie/{t}", q) for t, q in written]:
        hit = overlap.find(text)
        if hit:
            count(f"overlap/question:{hit}")
            continue
        before = dict(seen.dropped)
        if not seen.add(text):
            count("dropped/duplicate_exact" if seen.dropped["exact"] > before["exact"] else "dropped/duplicate_near")
            continue
        questions.append((source, text))
        count(f"questions/{source}")
    stats["questions"] = len(questions)

    encoded = encode_chat(tokenizer, [q for _, q in questions])
    rows = []
    for j, temperature in enumerate(cfg.answer_temperatures):
        answers = complete(model, encoded, eos, pad, cfg.max_answer_tokens, cfg.batch_size, temperature=temperature,
                           seed=cfg.seed * 100_003 + k * 17 + j, progress=progress, desc=f"answers T={temperature:g}")  # fmt: skip
        for (source, text), prompt, answer in zip(questions, encoded, answers):
            if not answer:
                continue
            hit = overlap.find(tokenizer.decode(answer, skip_special_tokens=True))
            if hit:
                count(f"overlap/answer:{hit}")
                continue
            rows.append({"prompt": prompt, "answer": answer, "source": source, "temperature": temperature,
                         "question_hash": stable_hash(text)})  # fmt: skip
            count(f"rows/{source}")
            count(f"temperature/{temperature:g}")
            stats["answer_tokens"] += len(answer)
    stats["rows"] = len(rows)
    stats["seconds"] = round(time.monotonic() - t0, 1)
    save_chunk(chunk_path(out, k), rows, questions, stats, vocab)
    return stats


def _eos(model: Any, tokenizer: Any) -> list[int]:
    from .frozen_target import eos_ids

    eos = eos_ids(model, tokenizer)
    if not eos:
        raise InputError("the target names no end-of-sequence token; questions and answers need one to end")
    return eos


def _check_same_stream(out: Path, old: dict, settings: dict, identity: dict, n_prompts: int) -> None:
    if old.get("format") != FORMAT:
        raise InputError(f"{out}/manifest.json is not a {FORMAT} manifest; use another --out")
    if old["target"].get("target_fingerprint") != identity["target_fingerprint"]:
        raise InputError(f"{out} holds a corpus of target {old['target'].get('target_name')!r}, not this one; use another --out")
    for key, value in settings.items():
        if old["settings"].get(key) != value:
            raise InputError(f"{out} was made with {key} = {old['settings'].get(key)!r}, this call asks {value!r}: "
                             "a corpus appends only with the same settings; use another --out")  # fmt: skip
    if old["prompts"]["questions"] != n_prompts:
        raise InputError(f"{out} was made from {old['prompts']['questions']} training prompts, this call reads {n_prompts}; "
                         "use the same --prompts file or another --out")  # fmt: skip


def main(argv: list[str] | None = None, formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> int:
    """`jetspec make-corpus`; the CLI passes its help formatter (which shows the defaults)."""
    t0 = time.monotonic()  # the time budget counts from here, loading included
    d = CorpusConfig()
    ap = argparse.ArgumentParser(prog="jetspec make-corpus", description=__doc__, formatter_class=formatter_class)
    ap.add_argument("--out", required=True, help="corpus folder (created, or appended to with the same settings)")
    ap.add_argument("--target", default="default", help="Hugging Face folder of the frozen target; default: the embedded SmolLM2")
    ap.add_argument("--prompts", default=None, help="training prompts (.jsonl) mixed in (default: gsm8k_train.jsonl of the prompt sets)")
    ap.add_argument("--eval-dir", default=None, help="folder of the evaluation sets for the overlap check (default: the prompt sets)")
    ap.add_argument("--rows", type=int, default=d.rows, help="prompt/answer rows wanted in the corpus")
    ap.add_argument("--minutes", type=float, default=None, help="this call's time budget (default: none); a later call goes on")
    ap.add_argument("--topics", default=",".join(d.topics), help=f"Magpie seed topics, comma-separated, of {', '.join(TOPICS)}")
    ap.add_argument("--gsm8k-share", type=float, default=d.gsm8k_share, help="share of each chunk's slots from --prompts, while they last")
    ap.add_argument("--answer-temperatures", default=",".join(f"{t:g}" for t in d.answer_temperatures),
                    help="one answer per question at each temperature (0: greedy)")
    ap.add_argument("--question-temperature", type=float, default=d.question_temperature, help="sampling temperature of Magpie questions")
    ap.add_argument("--chunk-size", type=int, default=d.chunk_size, help="question slots per chunk (the unit saved)")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per batched generate call")
    ap.add_argument("--max-question-tokens", type=int, default=d.max_question_tokens, help="a longer question is dropped")
    ap.add_argument("--max-answer-tokens", type=int, default=d.max_answer_tokens, help="answers are cut here")
    ap.add_argument("--seed", type=int, default=d.seed, help="random seed (question order, topics, sampling)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    try:
        temps = tuple(float(t) for t in a.answer_temperatures.split(","))
    except ValueError:
        raise InputError(f"answer-temperatures must be comma-separated numbers, got {a.answer_temperatures!r}") from None
    from ...bench.datasets import prompts_dir  # the one place that knows where the prompt sets live (entry point only)

    folder = prompts_dir()
    prompts_file = Path(a.prompts) if a.prompts else folder / "gsm8k_train.jsonl"
    cfg = CorpusConfig(rows=a.rows, minutes=a.minutes, seed=a.seed, topics=tuple(t.strip() for t in a.topics.split(",") if t.strip()),
                       gsm8k_share=a.gsm8k_share, chunk_size=a.chunk_size, answer_temperatures=temps,
                       question_temperature=a.question_temperature, max_question_tokens=a.max_question_tokens,
                       max_answer_tokens=a.max_answer_tokens, batch_size=a.batch_size,
                       extra={"prompts_file": prompts_file.name})  # fmt: skip
    if not prompts_file.is_file():
        raise InputError(f"no training prompts at {prompts_file}; pass --prompts FILE.jsonl (a training set, never an evaluation set)")
    overlap = EvalOverlap(Path(a.eval_dir) if a.eval_dir else folder)
    prompts = read_questions(prompts_file)
    from .frozen_target import hf_identity, load_hf_target

    if a.target == "default":
        from ...targets.default_model import default_model_path

        target = default_model_path()
    else:
        target = Path(a.target)
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tokenizer = load_hf_target(target, dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    identity = hf_identity(model, target.name)
    command = "jetspec make-corpus " + " ".join(argv if argv is not None else sys.argv[1:])
    m = make_corpus(model, tokenizer, a.out, cfg, identity, prompts, overlap, command=command, progress=not a.no_progress, clock_start=t0)
    keys = ("rows", "questions", "answer_tokens", "chunks", "complete", "rows_by_source", "dropped", "overlap_dropped")
    print(json.dumps({k: m[k] for k in keys}, indent=1))
    return 0
