"""Small JSON files that name their format (calibrations): write one atomically; read one, or fail in one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError


def read_format_file(path: str | Path, what: str, fmt: str, how: str) -> dict:
    """The JSON object in `path` whose "format" is `fmt`; else a one-line InputError
    "<what> <path>: <problem>; <how>" (`how`: how to make a good one)."""
    path = Path(path)
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{what} {path}: cannot be read as JSON ({type(e).__name__}); {how}") from e
    if not isinstance(body, dict) or body.get("format") != fmt:
        raise InputError(f"{what} {path}: not a {fmt} file; {how}")
    return body


def write_format_file(path: str | Path, body: dict, indent: int | None = None) -> Path:
    """Write `body` (which names its "format") to `path` atomically: a crash leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=indent) + "\n")
    tmp.replace(path)
    return path
