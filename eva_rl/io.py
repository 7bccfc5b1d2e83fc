"""Atomic file writes: a reader never sees a half-written file, and a crash leaves the old one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename over it (mode as a plain open)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_writable(path: str | os.PathLike, directory: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: `path` must not be a
    directory (a file output) or a file (a directory output), and its nearest existing
    ancestor must be a directory this process may write into."""
    from eva_rl.errors import UserError

    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        kind = "a directory" if path.is_dir() else "a file"
        raise UserError(f"output {path} is {kind}; choose another path")
    parent = path if directory and path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: {parent} is not a writable directory")


def save_checkpoint_dir(path: str | os.PathLike, write) -> None:
    """Call `write(tmp_dir)`, then swap `tmp_dir` into `path` with renames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        write(tmp)
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
