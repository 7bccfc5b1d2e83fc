"""`eva-rl sweep`: a grid of fine-tuning runs, run in parallel worker processes, resumable.

A sweep file names a base finetune config, fixed overrides (`set`) and a grid of dotted config
keys to lists of values (tasks x methods x ranks x rho x seeds, or any other field). Every run
lives under `out/<name>/` (its name spells its grid values), so one `tensorboard --logdir out`
compares them all. Every run's config is resolved when the sweep starts, from a copy of the base
config kept in `out/base_config.yaml`: editing config files while a sweep runs changes no run.
Re-running the same sweep skips finished runs (those with `summary.json`), resumes interrupted
ones from their last checkpoint, and restarts those that died before one; it refuses if the base
config changed since the sweep started.
"""

from __future__ import annotations

import copy
import itertools
import os
import shutil
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from eva_rl.config import apply_override, from_dict, read_yaml, save_config, set_path, to_dict
from eva_rl.errors import RunError, UserError
from eva_rl.io import atomic_write_json, atomic_write_text

SWEEP_FILE = "sweep.yaml"
BASE_FILE = "base_config.yaml"  # the base finetune config as the sweep first read it
INDEX_FILE = "runs.json"
ALIASES = {"method.name": "method", "method.rank": "rank", "method.rho": "rho"}


@dataclass
class SweepConfig:
    base: str = "configs/finetune/cw10-cpu.yaml"  # finetune config every run starts from
    out: str = ""  # root of every run
    # dotted key -> values; or a list of such grids, whose runs are pooled (e.g. rho only for EVA)
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, for every run
    workers: int = 0  # parallel runs; 0: one per CPU core (one per GPU on CUDA is up to you)
    threads: int = 0  # torch threads per run; 0: cores // workers

    def __post_init__(self):
        if not self.out:
            raise UserError("the sweep needs out: a directory for its runs")
        grids = self.grid if isinstance(self.grid, list) else [self.grid]
        if not grids or not all(grids):
            raise UserError("the sweep's grid is empty; give at least one key: [values]")
        for grid in grids:
            for key, values in grid.items():
                if not values:
                    raise UserError(f"grid key {key!r} needs a non-empty list of values")

    @property
    def points(self) -> list[dict[str, Any]]:
        grids = self.grid if isinstance(self.grid, list) else [self.grid]
        return [point for grid in grids for point in expand(grid)]
        if self.workers < 0 or self.threads < 0:
            raise UserError("workers and threads must be >= 0 (0: automatic)")


@dataclass
class Run:
    name: str
    overrides: dict[str, Any]  # dotted key -> value: `set`, then the grid point, then out
    config: dict[str, Any]  # the base config with the overrides applied (resolved at planning)

    @property
    def out(self) -> Path:
        return Path(self.config["out"])


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, first key slowest."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def run_name(point: dict[str, Any]) -> str:
    """`task=hammer-v3,method=eva,rank=8,seed=0`: readable in TensorBoard's run list."""
    parts = []
    for key, value in point.items():
        text = str(value).replace("/", "_").replace(",", "_")
        parts.append(f"{ALIASES.get(key, key)}={text}")
    return ",".join(parts)


def plan(cfg: SweepConfig, base: dict[str, Any] | None = None) -> list[Run]:
    """The runs of a sweep, each config resolved from `base` (default: the base file as it is
    now) and validated, so a bad key fails before anything runs."""
    from eva_rl.finetune import FinetuneConfig

    base = read_yaml(cfg.base) if base is None else base
    runs = []
    for point in cfg.points:
        name = run_name(point)
        overrides = {**cfg.set, **point, "out": str(Path(cfg.out) / name)}
        data = copy.deepcopy(base)
        for key, value in overrides.items():
            set_path(data, key, value)
        from_dict(FinetuneConfig, data)  # validate now, not in a worker an hour later
        runs.append(Run(name, overrides, data))
    if len({r.name for r in runs}) != len(runs):
        raise UserError("grid values give two runs the same name; make the values distinct")
    return runs


def run_config(run: Run, threads: int):
    """The finetune config of one run, resuming it if it has a checkpoint."""
    from eva_rl.finetune import FinetuneConfig

    data = {**copy.deepcopy(run.config), "threads": threads}
    if (run.out / "checkpoints" / "latest" / "state.pt").is_file():
        data["resume"] = True
    elif run.out.exists():  # died before its first checkpoint: start again from nothing
        shutil.rmtree(run.out)
    return from_dict(FinetuneConfig, data)


def _run_one(run: Run, threads: int, log: str) -> dict[str, Any]:
    """Worker: one finetune run, its output and warnings in `log`."""
    import contextlib
    import warnings

    import torch

    from eva_rl.finetune import finetune

    torch.set_num_threads(threads)
    started = time.perf_counter()
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        warnings.simplefilter("default")
        try:
            finetune(run_config(run, threads), progress=False)
        except Exception:  # reported in the parent; the sweep goes on with the other runs
            traceback.print_exc(file=f)
            return {"ok": False, "seconds": time.perf_counter() - started}
    return {"ok": True, "seconds": time.perf_counter() - started}


def sweep(cfg: SweepConfig, progress: bool = True) -> dict[str, Any]:
    """Run every unfinished run of the sweep; returns counts and the failed runs."""
    from eva_rl.finetune import SUMMARY_FILE

    out = Path(cfg.out)
    saved, snapshot = out / SWEEP_FILE, out / BASE_FILE
    base = read_yaml(cfg.base)
    same = ("base", "grid", "set")  # workers and threads may change between invocations
    if saved.is_file() and any(read_yaml(saved).get(k) != to_dict(cfg)[k] for k in same):
        raise UserError(
            f"{out} holds a different sweep ({saved}); choose another out or delete that one"
        )
    if snapshot.is_file() and read_yaml(snapshot) != base:
        raise UserError(
            f"{cfg.base} changed since this sweep started (its copy: {snapshot}); restore it, "
            "or start a new sweep with another out"
        )
    runs = plan(cfg, base)  # every run's config is fixed here: later edits of files change none
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    atomic_write_text(snapshot, yaml.safe_dump(base, sort_keys=False))
    logs = out / "_logs"
    logs.mkdir(exist_ok=True)
    todo = [r for r in runs if not (r.out / SUMMARY_FILE).is_file()]
    cores = os.cpu_count() or 1
    workers = min(cfg.workers or cores, max(1, len(todo)))
    threads = cfg.threads or max(1, cores // workers)
    waiting = {r.name for r in todo}
    index = {
        r.name: {"overrides": r.overrides, "status": "pending" if r.name in waiting else "done"}
        for r in runs
    }
    atomic_write_json(out / INDEX_FILE, index)
    failed: list[str] = []
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run",
               disable=not progress)  # fmt: skip
    ctx = get_context("spawn")  # fresh interpreters: no torch/MuJoCo state shared with the parent
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending = {
                pool.submit(_run_one, r, threads, str(logs / f"{r.name}.log")): r for r in todo
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    run = pending.pop(future)
                    result = future.result()
                    index[run.name]["status"] = "done" if result["ok"] else "failed"
                    index[run.name]["seconds"] = round(result["seconds"], 1)
                    if not result["ok"]:
                        failed.append(run.name)
                    atomic_write_json(out / INDEX_FILE, index)
                    bar.update(1)
                    bar.set_postfix(failed=len(failed), last=run.name[-40:])
    finally:
        bar.close()
    if failed:
        raise RunError(
            f"{len(failed)} of {len(runs)} runs failed (logs in {logs}): {', '.join(failed[:3])}"
            + ("..." if len(failed) > 3 else "")
            + "; fix the cause and run the sweep again (finished runs are kept)"
        )
    return {"runs": len(runs), "ran": len(todo), "skipped": len(runs) - len(todo), "out": out}


def load_sweep(path: str | os.PathLike, overrides: list[str] = ()) -> SweepConfig:
    data = read_yaml(path)
    for item in overrides:
        apply_override(data, item)
    return from_dict(SweepConfig, data)
