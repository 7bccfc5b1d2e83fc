"""`eva-rl sweep`: a grid of fine-tuning runs, run in parallel processes or Ray tasks, resumable.

A sweep file names a base finetune config, fixed overrides (`set`) and a grid of dotted config
keys to lists of values (tasks x methods x ranks x rho x seeds, or any other field). Every run
lives under `out/<name>/` (its name spells its grid values), so one `tensorboard --logdir out`
compares them all. Every run's config is resolved when the sweep starts, from a copy of the base
config kept in `out/base_config.yaml`: editing config files while a sweep runs changes no run.
Re-running the same sweep skips finished runs (those with `summary.json`), resumes interrupted
ones from their last checkpoint, and restarts those that died before one; it refuses if the base
config changed since the sweep started. A run that starts `from_run` a run not finished yet (an
online sweep chained to an offline one still running) waits: it is left for a later invocation,
or, with `wait: true`, run by this one as soon as its start has finished.
`reuse` names other sweeps' directories: a finished run there with this run's config (up to
where and how fast it ran) is copied in instead of run again.
One sweep keeps one precision: `precision` pins what `auto` means for its runs, and a sweep
resumed on a machine where `auto` would resolve otherwise refuses until it is set.
`eva-rl export` copies a sweep's finished runs without checkpoints or weights (to commit them;
`--weights` keeps the final weights, so a fresh machine can copy them back and resume the rest).

The executor runs the runs: `local` (default) in spawned processes of this machine, `ray` as Ray
tasks (`pip install 'eva_rl[ray]'`) on a local Ray instance or the cluster at `address`, each
holding its threads as CPUs and `gpus` GPUs. Executor, address, workers, threads and gpus may
change between invocations: a sweep begun locally can be resumed on a cluster. Ray tasks run in
the driver's working directory, so relative paths keep their meaning; on a multi-node cluster
`out`, the checkpoint and the Minari datasets must be on a filesystem every node sees at the same
path.

The package follows a sweep's life: `config` (the sweep file), `plan` (its runs, `reuse`),
`baseline` (the base agent's evaluations), `executors` (local processes or Ray), `status` (how
far it is), `export` (what gets committed); `sweep` below ties them together.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from eva_rl import ownership
from eva_rl.assets import locate
from eva_rl.config import read_yaml, save_config
from eva_rl.errors import RunError, UserError
from eva_rl.io import atomic_write_json, atomic_write_text, check_writable
from eva_rl.ownership import DirectoryLock
from eva_rl.sweeps import executors
from eva_rl.sweeps.config import (
    BASE_FILE,
    BASELINE_DIR,
    COPIED_FILE,
    INDEX_FILE,
    SWEEP_FILE,
    SweepConfig,
    check_same_sweep,
    expand,
    load_sweep,
    read_index,
)
from eva_rl.sweeps.executors import EXECUTORS, gpu_slots, import_ray
from eva_rl.sweeps.export import export_runs
from eva_rl.sweeps.plan import Feed, Run, check_precision, plan, reuse_finished, run_name
from eva_rl.sweeps.status import SweepStatus, planned_status, sweep_status

__all__ = ["BASELINE_DIR", "SWEEP_FILE", "Run", "SweepConfig", "SweepStatus", "expand",
           "export_runs", "gpu_slots", "load_sweep", "plan", "planned_status", "run_name",
           "sweep", "sweep_status"]  # fmt: skip


def sweep(cfg: SweepConfig, progress: bool = True) -> dict[str, Any]:
    """Run every unfinished run of the sweep; returns counts and the failed runs."""
    if cfg.executor == "ray":
        import_ray()  # fail before anything is written
    elif cfg.gpus:
        import torch

        gpu_slots(cfg.gpus, torch.cuda.device_count())
    out = Path(cfg.out)
    check_writable(out, directory=True)
    saved, snapshot = out / SWEEP_FILE, out / BASE_FILE
    base = read_yaml(locate(cfg.base))  # configs/... also from outside the checkout
    check_same_sweep(cfg)
    previous = read_index(out) or {}  # a damaged runs.json refused before anything is written
    if snapshot.is_file() and read_yaml(snapshot) != base:
        raise UserError(
            f"{cfg.base} changed since this sweep started (its copy: {snapshot}); restore it, "
            "or start a new sweep with another out"
        )
    runs = plan(cfg, base)  # every run's config is fixed here: later edits of files change none
    check_precision(cfg, runs)
    if not saved.is_file() and not ownership.owned(out, "export"):  # a sweep folder or a new one
        ownership.check_replaceable(out, "this sweep", kind="sweep")
    if ownership.owned(out, "export"):  # an export copied back to be swept on: a sweep's now
        ownership.mark(out, "sweep")
    with DirectoryLock(ownership.claim(out, "sweep"), "a sweep"):  # one sweep per directory
        save_config(cfg, saved)
        atomic_write_text(snapshot, yaml.safe_dump(base, sort_keys=False))
        return _run(cfg, out, runs, previous, progress)


def _run(cfg: SweepConfig, out: Path, runs: list[Run], previous: dict, progress: bool) -> dict:
    """The runs not finished, `previous` the index an earlier invocation left (run times)."""
    logs = out / "_logs"
    logs.mkdir(exist_ok=True)
    copied = reuse_finished(runs, cfg.reuse)
    unfinished = [r for r in runs if not r.done_file.is_file()]
    waits = {r.name: start for r in unfinished if (start := r.waits_for)}  # not run yet
    todo = [r for r in unfinished if r.name not in waits]
    _claim(todo)
    waiting = {r.name for r in todo}
    index = {
        r.name: {"overrides": r.overrides, "status": "pending" if r.name in waiting else "done"}
        for r in runs
    }
    for name, start in waits.items():
        index[name] |= {"status": "blocked", "waits_for": start}
    for r in runs:
        if r.name not in waiting and "seconds" in previous.get(r.name, {}):  # kept from before
            index[r.name]["seconds"] = previous[r.name]["seconds"]
        if (r.out / COPIED_FILE).is_file():
            index[r.name]["copied_from"] = (r.out / COPIED_FILE).read_text().strip()
    atomic_write_json(out / INDEX_FILE, index)
    failed: list[str] = []
    bar = tqdm(total=len(runs) - len(waits), initial=len(runs) - len(unfinished), desc="sweep",
               unit="run", disable=not progress)  # fmt: skip

    def joined(ready: list[Run]) -> None:  # blocked runs whose start has finished: pending now
        _claim(ready)
        for run in ready:
            index[run.name] = {"overrides": run.overrides, "status": "pending"}
        atomic_write_json(out / INDEX_FILE, index)
        bar.total += len(ready)
        bar.set_postfix(waiting=len(feed.blocked))

    feed = Feed(todo, [r for r in runs if r.name in waits], cfg.wait, joined)
    with bar:
        if feed.open:
            tqdm.write(f"{len(waits)} runs wait for the run each starts from to finish (checked "
                       f"every {executors.POLL_SECONDS:g} s, as workers free up; Ctrl-C stops, "
                       "finished runs are kept)", file=sys.stderr)  # fmt: skip
            bar.set_postfix(waiting=len(waits))
        # closing: an interrupt or error here stops the executor's runs too
        with contextlib.closing(EXECUTORS[cfg.executor](cfg, feed, logs)) as finished:
            for run, result in finished:
                index[run.name]["status"] = "done" if result["ok"] else "failed"
                if "seconds" in result:  # not known for a run its Ray worker lost
                    index[run.name]["seconds"] = round(result["seconds"], 1)
                if not result["ok"]:
                    failed.append(run.name)
                atomic_write_json(out / INDEX_FILE, index)
                bar.update(1)
                waiting = {"waiting": len(feed.blocked)} if feed.open else {}
                bar.set_postfix(failed=len(failed), last=run.name[-40:], **waiting)
    if failed:
        raise RunError(
            f"{len(failed)} of {len(runs)} runs failed (logs in {logs}): {', '.join(failed[:3])}"
            + ("..." if len(failed) > 3 else "")
            + "; fix the cause and run the sweep again (finished runs are kept)"
        )
    baselines = sum(r.baseline for r in runs)
    left = {r.name: r.config["from_run"] for r in feed.blocked}  # blocked runs are no baselines
    return {
        "runs": len(runs) - baselines,
        "ran": sum(not r.baseline for r in unfinished) - len(left),
        "skipped": sum(not r.baseline for r in runs) - sum(not r.baseline for r in unfinished),
        "copied": len(copied),
        "baselines": baselines,
        "blocked": left,
        "out": out,
    }


def _claim(runs: list[Run]) -> None:
    """The sweep's own run folders, an older eva_rl's included, are eva_rl's."""
    for run in runs:
        if not run.baseline and run.out.is_dir():
            ownership.claim(run.out, "run")
