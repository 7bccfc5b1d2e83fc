"""Which directories are eva_rl's, and which process is using one.

Every directory a command creates (a run, a sweep, a report) gets a marker file first; only a
directory with the marker is ever replaced or removed, so a user's folder given as `--out` by
mistake is refused, never emptied. A command that works in a directory holds an advisory lock
on it for its whole life (`fcntl.flock`): the OS releases it when the process ends however it
ends, so a stale lock never blocks, and a second command on the same directory is refused in
one line naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Collection, Iterator
from pathlib import Path

from eva_rl.errors import UserError
from eva_rl.io import atomic_write_json

MARKER = ".eva_rl"  # JSON: {"kind": "run" | "sweep" | "report" | ...}; who uses it: LOCK
LOCK = ".eva_rl.lock"  # holds the pid of the process using the directory


def owned(path: str | os.PathLike, kind: str | None = None) -> bool:
    """Whether eva_rl made `path` (of that `kind`, if given)."""
    made = made_for(path)
    return made is not None and (kind is None or made == kind)


def made_for(path: str | os.PathLike) -> str | None:
    """The kind its marker names where eva_rl made `path` (a run, a sweep, ...), else None."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        made = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return str(made.get("kind")) if isinstance(made, dict) else None


def claim(path: str | os.PathLike, kind: str) -> Path:
    """Create `path` (parents too) with its marker written before anything else goes in."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not owned(path):
        mark(path, kind)
    return path


def mark(path: str | os.PathLike, kind: str) -> None:
    """Write (or rewrite) `path`'s marker: eva_rl made it, for `kind`."""
    atomic_write_json(Path(path) / MARKER, {"kind": kind})


def check_replaceable(
    path: str | os.PathLike, what: str, option: str = "--out", kind: str | None = None
) -> None:
    """Refuse to write into an existing, non-empty directory eva_rl did not make (as `kind`, if
    given); `option` names the command's flag for another one."""
    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not owned(path, kind):
        made = f"not made by eva-rl (no {MARKER} marker)"
        if owned(path):
            made = f"made by eva-rl for another use (its {MARKER} marker is not {kind!r})"
        raise UserError(
            f"{path} exists and was {made}, so {what} will not write into it or replace it; "
            f"choose another {option}"
        )


def remove(path: str | os.PathLike, kind: str) -> None:
    """Remove an eva_rl directory made as `kind` (a symlink to one: the link only); refuse
    anything else."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
        return
    if not owned(path, kind):
        raise UserError(f"{path} was not made by eva-rl as a {kind} (its {MARKER} marker); it "
                        "is left alone")  # fmt: skip
    shutil.rmtree(path)


@contextlib.contextmanager
def staged(out: str | os.PathLike, kind: str, outputs: Collection[str] = ()) -> Iterator[Path]:
    """A hidden sibling of `out` to write into; on success its entries replace `out`'s of the
    same names (each file or folder whole, by rename), the `outputs` (every name the command
    may write) it does not hold are removed from `out` (an earlier run's figure the new one no
    longer draws), other entries stay, and `out`, if this made it, is marked `kind`; on
    failure or interrupt it goes, and `out` is as it was, so the command can simply run
    again."""
    out = Path(out)
    stage = out.parent / f".{out.name}.{kind}-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    fresh = not out.exists() or not any(out.iterdir())  # marked only where eva_rl made it
    try:
        yield stage
        claim(out, kind) if fresh else out.mkdir(exist_ok=True)
        stale = set(outputs) - {entry.name for entry in stage.iterdir()}
        for entry in stage.iterdir():
            target = out / entry.name
            if entry.is_dir() and target.exists():
                old = out / f".{entry.name}.old-{os.getpid()}"
                os.rename(target, old)
                os.rename(entry, target)
                shutil.rmtree(old)
            else:
                os.replace(entry, target)
        for name in sorted(stale):
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class DirectoryLock:
    """An exclusive advisory lock on a directory, held until `release` or process exit."""

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = Path(path) / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "another"
            os.close(self.fd)
            raise UserError(
                f"{Path(path)} is in use by eva-rl process {holder} ({what}); wait for it to "
                "finish or stop it, or choose another --out"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the flock
            self.fd = -1

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
