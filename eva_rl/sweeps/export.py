"""What of a sweep gets committed: its finished runs without checkpoints (and without weights,
unless asked for)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from eva_rl import ownership
from eva_rl.errors import UserError
from eva_rl.io import check_writable
from eva_rl.online import EPISODE_STORE
from eva_rl.sweeps.config import BASE_FILE, BASELINE_DIR, INDEX_FILE, SWEEP_FILE
from eva_rl.sweeps.status import sweep_status

# what an exported run leaves behind: resumable state (a report reads none of it), an online
# run's raw episode store (its minari/ dataset holds the same episodes), and the lock
# of the process that ran it
HEAVY = ("checkpoints", "*.pt", EPISODE_STORE, ownership.LOCK)
# and weights, unless asked for (`weights`): each run's final agent (adapter, Gaussian head, or
# full model) and an EVA run's collected state, so the exported runs load (`evaluate
# --checkpoint`, `online --from`) and count as finished where copied back into a sweep's out
WEIGHTS = ("*.safetensors", "*.bin")


def export_runs(
    src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False, weights: bool = False
) -> dict:
    """Copy what a report reads from the finished runs under `src` (a sweep's directory or any
    tree of runs) to `dst`, e.g. to commit them under results/: each run's config, summary,
    TensorBoard logs and JSON records, the sweep's files and its baseline evaluations, without
    checkpoints, weights (unless `weights`), logs or unfinished runs. `dst` appears whole or not
    at all."""
    src, dst = Path(src), Path(dst)
    runs = sorted(
        p.parent.relative_to(src)
        for p in src.rglob("summary.json")
        if not any(part.startswith((".", "_")) for part in p.relative_to(src).parts)
    )
    if not runs:
        raise UserError(f"no finished runs (summary.json) under {src}; is it a sweep's out?")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise UserError(f"--out {dst} is inside the runs it exports ({src}); choose another one")
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} already exists; pass --overwrite or choose another destination")
    older = any((dst / name).is_file() for name in (SWEEP_FILE, INDEX_FILE))  # no marker yet
    if not older:
        ownership.check_replaceable(dst, "export")
    check_writable(dst, directory=True)
    staged = dst.with_name(f".{dst.name}.exporting")
    shutil.rmtree(staged, ignore_errors=True)
    ownership.claim(staged, "export")
    for name in (SWEEP_FILE, BASE_FILE, INDEX_FILE):
        if (src / name).is_file():
            shutil.copy2(src / name, staged / name)
    if (src / BASELINE_DIR).is_dir():
        shutil.copytree(src / BASELINE_DIR, staged / BASELINE_DIR)
    left = shutil.ignore_patterns(*HEAVY, *(() if weights else WEIGHTS))
    for run in runs:
        shutil.copytree(src / run, staged / run, ignore=left)
    old = dst.with_name(f".{dst.name}.replaced")
    shutil.rmtree(old, ignore_errors=True)  # left by an export that died while swapping
    if dst.is_symlink():
        dst.unlink()
    elif dst.exists():
        dst.rename(old)
    staged.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    status = sweep_status(src)
    pending = status.total - len(status.done) if status else 0
    return {"runs": len(runs), "pending": pending, "out": dst}
