"""A sweep's runs: one per grid point, each config resolved and validated before any starts;
finished runs of other sweeps copied in (`reuse`); the config (finetune or online) a worker
runs."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eva_rl.assets import locate
from eva_rl.config import flatten, from_dict, read_yaml, set_path, to_dict
from eva_rl.errors import UserError
from eva_rl.io import checkpoint_holds
from eva_rl.results import SUMMARY_FILE
from eva_rl.sweeps.config import ALIASES, BASELINE_DIR, COPIED_FILE, SweepConfig
from eva_rl.sweeps.stages import config_class

NAME_MAX = 255  # bytes in a folder name (Linux, macOS)


@dataclass
class Run:
    name: str
    overrides: dict[str, Any]  # dotted key -> value: `set`, then the grid point, then out
    config: dict[str, Any]  # the base config with the overrides applied (resolved at planning)
    baseline: bool = False  # an evaluation of the base checkpoint, not a run of `command`
    command: str = "finetune"  # the sweep's `command`: what the run is

    @property
    def out(self) -> Path:
        return Path(self.config["out"])

    @property
    def waits_for(self) -> str | None:
        """The run this one starts from (`from_run`) while that has not finished: an online
        sweep chained to an offline one runs each run once its offline run is there."""
        start = None if self.baseline else self.config.get("from_run")
        return start if start and not (Path(start) / SUMMARY_FILE).is_file() else None

    @property
    def done_file(self) -> Path:
        return self.out if self.baseline else self.out / SUMMARY_FILE


@dataclass
class Feed:
    """The runs an executor starts, in order: the `ready` ones, then, with `wait`, each
    `blocked` one as soon as `poll()` finds its `from_run` finished (`on_ready` is told), so
    that it takes the first free worker instead of waiting for the others to end."""

    ready: list[Run]
    blocked: list[Run]
    wait: bool = False
    on_ready: Callable[[list[Run]], None] = lambda runs: None

    @property
    def open(self) -> bool:
        """Runs may still join: some are blocked and the sweep waits for them."""
        return self.wait and bool(self.blocked)

    def poll(self) -> None:
        if not self.open:
            return
        started = [r.waits_for is None for r in self.blocked]  # read once: starts finish now
        now = [r for r, s in zip(self.blocked, started, strict=True) if s]
        if now:
            self.blocked = [r for r, s in zip(self.blocked, started, strict=True) if not s]
            self.ready.extend(now)
            self.on_ready(now)


def run_name(point: dict[str, Any]) -> str:
    """`task=hammer-v3,method=eva,rank=8,seed=0`: readable in TensorBoard's run list."""
    parts = []
    for key, value in point.items():
        text = str(value).replace("/", "_").replace(",", "_")
        parts.append(f"{ALIASES.get(key, key)}={text}")
    return ",".join(parts)


PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.]+)\}")


def fill(value: Any, point: dict[str, Any], key: str) -> Any:
    """A `set` value with each `{grid key}` (or its short name: `{method}` for method.name)
    replaced by the run's value, so one setting can follow the grid: `from_run:
    runs/sweeps/offline/seed={seed},task={task},method={method}` starts each online run from
    the offline sweep's run of the same point."""
    if not isinstance(value, str):
        return value
    names = {**{ALIASES.get(k, k): v for k, v in point.items()}, **point}

    def one(match: re.Match) -> str:
        if match.group(1) not in names:
            raise UserError(
                f"set.{key} names {{{match.group(1)}}}, which is not a grid key of this run "
                f"(grid keys: {', '.join(point)})"
            )
        return str(names[match.group(1)])

    return PLACEHOLDER.sub(one, value)


def plan(cfg: SweepConfig, base: dict[str, Any] | None = None, inputs: bool = True) -> list[Run]:
    """The runs of a sweep, each config resolved from `base` (default: the base file as it is
    now) and validated, so a bad key fails before anything runs; with `inputs`, each run's
    checkpoint and datasets must exist too (the quickstart checks its settings before it
    builds its dataset)."""
    base = read_yaml(locate(cfg.base)) if base is None else base
    runs = []
    for point in cfg.points:
        name = run_name(point)
        # `set` as dotted keys: a nested section (`set.method.name=lora` on the command line)
        # sets its keys, it does not replace the base's whole section
        filled = {k: fill(v, point, k) for k, v in flatten(cfg.set).items()}
        overrides = {**filled, **point, "out": str(Path(cfg.out) / name)}
        data = copy.deepcopy(base)
        for key, value in overrides.items():
            set_path(data, key, value)
        if cfg.precision and data.get("precision", "auto") == "auto":
            data["precision"] = cfg.precision
        # validate now, not in a worker an hour later
        checked = from_dict(config_class(cfg.command), data)
        if inputs:
            _check_inputs(name, checked)
        runs.append(Run(name, overrides, data, command=cfg.command))
    if len({r.name for r in runs}) != len(runs):
        raise UserError("grid values give two runs the same name; make the values distinct")
    longest = max(runs, key=lambda r: len(r.name.encode()))
    if len(longest.name.encode()) > NAME_MAX:  # before anything is written
        raise UserError(
            f"run name {longest.name[:60]}... is {len(longest.name.encode())} bytes, over the "
            f"{NAME_MAX} a folder name may have; shorten the grid's values"
        )
    if cfg.baseline:
        runs = baselines(cfg, runs) + runs
    return runs


def baselines(cfg: SweepConfig, runs: list[Run]) -> list[Run]:
    """One evaluation of the base checkpoint per distinct (checkpoint, data, evaluation) of the
    runs, with their final evaluation's episodes: the base agent's score on the same episodes."""
    found: dict[str, Run] = {}
    for run in runs:
        c = from_dict(config_class(run.command), run.config)
        key = {
            "checkpoint": c.checkpoint,
            "stats": c.stats,
            "datasets": c.dataset_ids,
            "data_root": c.data_root,
            "task": c.task or None,
            "eval": to_dict(c.eval),
            "device": c.device,
            "precision": c.precision,
            # online runs evaluate toward a multiple of the best offline return
            "target_scale": getattr(c, "eval_target_scale", 1.0),
        }
        if any(r.config["key"] == key for r in found.values()):
            continue
        name = stem = (c.task or ",".join(c.dataset_ids)).replace("/", "_")
        number = 0
        while name in found:  # the same data evaluated otherwise: hammer-v3-1, hammer-v3-2, ...
            number += 1
            name = f"{stem}-{number}"
        out = str(Path(cfg.out) / BASELINE_DIR / f"{name}.json")
        found[name] = Run(f"{BASELINE_DIR}.{name}", {}, {"out": out, "key": key}, True)
    return list(found.values())


def _check_inputs(name: str, cfg) -> None:
    """The run's checkpoint and datasets exist (checked for every run before any starts)."""
    from eva_rl.assets import locate_checkpoint
    from eva_rl.data import catalog

    try:
        locate_checkpoint(cfg.checkpoint)
    except UserError as e:
        raise UserError(f"run {name}: {e}") from None
    start = getattr(cfg, "from_run", None)  # may not have finished, or started, yet: its
    if start and not Path(start).parent.is_dir():  # sweep's folder is there once that starts
        raise UserError(
            f"run {name}: from_run {start} is in no folder that exists ({Path(start).parent}); "
            "check the path, or start the sweep that makes it first"
        )
    root = catalog.datasets_root(cfg.data_root)
    for ds in cfg.dataset_ids:
        if not catalog.exists(root, ds):
            raise UserError(
                f"run {name}: Minari dataset {ds!r} not found under {root}; build it first "
                "(eva-rl data build) or drop the run from the grid"
            )


def ran_in(summary: Path) -> str:
    """The precision a finished run ran in (a summary without one predates bf16: fp32)."""
    return json.loads(summary.read_text()).get("precision", "fp32")


def resolved_precision(config: dict[str, Any]) -> str:
    """The precision a run's config would run in on this machine (`auto` resolved)."""
    from eva_rl.runtime import resolve_device, resolve_precision

    device = resolve_device(config.get("device", "auto"))
    return resolve_precision(config.get("precision", "auto"), device)


def check_precision(cfg: SweepConfig, runs: list[Run]) -> None:
    """A sweep that does not choose precision per run (grid or `set`) keeps one for all its
    runs: `auto` resolves by hardware, so a sweep resumed on another machine could mix them."""
    if "precision" in {k for point in cfg.points for k in point} | set(flatten(cfg.set)):
        return
    seen, done = Counter(), set()  # precision -> runs; those of the finished runs
    for run in runs:
        if run.baseline:
            continue
        finished = run.done_file.is_file()
        precision = ran_in(run.done_file) if finished else resolved_precision(run.config)
        seen[precision] += 1
        if finished:
            done.add(precision)
    if len(seen) > 1:
        kinds = ", ".join(f"{n} in {p}" for p, n in sorted(seen.items()))
        raise UserError(
            f"{cfg.out}: its runs would mix precisions ({kinds}: precision auto resolves by "
            "hardware, and this machine chooses differently from the one that made the finished "
            f"runs); add `precision: {' or '.join(sorted(done))}` (the finished runs') to the "
            "sweep file"
        )


def reusable(runs: list[Run], dirs: list[str]) -> dict[str, Path]:
    """For each run not started yet, a finished run under `dirs` whose config equals its own up
    to where and how fast it runs (`RESUME_MAY_CHANGE`, `out`) and that ran in the precision it
    would run in here (`auto` compared as resolved): on one device the same config and seed is
    the same run (keys an older eva_rl did not have count as their defaults, see `as_current`).
    Finds them only: run name -> that run's directory."""
    from eva_rl.config import as_current, changed_keys
    from eva_rl.training.rundir import RESUME_MAY_CHANGE

    ignore = (*RESUME_MAY_CHANGE, "out")
    for path in dirs:  # an optimisation, not an input: without it the runs simply run here
        if not Path(path).is_dir():
            warnings.warn(f"reuse: {path} is not a directory; its runs will run here", stacklevel=2)
    todo = [r for r in runs if not r.baseline and not r.out.exists()]
    if not todo:  # a resumed sweep with every run started: nothing to look up
        return {}
    finished = [  # not a hidden one: an interrupted copy (`.NAME.copying`) may lack its agent
        s.parent for d in dirs for s in sorted(Path(d).glob("*/summary.json"))
        if not s.parent.name.startswith((".", "_"))
    ]  # fmt: skip
    kind = config_class(todo[0].command)  # one command per sweep
    configs = {}
    for s in finished:
        with contextlib.suppress(OSError, ValueError, UserError):  # unreadable: not this run's
            config = as_current(kind, read_yaml(s / "config.yaml"))
            config["precision"] = ran_in(s / SUMMARY_FILE)
            configs[s] = config
    found = {}
    for run in todo:
        mine = to_dict(from_dict(kind, run.config))
        mine["precision"] = resolved_precision(mine)
        src = next((s for s, c in configs.items() if not changed_keys(c, mine, ignore)), None)
        if src is not None:
            found[run.name] = src
    return found


def reuse_finished(runs: list[Run], dirs: list[str]) -> dict[str, str]:
    """Copy the `reusable` runs into place, without their checkpoints. Returns run name -> the
    directory it came from."""
    by_name = {r.name: r for r in runs}
    copied = {}
    for name, src in reusable(runs, dirs).items():
        out = by_name[name].out
        staged = out.with_name(f".{out.name}.copying")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(src, staged, ignore=shutil.ignore_patterns("checkpoints"))
        (staged / COPIED_FILE).write_text(f"{src}\n")
        staged.rename(out)  # whole or not at all
        copied[name] = str(src)
    return copied


def run_config(run: Run, threads: int, device: str | None = None):
    """The config of one run (finetune or online), resuming it if it has a checkpoint."""
    data = {**copy.deepcopy(run.config), "threads": threads}
    if device is not None:
        data["device"] = device
    evaluation = data.setdefault("eval", {})
    if not evaluation.get("workers"):  # env processes within this run's share of the cores
        evaluation["workers"] = max(1, threads // 2)
    # a run killed before its first checkpoint is restarted by finetune itself
    data["resume"] = checkpoint_holds(run.out / "checkpoints" / "latest", "state.pt")
    return from_dict(config_class(run.command), data)
