"""What of a sweep gets committed: its finished runs without checkpoints (and without weights,
unless asked for)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from eva_rl import ownership
from eva_rl.errors import UserError
from eva_rl.io import atomic_write_dir, check_writable, restore_dir
from eva_rl.online import EPISODE_STORE
from eva_rl.results import SUMMARY_FILE
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
    if (src / SUMMARY_FILE).is_file():
        raise UserError(f"{src} is one run; export the folder that holds its runs (a sweep's "
                        "out), or copy the run itself")  # fmt: skip
    runs = sorted(
        p.parent.relative_to(src)
        for p in src.rglob(SUMMARY_FILE)
        if not any(part.startswith((".", "_")) for part in p.relative_to(src).parts)
    )
    if not runs:
        raise UserError(f"no finished runs (summary.json) under {src}; is it a sweep's out?")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise UserError(f"--out {dst} is inside the runs it exports ({src}); choose another one")
    if dst.resolve() in src.resolve().parents:
        raise UserError(f"--out {dst} holds the runs it exports ({src}); choose another one")
    restore_dir(dst)  # an export killed while swapping: the previous one comes back
    _check_replaceable(dst)  # first: --overwrite would not help with a folder that is not ours
    check_writable(dst, directory=True)
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} already exists; pass --overwrite or choose another destination")

    def write(staged: Path) -> None:
        ownership.claim(staged, "export")
        for name in (SWEEP_FILE, BASE_FILE, INDEX_FILE):
            if (src / name).is_file():
                shutil.copy2(src / name, staged / name)
        if (src / BASELINE_DIR).is_dir():
            shutil.copytree(src / BASELINE_DIR, staged / BASELINE_DIR)
        left = shutil.ignore_patterns(*HEAVY, *(() if weights else WEIGHTS))
        for run in runs:
            shutil.copytree(src / run, staged / run, ignore=left)

    atomic_write_dir(dst, write)
    status = sweep_status(src)
    pending = status.total - len(status.done) if status else 0
    return {"runs": len(runs), "pending": pending, "out": dst}


def _check_replaceable(dst: Path) -> None:
    """Only an earlier export is replaced: an eva_rl folder of another kind (a sweep's out, a
    run) holds checkpoints and maybe a live process; a folder eva_rl did not make is not ours.
    An export made before exports were marked is known by its sweep files and no checkpoint."""
    if not dst.is_dir() or dst.is_symlink() or not any(dst.iterdir()):
        return
    if ownership.owned(dst):  # an export holds no checkpoints; one swept again does (live runs)
        if not ownership.owned(dst, "export") or any(dst.rglob("checkpoints")):
            raise UserError(f"{dst} is an eva-rl folder of runs, not an export: --overwrite "
                            "replaces only an earlier export; choose another --out")  # fmt: skip
        return
    marked = any((dst / name).is_file() for name in (SWEEP_FILE, INDEX_FILE))
    if not marked or any(dst.rglob("checkpoints")):
        ownership.check_replaceable(dst, "export")  # refuses: not made by eva-rl
