"""The results file: JSON lines, appended as they finish, so a killed run keeps what it did.

Row kinds:
* `run`     - one per invocation: command, machine, date, skipped peers
* `plain`   - our plain decoding of one prompt (the baseline)
* `spec`    - one speculative pipeline on one prompt
* `peer`    - one `transformers` peer on one prompt
* `summary` - one per (dataset, pipeline); rewritten at the end of each invocation

Every prompt row has a `key` (a hash of what it measured: target, generation settings, prompt
set, pipeline spec); `--resume` skips prompts whose rows exist with the current key and no error.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterable

import torch

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
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def replace_summaries(path: Path, summaries: Iterable[dict[str, Any]]) -> None:
    """Rewrite the file with its prompt and run rows, then the new summary rows (atomically)."""
    rows = [r for r in read_rows(path) if r.get("kind") != "summary"] + list(summaries)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


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
