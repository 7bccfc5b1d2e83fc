"""A training run's directory: refusing to clobber, resuming only the same config, cleaning up
after a run that stopped before its first checkpoint, and what a saved agent records."""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from eva_rl import distributed
from eva_rl.config import as_current, changed_keys, read_yaml, to_dict
from eva_rl.errors import UserError
from eva_rl.io import atomic_write_text, check_writable

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


RUN_FILES = {"config.yaml", "tb", "eva", "initial_adapter", "checkpoints"}  # what a run writes
# Settings a resume may change: where and how fast it runs, never what it computes.
RESUME_MAY_CHANGE = ("resume", "threads", "device", "data_root", "eval.workers", "eval.max_envs")


def _stopped_before_checkpoint(out: Path) -> bool:
    """A run folder that holds only what a run writes before its first checkpoint (killed
    with -9, or from an older eva_rl that did not clean up)."""
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    has_state = (out / "checkpoints" / "latest" / STATE_FILE).is_file()
    return "config.yaml" in names and names <= RUN_FILES and not has_state


def prepare_run_dir(out: Path, cfg: Any, resume: bool) -> None:
    """Refuse to clobber a run; `resume` needs a checkpoint and the same config (up to
    `RESUME_MAY_CHANGE`). A folder left by a run that stopped before its first checkpoint is
    replaced, so the same command simply runs again. Under torchrun every rank checks before
    rank 0 writes, so all of them fail (or go on) together. Writes `config.yaml` for a new run;
    a resumed run keeps its own (one an earlier eva_rl wrote is read with today's defaults)."""
    latest = out / "checkpoints" / "latest" / STATE_FILE
    if resume and not latest.is_file():
        why = "it stopped before its first checkpoint" if out.is_dir() else "it does not exist"
        raise UserError(f"nothing to resume in {out} ({why}); run the command without resume")
    if resume:
        saved = as_current(type(cfg), read_yaml(out / "config.yaml"))
        changes = changed_keys(saved, to_dict(cfg), ignore=RESUME_MAY_CHANGE)
        if changes:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes)
            raise UserError(
                f"resuming {out} with a different config ({listed}); a resume continues the "
                "same run: drop those changes, or start a new run with another out"
            )
    stale = not resume and out.is_dir() and _stopped_before_checkpoint(out)
    if not resume and out.exists() and any(out.iterdir()) and not stale:
        raise UserError(f"output directory {out} exists; pass resume=true or choose another out=")
    check_writable(out, directory=True)
    distributed.barrier()
    if distributed.is_main():
        if stale:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    distributed.barrier()


@contextlib.contextmanager
def discard_on_failure(out: Path, resume: bool) -> Iterator[None]:
    """A new run that fails or is interrupted before its first checkpoint leaves nothing: its
    folder is removed, so the same command can simply be run again."""
    try:
        yield
    except BaseException:
        if not resume and distributed.is_main() and out.is_dir():
            if not (out / "checkpoints" / "latest" / STATE_FILE).is_file():
                shutil.rmtree(out, ignore_errors=True)
        raise


def load_state(path: Path) -> dict[str, Any]:
    """A training state, unpickling nothing but tensors and plain containers (a checkpoint
    someone else wrote cannot run code here)."""
    import pickle

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path} holds objects other than tensors and plain data (eva_rl never writes "
            "those); refusing to load it: it could run code"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path} is not a readable checkpoint ({e}); start the run again") from None


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
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for record in keep:
                writer.write(record)
            writer.flush()
        os.replace(tmp, path)
