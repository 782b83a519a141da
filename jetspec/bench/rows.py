"""The results file: JSON lines, appended as they finish, so a killed run keeps what it did.

Row kinds:
* `run`     - one per invocation: command, machine, date, skipped peers
* `plain`   - our plain decoding of one prompt (the baseline)
* `spec`    - one speculative pipeline on one prompt
* `peer`    - one `transformers` peer on one prompt
* `summary` - one per (dataset, pipeline); rewritten at the end of each invocation

Every prompt row has a `key` (a hash of what it measured: target, generation settings, prompt
set, pipeline spec); `--resume` skips prompts whose rows exist with the current key and no error.

Several processes may share one file (shards of a sweep): every append and every summary rewrite
holds the lock of the file's folder (`core/files.py`), so a rewrite never drops a row appended
meanwhile, and the rewrite itself is one rename. A line cut short by a kill is cut off before the
next append (`append_row`), so it can never swallow the row written after it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import torch

from ..core.files import locked, write_atomic

PROMPT_KINDS = ("plain", "spec", "peer")


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_row(command: str, skipped_peers: dict[str, str]) -> dict[str, Any]:
    return {
        "kind": "run",
        "run": datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": command,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "skipped_peers": skipped_peers,
    }


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut short by a kill: that row is redone
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    line = (json.dumps(row) + "\n").encode()
    with locked(path.parent), path.open("a+b") as f:
        f.truncate(complete_length(f))  # drop a torn last line (a killed writer's; that row is redone)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def complete_length(f: BinaryIO, chunk: int = 1 << 16) -> int:
    """The length of the file's complete lines: up to and including its last newline."""
    end = f.seek(0, os.SEEK_END)
    pos = end
    while pos > 0:
        start = max(0, pos - chunk)
        f.seek(start)
        block = f.read(pos - start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        pos = start
    return 0


def replace_summaries(path: Path, summaries: Iterable[dict[str, Any]]) -> None:
    """Rewrite the file with its prompt and run rows, then the new summary rows: under the lock
    (no append is lost), in one rename (a reader sees the old file or the new one)."""
    with locked(path.parent):
        rows = [r for r in read_rows(path) if r.get("kind") != "summary"] + list(summaries)
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def done_keys(rows: Iterable[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(dataset, prompt id, pipeline, key) of every finished prompt row."""
    return {
        (r["dataset"], r["prompt_id"], r["pipeline"], r["key"])
        for r in rows
        if r.get("kind") in PROMPT_KINDS and not r.get("error")
    }


def latest_prompt_rows(rows: Iterable[dict[str, Any]], keys: dict[str, str]) -> list[dict[str, Any]]:
    """The last row of each (dataset, prompt, pipeline) whose key is the current one for its
    pipeline (`keys`: pipeline -> key); stale rows from another config are left out."""
    last: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        if r.get("kind") in PROMPT_KINDS and keys.get(r["pipeline"]) == r["key"]:
            last[(r["dataset"], r["prompt_id"], r["pipeline"])] = r
    return list(last.values())
