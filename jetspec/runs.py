"""`jetspec run`: a JSONL of prompts in, a JSONL of answers out, one sequence at a time or
`generation.batch_size` at once (`--batch-size`; batched speculative decoding, `core/batch_engine.py`).

* Input: one JSON object a line (`.gz` read as gzip). The prompt is the field `field`, or the
  first of `PROMPT_FIELDS`, or the first user turn of `CHAT_FIELDS` (a list of strings, or of
  `{"role", "content"}` messages). The id is the first of `ID_FIELDS`, else the line number.
  A line that is not a JSON object, has no prompt, or repeats an id is reported with its number
  and skipped: one bad line never ends a run.
* Output: one row per prompt, `{id, text, tokens, tau, seconds, stopped}`; where the generation
  failed, `stopped` is "error", `error` holds the message and text/tokens what it had committed
  (the run goes on), appended as each finishes through `bench/rows.append_row`
  (under the folder's lock, fsynced, a torn last line cut off first).
* Batched: rows are appended as prompts finish, so their order may differ from the input's (the
  id says which); `seconds` is a prompt's wall time from its admission to its end, and the
  summary's rate is over the run's wall time.
* Resume: every id with a row in the output, error or not, is answered; only the others run, so
  each prompt has exactly one row. A torn last line (a killed writer's) is cut off before reading.
  With `retry_errors` (`--retry-errors`) the error rows are first taken out of the output (every
  other line kept byte for byte, the file replaced in one rename), so those prompts run again and
  still end with one row each.
* Under torchrun (`run_prompts(..., ranks=...)`): data parallel over the ranks, or, for a
  tensor-parallel target, every rank on every prompt with rank 0 writing. A rank that dies ends
  the run with one line (`RankLost`); every row written before is on disk, and `--resume` (any
  number of ranks) answers the rest.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .bench.datasets import jsonl_lines
from .bench.rows import append_row, complete_length, read_rows
from .core.distributed import RankLost, Ranks, barrier, patient_group, sum_counts
from .core.errors import InputError, JetSpecError
from .core.files import locked, write_atomic
from .core.interfaces import ranks_of

PROMPT_FIELDS = ("prompt", "question", "text", "problem")
CHAT_FIELDS = ("turns", "messages")
ID_FIELDS = ("id", "task_id", "question_id", "unique_id")


@dataclass(frozen=True)
class RunPrompt:
    id: str
    text: str
    line: int  # 1-based line number in the input file


@dataclass
class RunSummary:
    done: int = 0  # prompts answered by this run (errors included)
    skipped: int = 0  # prompts already answered in the output (resume)
    errors: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        return (f"[jetspec run] {self.done} prompts done, {self.skipped} skipped, {self.errors} errors · "
                f"{self.tokens} tokens · {rate:.1f} tok/s")  # fmt: skip


def _warn(message: str) -> None:
    print(f"jetspec run: {message}", file=sys.stderr)


def prompt_text(record: dict[str, Any], field: str | None = None) -> str | None:
    """The prompt of one input record, or None if it has none (see the module docstring)."""
    names = (field,) if field else PROMPT_FIELDS + CHAT_FIELDS
    for name in names:
        value = record.get(name)
        if isinstance(value, list):  # chat turns: the first user turn
            value = next((t if isinstance(t, str) else t.get("content") for t in value
                          if isinstance(t, str) or (isinstance(t, dict) and t.get("role", "user") == "user")), None)  # fmt: skip
        if isinstance(value, str) and value.strip():
            return value
    return None


def read_prompts(path: str | Path, field: str | None = None, warn: Callable[[str], None] = _warn) -> list[RunPrompt]:
    """The usable prompts of `path`; every unusable line goes to `warn` with its number."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt file '{path}' not found")
    prompts, seen = [], set()
    for n, record in jsonl_lines(path, errors="replace"):
        if isinstance(record, str):
            warn(f"{path} line {n}: {record}; skipped")
            continue
        text = prompt_text(record, field)
        if text is None:
            wanted = field or ", ".join(PROMPT_FIELDS + CHAT_FIELDS)
            warn(f"{path} line {n}: no prompt (looked for {wanted}; fields: {', '.join(record) or 'none'}); skipped")
            continue
        pid = next((str(record[k]) for k in ID_FIELDS if record.get(k) is not None), str(n))
        if pid in seen:
            warn(f"{path} line {n}: id {pid!r} repeats an earlier line's; skipped")
            continue
        seen.add(pid)
        prompts.append(RunPrompt(pid, text, n))
    return prompts


def check_resume(resume: bool, retry_errors: bool) -> None:
    if retry_errors and not resume:
        raise InputError("--retry-errors continues an output: give it with --resume")


def answered_ids(out: Path, retry_errors: bool = False, warn: Callable[[str], None] = _warn) -> set[str]:
    """Ids with a row in `out`, after cutting off a torn last line (a killed writer's); with
    `retry_errors`, after taking the error rows out of `out` (`drop_error_rows`). Every rank of a run
    calls this before any rank appends, so whichever rank drops the rows, all read the same ids."""
    if not out.is_file():
        return set()
    with locked(out.parent):
        with out.open("r+b") as f:
            f.truncate(complete_length(f))
        dropped = drop_error_rows(out) if retry_errors else 0
    if dropped:
        warn(f"{dropped} error row(s) taken out of {out}; those prompts run again")
    return {str(r["id"]) for r in read_rows(out) if isinstance(r, dict) and "id" in r}


def drop_error_rows(out: Path) -> int:
    """Replace `out` (its lock held by the caller) by its lines without the error rows (`stopped`
    "error"), in one rename; -> how many were dropped (none: the file is left as it is)."""
    lines = out.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not _error_row(line)]
    if len(kept) < len(lines):
        write_atomic(out, "".join(kept))
    return len(lines) - len(kept)


def _error_row(line: str) -> bool:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and row.get("stopped") == "error"


def run_prompts(pipe, prompts: list[RunPrompt], out: str | Path, resume: bool = False, progress: bool = True,
                ranks: Ranks | None = None, batch_size: int | None = None, retry_errors: bool = False) -> RunSummary:
    """Generate an answer to every prompt not yet in `out` and append its row; -> the summary.
    Without `resume`, an `out` that already holds rows is an error (nothing is overwritten);
    `retry_errors` (with `resume`): prompts whose row is an error run again (their rows replaced).

    `ranks` (under torchrun): with a tensor-parallel target every rank decodes every prompt in
    lockstep and rank 0 writes the rows; otherwise the ranks split the prompts (data parallel:
    rank r answers prompts r, r + W, r + 2W, ... of the file, whatever is already answered, so no
    prompt has two owners) and each appends its own rows to `out` under its lock. Every rank reads
    `out` before any writes (a barrier), and the summary is the whole group's (rank 0 prints it).

    `batch_size` (default `generation.batch_size`) > 1 decodes that many prompts at once
    (`Pipeline.batched`; with data-parallel ranks, on each rank's share); rows then come in the
    order prompts finish."""
    from tqdm import tqdm

    out = Path(out)
    lockstep = ranks is not None and ranks_of(pipe.target) is not None
    if ranks is not None and not lockstep:
        prompts = prompts[ranks.rank :: ranks.world]
    writes = ranks is None or not lockstep or ranks.leads
    check_resume(resume, retry_errors)
    if not resume and out.is_file() and out.stat().st_size > 0:
        raise InputError(f"output '{out}' already holds rows; give --resume to continue it, or another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = answered_ids(out, retry_errors) if resume else set()
    if ranks is not None:
        barrier(ranks)  # every rank has read `out` before any rank appends to it
    patient = patient_group(ranks) if ranks is not None and not lockstep else None  # for the end: shares end apart
    todo = [p for p in prompts if p.id not in done]
    summary = RunSummary(skipped=len(prompts) - len(todo))
    batch = pipe.config.generation.batch_size if batch_size is None else batch_size
    answers = _answers(pipe, todo, batch)  # a batch that cannot run fails here, before any row
    bar = tqdm(total=len(todo), unit="prompt", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    start = time.perf_counter()
    try:
        for p, result, error, seconds in answers:
            row = {"id": p.id, "text": None, "tokens": 0, "tau": 0.0, "seconds": seconds, "stopped": "error"}
            if result is not None:
                row.update(text=result.text, tokens=result.stats.new_tokens, tau=result.stats.tau)
            if error is None:
                row["stopped"] = result.stopped  # "eos", "stop_token", "length"
            else:
                row["error"] = error
                summary.errors += 1
                bar.write(f"jetspec run: prompt {p.id} (line {p.line}): {error}", file=sys.stderr)
            if writes:
                append_row(out, row)
            if error is not None and lockstep:  # ranks that failed apart cannot meet again mid-sequence
                raise RankLost(f"prompt {p.id} (line {p.line}) failed under tensor parallelism, which ends the run "
                               f"(its error is in its row): {error}")
            summary.done += 1
            summary.tokens += row["tokens"]
            summary.seconds = time.perf_counter() - start  # wall time: batched prompts overlap
            bar.update(1)
            bar.set_postfix_str(f"{summary.tokens / max(summary.seconds, 1e-9):.1f} tok/s", refresh=False)
    finally:
        bar.close()
    if ranks is not None and not lockstep:
        counts = [summary.done, summary.skipped, summary.errors, summary.tokens]
        done_, skipped, errors, tokens = sum_counts(counts, ranks, group=patient)
        (seconds,) = sum_counts([summary.seconds], ranks, op="max", group=patient)  # the ranks decode side by side
        summary = RunSummary(int(done_), int(skipped), int(errors), int(tokens), seconds)
    return summary


Answer = tuple[RunPrompt, Any, "str | None", float]  # prompt, GenerationResult or None, error line, seconds


def _answers(pipe, todo: list[RunPrompt], batch_size: int) -> Iterator[Answer]:
    """Each prompt's result as it finishes: one at a time (`generate`), or through the batched
    engine. A failure is its error line, with what the prompt had committed (`partial`)."""
    if batch_size == 1:
        return (_one(pipe, p) for p in todo)
    engine = pipe.batched(batch_size)

    def batched() -> Iterator[Answer]:
        for done in engine.run([p.text for p in todo]):
            if isinstance(done.error, RankLost):
                raise done.error
            error = None if done.error is None else f"{type(done.error).__name__}: {done.error}"
            yield todo[done.index], done.result, error, done.seconds

    return batched()


def _one(pipe, p: RunPrompt) -> Answer:
    t0 = time.perf_counter()
    try:
        result, error = pipe.generate(p.text), None
    except RankLost:  # the group is gone: end the run; this prompt stays unanswered
        raise
    except Exception as e:  # one failing prompt must not end the run: recorded in its row
        result = e.partial if isinstance(e, JetSpecError) else None  # what it had committed
        error = f"{type(e).__name__}: {e}"
    return p, result, error, time.perf_counter() - t0
