"""A training run's directory: marked as eva_rl's and locked while a run uses it, refusing to
clobber a run or a user's folder, resuming only the same config, cleaning up after a run that
stopped before its first checkpoint, and what a saved agent records."""

from __future__ import annotations

import contextlib
import datetime
import io
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from eva_rl import distributed, ownership
from eva_rl.config import as_current, changed_keys, read_yaml, to_dict
from eva_rl.errors import UserError
from eva_rl.io import (
    atomic_write_bytes,
    atomic_write_dir,
    atomic_write_text,
    check_writable,
    checkpoint_holds,
    restore_dir,
)
from eva_rl.ownership import DirectoryLock
from eva_rl.results import SUMMARY_FILE

STATE_FILE = "state.pt"


def provenance(cfg, datasets: list[str], precision: str, **extra) -> dict[str, Any]:
    """What a saved agent records about the run that made it (pretraining or fine-tuning)."""
    return {
        **extra,
        "config": to_dict(cfg),
        "datasets": datasets,
        "seed": cfg.seed,
        "precision": precision,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


# Settings a resume may change: where and how fast it runs, never the experiment (`out`: a run
# folder may be moved and resumed where it is; threads and device may change float rounding).
RESUME_MAY_CHANGE = (
    "resume", "threads", "device", "data_root", "eval.workers", "eval.max_envs", "out",
)  # fmt: skip


@contextlib.contextmanager
def run_dir(out: Path, cfg: Any, resume: bool) -> Iterator[None]:
    """The run folder for the `with` block: checked, locked (one process per run folder) and
    marked as eva_rl's; a new run that fails or is interrupted before its first checkpoint
    leaves nothing, so the same command simply runs again. Under torchrun every rank checks
    before rank 0 writes, so all of them fail (or go on) together."""
    lock = _prepare(out, cfg, resume)
    try:
        yield
    except BaseException:
        if not resume and distributed.is_main() and out.is_dir() and not _has_state(out):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()


def _has_state(out: Path) -> bool:
    return checkpoint_holds(out / "checkpoints" / "latest", STATE_FILE)


def _prepare(out: Path, cfg: Any, resume: bool) -> DirectoryLock | None:
    """Refuse to clobber a run or a folder eva_rl did not make; `resume` needs a checkpoint and
    the same config (up to `RESUME_MAY_CHANGE`). An eva_rl run folder that stopped before its
    first checkpoint is replaced. Writes `config.yaml` for a new run; a resumed run keeps its
    own (one an earlier eva_rl wrote is read with today's defaults)."""
    if resume and not _has_state(out):
        why = "it stopped before its first checkpoint" if out.is_dir() else "it does not exist"
        raise UserError(f"nothing to resume in {out} ({why}); run the command without resume")
    if resume:
        saved = as_current(type(cfg), read_yaml(out / "config.yaml"))
        # precision: a sweep pinned after its runs started (`auto` -> what it resolved to) may
        # resume them; the checkpoint refuses any other precision than its own when it loads
        ignore = (*RESUME_MAY_CHANGE, "precision")
        changes = changed_keys(saved, to_dict(cfg), ignore=ignore)
        if changes:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes)
            raise UserError(
                f"resuming {out} with a different config ({listed}); a resume continues the "
                "same run: drop those changes, or start a new run with another out"
            )
    elif out.is_dir() and any(out.iterdir()):
        # a run folder only (a sweep, an export, a report, an EVA result are not replaced)
        ownership.check_replaceable(out, "this run", kind="run")
        if _has_state(out):
            raise UserError(f"output directory {out} holds a run; pass resume=true or choose "
                            "another out=")  # fmt: skip
        if (out / SUMMARY_FILE).is_file():  # finished, its checkpoints gone (an exported run)
            raise UserError(f"output directory {out} holds a finished run ({SUMMARY_FILE}); "
                            "choose another out=")  # fmt: skip
    check_writable(out, directory=True)
    distributed.barrier()
    lock = None
    if distributed.is_main():
        if out.is_dir() or out.is_symlink():
            lock = DirectoryLock(out, "a run") if out.is_dir() else None
            if not resume:  # an eva_rl run that stopped before its first checkpoint
                if lock is not None:
                    lock.release()  # the folder goes: a new lock is taken on the new one
                    lock = None
                _replace_stale(out)
        ownership.claim(out, "run")
        lock = lock or DirectoryLock(out, "a run")
        _remove_leftovers(out)
        if not resume:
            atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    distributed.barrier()
    return lock


def _replace_stale(out: Path) -> None:
    """Remove an unused eva_rl folder (or a symlink left in `out`'s place) before a new run."""
    if out.is_symlink() or any(out.iterdir()):
        ownership.remove(out, "run")


def _remove_leftovers(out: Path) -> None:
    """A checkpoint write killed midway leaves a hidden temporary folder, never resumed from,
    or, killed between its renames, the previous checkpoint under a hidden name: put back (the
    final agent folder alike)."""
    restore_dir(out / "checkpoints" / "latest")
    restore_dir(out / "agent")


def save_state(latest: Path, state: dict[str, Any], export: Callable[[Path], None]) -> None:
    """Write `latest` atomically: what `export(directory)` writes for users, plus the training
    state. The state is serialised in memory first, so a full disk is an OSError (torch.save's
    own stream errors name no cause)."""

    def write(directory: Path) -> None:
        export(directory)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        (directory / STATE_FILE).write_bytes(buffer.getbuffer())

    atomic_write_dir(latest, write)


def load_state(path: Path) -> dict[str, Any]:
    """A training state, unpickling nothing but tensors and plain containers (a checkpoint
    someone else wrote cannot run code here), onto the CPU: a run trained on a GPU resumes on
    another device (the model, optimizer and generators take the state where they are)."""
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a class it refused; else damaged bytes
            raise UserError(
                f"{path} holds objects other than tensors and plain data (eva_rl never writes "
                "those); refusing to load it: it could run code"
            ) from None
        reason = str(e).strip().splitlines()[-1].strip()
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
        reason = repr(e)
    raise UserError(f"{path} is not a readable checkpoint ({reason}); start the run again")


def check_resumed_precision(state: dict[str, Any], precision: str, latest: Path) -> None:
    """A checkpoint resumes only in the precision it was trained in (`auto` may resolve to
    another on another machine, and a config's precision may be pinned after the start)."""
    saved = state.get("precision", "fp32")  # checkpoints before precision existed: fp32
    if saved != precision:
        raise UserError(
            f"{latest} was trained in {saved}; resume it with precision={saved}, not {precision}"
        )


def purge_events(log_dir: Path, step: int) -> None:
    """Drop every TensorBoard event after `step` (those a resumed run will log again), rewriting
    each event file atomically; TensorBoard then shows one point per step. Not
    `SummaryWriter(purge_step=)`: it keeps the old events on disk behind a marker that only
    TensorBoard's reader honours, and only when the new file's name sorts after the old one's."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        records = list(RawEventFileLoader(str(path)).Load())
        keep = [r for r in records if Event.FromString(r).step <= step]
        if len(keep) == len(records):
            continue
        buffer = io.BytesIO()
        writer = RecordWriter(buffer)
        for record in keep:
            writer.write(record)
        atomic_write_bytes(path, buffer.getvalue())  # an interrupt leaves no temp file behind
