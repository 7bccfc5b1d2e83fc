"""A sweep's config (the sweep file) and the names of the files it keeps under `out`."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from eva_rl.config import load_config, read_yaml, to_dict
from eva_rl.errors import UserError

SWEEP_FILE = "sweep.yaml"
BASE_FILE = "base_config.yaml"  # the base finetune config as the sweep first read it
INDEX_FILE = "runs.json"
BASELINE_DIR = "_baseline"  # the base agent's evaluations, one JSON per task
COPIED_FILE = "copied_from"  # in a run copied from another sweep (`reuse`): where from
Executor = Literal["local", "ray"]  # the keys of `executors.EXECUTORS`
Command = Literal["finetune", "online"]  # what `stages` can run
ALIASES = {"method.name": "method", "method.rank": "rank", "method.rho": "rho"}


@dataclass
class SweepConfig:
    base: str = "configs/finetune/cw10-cpu.yaml"  # the config every run starts from
    command: Command = "finetune"  # what each run is: `eva-rl finetune` or `eva-rl online`
    out: str = ""  # root of every run
    # dotted key -> values; or a list of such grids, whose runs are pooled (e.g. rho only for EVA)
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, for every run
    workers: int = 0  # parallel runs; 0: one per CPU core (ray: as many as its resources allow)
    threads: int = 0  # torch threads (ray: CPUs) per run; 0: cores // workers, within one node
    executor: Executor = "local"  # local: processes of this machine; ray: Ray tasks
    address: str | None = None  # the Ray cluster's address; None: start a local Ray instance
    gpus: float = 0.0  # GPUs per run; a fraction shares one GPU (0.25: four runs per GPU)
    # evaluate the base checkpoint once per task with the runs' final evaluation (same episodes)
    # into out/_baseline/, so reports show the base agent's scores beside every method
    baseline: bool = True
    # run directories of other sweeps whose finished runs stand in for this sweep's runs of the
    # same config (up to where and how fast they run): copied instead of run again
    reuse: list[str] = field(default_factory=list)
    # what `precision: auto` means for this sweep's runs (fp32 or bf16); None: each machine's
    # choice. A sweep resumed on a machine that would choose otherwise refuses and names this
    precision: str | None = None
    # runs whose `from_run` has not finished (a sweep chained to one still running): false,
    # leave them for a later invocation; true, wait and run each once its start has finished
    wait: bool = False

    def __post_init__(self):
        if not self.out:
            raise UserError("the sweep needs out: a directory for its runs")
        if self.precision not in (None, "fp32", "bf16"):
            raise UserError(f"sweep precision must be fp32 or bf16, not {self.precision!r}")
        if self.workers < 0 or self.threads < 0 or self.gpus < 0:
            raise UserError("workers, threads and gpus must be >= 0 (0: automatic, no GPU)")
        if self.command not in get_args(Command):
            valid = ", ".join(get_args(Command))
            raise UserError(f"unknown command {self.command!r} for a sweep's runs (valid: {valid})")
        if self.executor not in get_args(Executor):
            valid = ", ".join(get_args(Executor))
            raise UserError(f"unknown executor {self.executor!r} (valid: {valid})")
        if self.executor != "ray" and self.address is not None:
            raise UserError("address is a Ray setting: add executor=ray, or drop it")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise UserError(f"gpus per run must be a fraction <= 1 or whole, not {self.gpus}")
        grids = as_grids(self.grid)
        if not grids or not all(grids):
            raise UserError("the sweep's grid is empty; give at least one key: [values]")
        for grid in grids:
            for key, values in grid.items():
                if not values:
                    raise UserError(f"grid key {key!r} needs a non-empty list of values")
                if any(isinstance(v, dict) for v in values):  # it would replace the section
                    raise UserError(
                        f"grid key {key!r} has a mapping among its values, which would replace "
                        f"the base's whole {key} section; grid the keys inside it instead "
                        f"({key}.name: [...]), or give a list of grids"
                    )

    @property
    def points(self) -> list[dict[str, Any]]:
        return [point for grid in as_grids(self.grid) for point in expand(grid)]


def as_grids(grid: dict | list[dict]) -> list[dict[str, list[Any]]]:
    """A sweep file's `grid`: one grid, or a list of grids whose runs are pooled."""
    return grid if isinstance(grid, list) else [grid]


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, first key slowest."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def load_sweep(path: str | os.PathLike, overrides: list[str] = ()) -> SweepConfig:
    return load_config(SweepConfig, path, overrides)


def check_same_sweep(cfg: SweepConfig) -> None:
    """Refuse a sweep file that is not the one `cfg.out` holds: the executor and its resources
    may change between invocations, what runs may not (a sweep file from before `command`
    existed ran finetune), nor the order of the grid keys that name the run folders."""
    out = Path(cfg.out)
    saved = out / SWEEP_FILE
    if not saved.is_file():
        return
    before = {"command": "finetune", **read_yaml(saved)}
    if any(before.get(k) != to_dict(cfg)[k] for k in ("base", "command", "grid", "set")):
        raise UserError(
            f"{out} holds a different sweep ({saved}); choose another out or delete that one"
        )
    if (order := _key_orders(before["grid"])) != _key_orders(cfg.grid):
        raise UserError(
            f"{out} holds this sweep with its grid keys in another order "
            f"({', '.join(order[0])}); run folders are named in that "
            "order, so every run would start again: restore the order in the sweep file"
        )


def _key_orders(grid) -> list[list[str]]:
    """The key order of each grid (a dict compares equal whatever its order; names do not)."""
    return [list(g) for g in (grid if isinstance(grid, list) else [grid])]


def read_index(out: Path) -> dict[str, dict[str, Any]] | None:
    """The sweep's `runs.json` at `out` (run name -> its state), None where there is none; a
    damaged one is refused, with the way back: the sweep rebuilds it from its run folders."""
    path = out / INDEX_FILE
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        index = e
    if not isinstance(index, dict) or not all(isinstance(v, dict) for v in index.values()):
        why = repr(index) if isinstance(index, Exception) else "not a map of runs"
        raise UserError(
            f"{path} is damaged ({why}); delete it and run the sweep again, which rebuilds it "
            "from the run folders (finished runs are kept, not run again)"
        )
    return index
