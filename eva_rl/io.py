"""Atomic file writes: a reader never sees a half-written file, and a crash leaves the old one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from eva_rl.signals import interrupts_held


def _umask() -> int:
    """The process's umask, read without setting it where Linux shows it (setting it, even
    back, opens a moment in which another thread's new file gets mode 0o666)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
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


def atomic_write_dir(path: str | os.PathLike, write) -> None:
    """Call `write(tmp_dir)`, make it durable, then swap it into `path` with two renames (a
    checkpoint, an agent, an export). The previous `path` is deleted only once the new one is in
    place: an interrupt between the renames puts it back, and a kill there leaves it as
    `.NAME.old-*`, which `restore_dir` puts back. A symlink at `path` is replaced, its target
    left alone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        write(tmp)
        _fsync_tree(tmp)
        if os.path.lexists(path):
            os.rename(path, old)
        os.rename(tmp, path)
        _fsync(path.parent)
    except BaseException:
        if os.path.lexists(old) and not os.path.lexists(path):
            os.rename(old, path)
        raise
    finally:
        with interrupts_held():  # an rmtree stopped mid-walk fails on a closed descriptor
            shutil.rmtree(tmp, ignore_errors=True)
            if os.path.lexists(path):
                _remove(old)


def checkpoint_holds(path: str | os.PathLike, name: str) -> bool:
    """Whether the checkpoint folder `path` holds file `name`, or the previous one does that a
    kill between `atomic_write_dir`'s renames left hidden (`restore_dir`)."""
    path = Path(path)
    hidden = path.parent.glob(f".{path.name}.old-*")
    return (path / name).is_file() or any((old / name).is_file() for old in hidden)


def restore_dir(path: str | os.PathLike) -> None:
    """After a kill inside `atomic_write_dir`: put a previous `path` (`.NAME.old-*`, whole) back
    where none is, and remove the half-written `.NAME.tmp-*` folders."""
    path = Path(path)
    for old in sorted(path.parent.glob(f".{path.name}.old-*")):
        if not os.path.lexists(path):
            os.rename(old, path)
        else:
            _remove(old)
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(path: Path) -> None:
    """Delete a folder, or only the link where it is a symlink."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    """Flush a folder's files and the folders themselves to disk, before it replaces one."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
