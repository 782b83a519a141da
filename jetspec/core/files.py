"""Files that several processes share: the model cache and bench result files.

* `locked(path)`: an exclusive advisory lock (`flock`) on a file or a folder, held for a block.
  The lock goes with the process: a killed holder releases it, so nothing ever needs a stale-lock
  timeout, and locking a folder that exists anyway leaves no lock file behind. While a process
  holds the lock every writer of some staging entries takes, any such entry is a dead process's,
  and is removed (`remove_stale`). Two `locked` of one path in one process wait for each other.
* `write_atomic(path, text)`: write a sibling temporary file, then rename it over `path`: a
  reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


@contextmanager
def locked(path: str | Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the folder or file `path` (a file is created if missing) for the
    block. `waiting` is called once if another holds it (then this one blocks until it is released)."""
    path = Path(path)
    if path.is_dir():
        fd = os.open(path, os.O_RDONLY)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def remove_stale(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    """Remove entries of `folder` matching any glob of `patterns` (call only under the lock that
    every writer of those entries holds); -> what was removed."""
    removed = []
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` in one rename (a temporary sibling, flushed to disk first)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
