"""What of a sweep gets committed: `export_runs` copies the finished runs without checkpoints or
weights; `progress` counts them from the sweep's index."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from eva_rl.errors import UserError
from eva_rl.io import check_writable
from eva_rl.sweeps.config import BASE_FILE, BASELINE_DIR, INDEX_FILE, SWEEP_FILE

# what an exported run leaves behind: resumable state and weights (a report reads none of them)
HEAVY = ("checkpoints", "*.safetensors", "*.pt", "*.bin")


def export_runs(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> dict:
    """Copy what a report reads from the finished runs under `src` (a sweep's directory or any
    tree of runs) to `dst`, e.g. to commit them under results/: each run's config, summary,
    TensorBoard logs and JSON records, the sweep's files and its baseline evaluations, without
    checkpoints, weights, logs or unfinished runs. `dst` appears whole or not at all."""
    src, dst = Path(src), Path(dst)
    runs = sorted(
        p.parent.relative_to(src)
        for p in src.rglob("summary.json")
        if not any(part.startswith((".", "_")) for part in p.relative_to(src).parts)
    )
    if not runs:
        raise UserError(f"no finished runs (summary.json) under {src}; is it a sweep's out?")
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} already exists; pass --overwrite or choose another destination")
    check_writable(dst, directory=True)
    staged = dst.with_name(f".{dst.name}.exporting")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    for name in (SWEEP_FILE, BASE_FILE, INDEX_FILE):
        if (src / name).is_file():
            shutil.copy2(src / name, staged / name)
    if (src / BASELINE_DIR).is_dir():
        shutil.copytree(src / BASELINE_DIR, staged / BASELINE_DIR)
    for run in runs:
        shutil.copytree(src / run, staged / run, ignore=shutil.ignore_patterns(*HEAVY))
    old = dst.with_name(f".{dst.name}.replaced")
    shutil.rmtree(old, ignore_errors=True)  # left by an export that died while swapping
    if dst.exists():
        dst.rename(old)
    staged.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    done, total = progress(src) or (0, 0)
    return {"runs": len(runs), "pending": total - done, "out": dst}


def progress(out: str | os.PathLike) -> tuple[int, int] | None:
    """(finished, planned) fine-tuning runs of the sweep at `out` from its index (baselines not
    counted); None where there is no index."""
    index = Path(out) / INDEX_FILE
    if not index.is_file():
        return None
    runs = json.loads(index.read_text())
    status = [entry["status"] for name, entry in runs.items() if not name.startswith(BASELINE_DIR)]
    return status.count("done"), len(status)
