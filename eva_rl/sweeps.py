"""`eva-rl sweep`: a grid of fine-tuning runs, run in parallel processes or Ray tasks, resumable.

A sweep file names a base finetune config, fixed overrides (`set`) and a grid of dotted config
keys to lists of values (tasks x methods x ranks x rho x seeds, or any other field). Every run
lives under `out/<name>/` (its name spells its grid values), so one `tensorboard --logdir out`
compares them all. Every run's config is resolved when the sweep starts, from a copy of the base
config kept in `out/base_config.yaml`: editing config files while a sweep runs changes no run.
Re-running the same sweep skips finished runs (those with `summary.json`), resumes interrupted
ones from their last checkpoint, and restarts those that died before one; it refuses if the base
config changed since the sweep started. `reuse` names other sweeps' directories: a finished run
there with this run's config (up to where and how fast it ran) is copied in instead of run again.
`eva-rl export` copies a sweep's finished runs without checkpoints or weights (to commit them).

The executor runs the runs: `local` (default) in spawned processes of this machine, `ray` as Ray
tasks (`pip install 'eva_rl[ray]'`) on a local Ray instance or the cluster at `address`, each
holding its threads as CPUs and `gpus` GPUs. Executor, address, workers, threads and gpus may
change between invocations: a sweep begun locally can be resumed on a cluster. Ray tasks run in
the driver's working directory, so relative paths keep their meaning; on a multi-node cluster
`out`, the checkpoint and the Minari datasets must be on a filesystem every node sees at the same
path.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import shutil
import signal
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from eva_rl.config import (
    apply_override,
    flatten,
    from_dict,
    read_yaml,
    save_config,
    set_path,
    to_dict,
)
from eva_rl.errors import RunError, UserError
from eva_rl.io import atomic_write_json, atomic_write_text, check_writable

SWEEP_FILE = "sweep.yaml"
BASE_FILE = "base_config.yaml"  # the base finetune config as the sweep first read it
INDEX_FILE = "runs.json"
BASELINE_DIR = "_baseline"  # the base agent's evaluations, one JSON per task
COPIED_FILE = "copied_from"  # in a run copied from another sweep (`reuse`): where from
ALIASES = {"method.name": "method", "method.rank": "rank", "method.rho": "rho"}


@dataclass
class SweepConfig:
    base: str = "configs/finetune/cw10-cpu.yaml"  # finetune config every run starts from
    out: str = ""  # root of every run
    # dotted key -> values; or a list of such grids, whose runs are pooled (e.g. rho only for EVA)
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, for every run
    workers: int = 0  # parallel runs; 0: one per CPU core (ray: as many as its resources allow)
    threads: int = 0  # torch threads (ray: CPUs) per run; 0: cores // workers, within one node
    executor: str = "local"  # local: processes of this machine; ray: Ray tasks
    address: str | None = None  # the Ray cluster's address; None: start a local Ray instance
    gpus: float = 0.0  # GPUs per run; a fraction shares one GPU (0.25: four runs per GPU)
    # evaluate the base checkpoint once per task with the runs' final evaluation (same episodes)
    # into out/_baseline/, so reports show the base agent's scores beside every method
    baseline: bool = True
    # run directories of other sweeps whose finished runs stand in for this sweep's runs of the
    # same config (up to where and how fast they run): copied instead of run again
    reuse: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.out:
            raise UserError("the sweep needs out: a directory for its runs")
        if self.workers < 0 or self.threads < 0 or self.gpus < 0:
            raise UserError("workers, threads and gpus must be >= 0 (0: automatic, no GPU)")
        if self.executor not in EXECUTORS:
            raise UserError(f"unknown executor {self.executor!r} (valid: {', '.join(EXECUTORS)})")
        if self.executor != "ray" and self.address is not None:
            raise UserError("address is a Ray setting: add executor=ray, or drop it")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise UserError(f"gpus per run must be a fraction <= 1 or whole, not {self.gpus}")
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


@dataclass
class Run:
    name: str
    overrides: dict[str, Any]  # dotted key -> value: `set`, then the grid point, then out
    config: dict[str, Any]  # the base config with the overrides applied (resolved at planning)
    baseline: bool = False  # an evaluation of the base checkpoint, not a finetune run

    @property
    def out(self) -> Path:
        return Path(self.config["out"])

    @property
    def done_file(self) -> Path:
        return self.out if self.baseline else self.out / "summary.json"


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
    from eva_rl.training.finetune import FinetuneConfig

    base = read_yaml(cfg.base) if base is None else base
    runs = []
    for point in cfg.points:
        name = run_name(point)
        # `set` as dotted keys: a nested section (`set.method.name=lora` on the command line)
        # sets its keys, it does not replace the base's whole section
        overrides = {**flatten(cfg.set), **point, "out": str(Path(cfg.out) / name)}
        data = copy.deepcopy(base)
        for key, value in overrides.items():
            set_path(data, key, value)
        checked = from_dict(FinetuneConfig, data)  # validate now, not in a worker an hour later
        _check_inputs(name, checked)
        runs.append(Run(name, overrides, data))
    if len({r.name for r in runs}) != len(runs):
        raise UserError("grid values give two runs the same name; make the values distinct")
    if cfg.baseline:
        runs = _baselines(cfg, runs) + runs
    return runs


def _check_inputs(name: str, cfg) -> None:
    """The run's checkpoint and datasets exist (checked for every run before any starts)."""
    from eva_rl.agent import locate_checkpoint
    from eva_rl.data import catalog

    try:
        locate_checkpoint(cfg.checkpoint)
    except UserError as e:
        raise UserError(f"run {name}: {e}") from None
    root = catalog.datasets_root(cfg.data_root)
    for ds in cfg.dataset_ids:
        if not catalog.exists(root, ds):
            raise UserError(
                f"run {name}: Minari dataset {ds!r} not found under {root}; build it first "
                "(eva-rl data build) or drop the run from the grid"
            )


def _baselines(cfg: SweepConfig, runs: list[Run]) -> list[Run]:
    """One evaluation of the base checkpoint per distinct (checkpoint, data, evaluation) of the
    runs, with their final evaluation's episodes: the base agent's score on the same episodes."""
    from eva_rl.training.finetune import FinetuneConfig

    found: dict[str, Run] = {}
    for run in runs:
        c = from_dict(FinetuneConfig, run.config)
        key = {
            "checkpoint": c.checkpoint,
            "stats": c.stats,
            "datasets": c.dataset_ids,
            "data_root": c.data_root,
            "task": c.task or None,
            "eval": to_dict(c.eval),
            "device": c.device,
            "precision": c.precision,
        }
        name = (c.task or ",".join(c.dataset_ids)).replace("/", "_")
        if name in found and found[name].config["key"] != key:
            name = f"{name}-{len([n for n in found if n.startswith(name)])}"
        if name not in found:
            out = str(Path(cfg.out) / BASELINE_DIR / f"{name}.json")
            found[name] = Run(f"{BASELINE_DIR}.{name}", {}, {"out": out, "key": key}, True)
    return list(found.values())


def run_baseline(run: Run) -> None:
    """Evaluate the base checkpoint as the runs' final evaluation does; write the JSON."""
    from eva_rl.agent import Agent
    from eva_rl.data.segments import load_trajectories
    from eva_rl.evaluation import EvalConfig, evaluate
    from eva_rl.runtime import resolve_device

    key = run.config["key"]
    ev = key["eval"]
    agent = Agent.load(key["checkpoint"], stats=key["stats"], device=resolve_device(key["device"]))
    data = load_trajectories(key["datasets"], key["data_root"])
    agent.meta.target_returns.update(data.max_returns())  # the target the runs evaluate with
    cfg = EvalConfig(
        episodes=ev["final_episodes"] or ev["episodes"],
        seed=ev["seed"],
        device=key["device"],
        precision=key["precision"],
        max_envs=ev["max_envs"],
        workers=ev["workers"],
    )
    result = evaluate(agent, data.envs, cfg, progress=False)
    result.config.update(
        checkpoint=key["checkpoint"], task=key["task"], datasets=key["datasets"], baseline=True
    )
    atomic_write_json(run.out, result.to_dict())


def reuse_finished(runs: list[Run], dirs: list[str]) -> dict[str, str]:
    """Copy into place, for each run not started yet, a finished run under `dirs` whose config
    equals its own up to where and how fast it runs (`RESUME_MAY_CHANGE`, `out`): on one device
    the same config and seed is the same run (keys an older eva_rl did not have count as their
    defaults, see `as_current`). Checkpoints are not copied. Returns run name ->
    the directory it came from."""
    from eva_rl.config import as_current, changed_keys
    from eva_rl.training.finetune import FinetuneConfig
    from eva_rl.training.loop import RESUME_MAY_CHANGE

    ignore = (*RESUME_MAY_CHANGE, "out")
    for path in dirs:  # an optimisation, not an input: without it the runs simply run here
        if not Path(path).is_dir():
            warnings.warn(f"reuse: {path} is not a directory; its runs will run here", stacklevel=2)
    todo = [r for r in runs if not r.baseline and not r.out.exists()]
    if not todo:  # a resumed sweep with every run started: nothing to look up
        return {}
    finished = [s.parent for d in dirs for s in sorted(Path(d).glob("*/summary.json"))]
    configs = {}
    for s in finished:
        with contextlib.suppress(OSError, UserError):  # unreadable here: not this run's config
            configs[s] = as_current(FinetuneConfig, read_yaml(s / "config.yaml"))
    copied = {}
    for run in todo:
        mine = to_dict(from_dict(FinetuneConfig, run.config))
        src = next((s for s, c in configs.items() if not changed_keys(c, mine, ignore)), None)
        if src is None:
            continue
        staged = run.out.with_name(f".{run.out.name}.copying")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(src, staged, ignore=shutil.ignore_patterns("checkpoints"))
        (staged / COPIED_FILE).write_text(f"{src}\n")
        staged.rename(run.out)  # whole or not at all
        copied[run.name] = str(src)
    return copied


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


def run_config(run: Run, threads: int, device: str | None = None):
    """The finetune config of one run, resuming it if it has a checkpoint."""
    from eva_rl.training.finetune import FinetuneConfig

    data = {**copy.deepcopy(run.config), "threads": threads}
    if device is not None:
        data["device"] = device
    evaluation = data.setdefault("eval", {})
    if not evaluation.get("workers"):  # env processes within this run's share of the cores
        evaluation["workers"] = max(1, threads // 2)
    # a run killed before its first checkpoint is restarted by finetune itself
    data["resume"] = (run.out / "checkpoints" / "latest" / "state.pt").is_file()
    return from_dict(FinetuneConfig, data)


def _run_one(run: Run, threads: int, log: str, device: str | None = None) -> dict[str, Any]:
    """Worker: one finetune run (or baseline evaluation), its output and warnings in `log`."""
    import torch

    from eva_rl.training.finetune import finetune

    torch.set_num_threads(threads)
    started = time.perf_counter()
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        warnings.simplefilter("default")
        try:
            if run.baseline:
                run_baseline(run)
            else:
                finetune(run_config(run, threads, device), progress=False)
        except Exception:  # reported in the parent; the sweep goes on with the other runs
            traceback.print_exc(file=f)
            return {"ok": False, "seconds": time.perf_counter() - started}
    return {"ok": True, "seconds": time.perf_counter() - started}


def _shares(cfg: SweepConfig, cores: list[int], runs: int) -> tuple[int, int]:
    """Parallel runs and threads per run on machines with `cores` cores each: by default one
    run per core and the cores shared out between the runs, no run larger than one machine."""
    workers = min(cfg.workers or sum(cores), max(1, runs))
    return workers, cfg.threads or max(1, min(max(cores), sum(cores) // workers))


def gpu_slots(gpus_per_run: float, devices: int) -> list[str]:
    """One entry per run that fits at once: `cuda:i` repeated 1/gpus_per_run times per GPU (a
    fraction shares a GPU), or every GPU once per whole-number share."""
    if gpus_per_run <= 0:
        return []
    if devices == 0:
        raise UserError(f"gpus={gpus_per_run:g} per run, but no CUDA device is visible")
    if gpus_per_run <= 1:
        return [f"cuda:{i}" for i in range(devices) for _ in range(int(1 / gpus_per_run))]
    need = int(gpus_per_run)
    if need > devices:
        raise UserError(f"gpus={need} per run, but only {devices} CUDA device(s) are visible")
    return [f"cuda:{i}" for i in range(0, devices - need + 1, need)]


def _child(run: Run, threads: int, log: str, device: str | None, conn) -> None:
    """Entry point of a run's own process: the result goes back through `conn`. The sweep stops
    its runs with SIGTERM (they ignore the terminal's Ctrl-C, which the sweep handles once): the
    run then cleans up as an interrupted finetune does and its log says so."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        result = _run_one(run, threads, log, device)
    except KeyboardInterrupt:
        with open(log, "a") as f:
            print("stopped (SIGTERM): run the sweep again to resume this run", file=f)
        raise SystemExit(130) from None
    conn.send(result)
    conn.close()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """A process started in here ignores SIGINT from birth (the disposition survives exec and
    Python then installs no KeyboardInterrupt handler), so Ctrl-C reaches the sweep alone."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # a sweep started off the main thread: signals are not its to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _local(cfg: SweepConfig, todo: list[Run], logs: Path) -> Iterator[tuple[Run, dict]]:
    """Each run in its own spawned process (a fresh interpreter, no torch/MuJoCo state shared),
    at most `workers` at once; yields runs and results as they finish. A process that dies
    without a result (killed, out of memory) is a failed run whose log says how it ended; the
    others go on. With `gpus`, each run gets a device from the GPU slots (fractions share one
    GPU), so a GPU node runs as many runs as fit."""
    from multiprocessing.connection import wait as wait_for

    slots = []
    if cfg.gpus:
        import torch

        slots = gpu_slots(cfg.gpus, torch.cuda.device_count())
    workers, threads = _shares(cfg, [os.cpu_count() or 1], len(todo))
    if slots:
        workers = min(workers if cfg.workers else len(slots), len(slots), max(1, len(todo)))
        threads = cfg.threads or max(1, (os.cpu_count() or 1) // workers)
    ctx = get_context("spawn")
    free, queue = list(slots), list(todo)
    running: dict[int, tuple[Any, Run, str | None, Any]] = {}  # sentinel -> process, run, ...
    try:
        while queue or running:
            while queue and len(running) < workers:
                run = queue.pop(0)
                device = free.pop(0) if slots else None
                receive, send = ctx.Pipe(duplex=False)
                log = str(logs / f"{run.name}.log")
                process = ctx.Process(target=_child, args=(run, threads, log, device, send))
                with _sigint_ignored():
                    process.start()
                send.close()
                running[process.sentinel] = (process, run, device, receive)
            for sentinel in wait_for(list(running)):
                process, run, device, receive = running.pop(sentinel)
                try:  # a process that died mid-run sent nothing: reading finds the pipe closed
                    result = receive.recv() if receive.poll() else None
                except EOFError:
                    result = None
                process.join()
                if device is not None:
                    free.append(device)
                if result is None:
                    code = process.exitcode  # negative: killed by that signal
                    with open(logs / f"{run.name}.log", "a") as f:
                        print(f"the run's process ended with exit code {code} before it "
                              "reported a result", file=f)  # fmt: skip
                    result = {"ok": False}
                yield run, result
    finally:  # stopped early (Ctrl-C, an error): stop the runs still going, let them clean up
        for process, *_ in running.values():
            process.terminate()
        for process, *_ in running.values():
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray: pip install 'eva_rl[ray]'") from None
    return ray


def _run_in_dir(cwd: str, run: Run, threads: int, log: str) -> dict[str, Any]:
    """Ray worker: in the driver's directory, where the run's relative paths point."""
    os.chdir(cwd)
    return _run_one(run, threads, log)


def _ray(cfg: SweepConfig, todo: list[Run], logs: Path) -> Iterator[tuple[Run, dict]]:
    """Each run as a Ray task holding `threads` CPUs and `gpus` GPUs; at most `workers` in
    flight (0: all, Ray schedules them as resources free up). Yields runs and results as they
    finish; a task Ray lost (a crashed or killed worker) is a failed run, not retried."""
    ray = _import_ray()
    if not todo:
        return  # no cluster to start
    local = {"num_cpus": os.cpu_count()} if cfg.address is None else {}
    ray.init(address=cfg.address, include_dashboard=False, log_to_driver=False, **local)
    pending: dict[Any, Run] = {}
    try:
        cores = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]]
        _, threads = _shares(cfg, cores, len(todo))
        task = ray.remote(num_cpus=threads, num_gpus=cfg.gpus, max_retries=0)(_run_in_dir)
        # Ray sets CUDA_VISIBLE_DEVICES per task: `auto` then picks the GPU it was given
        queue, cwd = list(todo), os.getcwd()
        while queue or pending:
            while queue and (not cfg.workers or len(pending) < cfg.workers):
                run = queue.pop(0)
                pending[task.remote(cwd, run, threads, str(logs / f"{run.name}.log"))] = run
            [ref], _ = ray.wait(list(pending))
            run = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as e:
                with open(logs / f"{run.name}.log", "a") as f:
                    print(f"Ray lost this run: {e}", file=f)
                result = {"ok": False}
            yield run, result
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.shutdown()


EXECUTORS = {"local": _local, "ray": _ray}


def sweep(cfg: SweepConfig, progress: bool = True) -> dict[str, Any]:
    """Run every unfinished run of the sweep; returns counts and the failed runs."""
    if cfg.executor == "ray":
        _import_ray()  # fail before anything is written
    elif cfg.gpus:
        import torch

        gpu_slots(cfg.gpus, torch.cuda.device_count())
    out = Path(cfg.out)
    saved, snapshot = out / SWEEP_FILE, out / BASE_FILE
    base = read_yaml(cfg.base)
    same = ("base", "grid", "set")  # the executor and its resources may change between invocations
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
    copied = reuse_finished(runs, cfg.reuse)
    todo = [r for r in runs if not r.done_file.is_file()]
    waiting = {r.name for r in todo}
    index = {
        r.name: {"overrides": r.overrides, "status": "pending" if r.name in waiting else "done"}
        for r in runs
    }
    for r in runs:
        if (r.out / COPIED_FILE).is_file():
            index[r.name]["copied_from"] = (r.out / COPIED_FILE).read_text().strip()
    atomic_write_json(out / INDEX_FILE, index)
    failed: list[str] = []
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run",
               disable=not progress)  # fmt: skip
    # closing: an interrupt or error here stops the executor's runs too
    with bar, contextlib.closing(EXECUTORS[cfg.executor](cfg, todo, logs)) as finished:
        for run, result in finished:
            index[run.name]["status"] = "done" if result["ok"] else "failed"
            if "seconds" in result:  # not known for a run its Ray worker lost
                index[run.name]["seconds"] = round(result["seconds"], 1)
            if not result["ok"]:
                failed.append(run.name)
            atomic_write_json(out / INDEX_FILE, index)
            bar.update(1)
            bar.set_postfix(failed=len(failed), last=run.name[-40:])
    if failed:
        raise RunError(
            f"{len(failed)} of {len(runs)} runs failed (logs in {logs}): {', '.join(failed[:3])}"
            + ("..." if len(failed) > 3 else "")
            + "; fix the cause and run the sweep again (finished runs are kept)"
        )
    baselines = sum(r.baseline for r in runs)
    return {
        "runs": len(runs) - baselines,
        "ran": sum(not r.baseline for r in todo),
        "skipped": sum(not r.baseline for r in runs) - sum(not r.baseline for r in todo),
        "copied": len(copied),
        "baselines": baselines,
        "out": out,
    }


def load_sweep(path: str | os.PathLike, overrides: list[str] = ()) -> SweepConfig:
    data = read_yaml(path)
    for item in overrides:
        apply_override(data, item)
    return from_dict(SweepConfig, data)
