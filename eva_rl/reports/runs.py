"""Finished runs as rows: every `summary.json` under one or more runs directories (any eva_rl
version), and the sweeps' baseline evaluations of the base agent."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from eva_rl.config import flatten, read_yaml
from eva_rl.errors import UserError
from eva_rl.results import SUMMARY_FILE, EvalResult, RunSummary
from eva_rl.stats import curve_auc
from eva_rl.sweeps import BASELINE_DIR, SWEEP_FILE
from eva_rl.sweeps.config import as_grids, expand

# sweep grid keys that are not a variant: the task, the seed and a configuration's own method
NOT_VARIANT = {"task", "seed", "method.name", "method.rank", "method.rho"}
NOT_CSV = {"csv": False}  # a Row field that runs.csv leaves out
SUMMARY_KEYS = {f.name for f in fields(RunSummary)} - {"task"}  # a Row's task is the label
Dirs = str | os.PathLike | list[str | os.PathLike]


@dataclass
class Row:
    """One finished run, flattened for tables; `curve` keeps every evaluation's metrics."""

    task: str
    method: str
    rank: int
    rho: float
    seed: int
    steps: int  # updates
    env_steps: int | None  # an online run's env steps (its curves' unit); None offline
    score_name: str
    score: float | None  # at the end of training (the last evaluation)
    success_final: float | None
    success_any: float | None
    ret: float | None
    best_score: float | None
    auc: float | None  # of the score curve, from step 0 (the base agent's score if not run)
    heldout_loss: float | None
    final_loss: float | None
    trainable_parameters: int
    total_rank: int
    gradient_signal: float
    collector_seconds: float | None
    train_seconds: float
    wall_seconds: float
    precision: str
    variant: tuple[tuple[str, str], ...]  # the sweep's other grid keys: (("precision", "bf16"),)
    run: str  # path relative to the runs directory (prefixed by it where a report reads several)
    # not in runs.csv: the curve, ranks and the summary itself, for plots and TensorBoard
    curve: list[tuple[int, dict[str, float]]] = field(default_factory=list, metadata=NOT_CSV)
    ranks: dict[str, int] = field(default_factory=dict, metadata=NOT_CSV)
    summary: RunSummary | None = field(default=None, metadata=NOT_CSV)
    path: Path | None = field(default=None, metadata=NOT_CSV)  # the run's directory
    step_unit: str = field(default="updates", metadata=NOT_CSV)  # updates, or env_steps (online)
    auc_from: int | None = field(default=0, metadata=NOT_CSV)  # the AUC curve's first step

    @property
    def gain(self) -> float | None:
        """The score at the last evaluation less the run's own at step 0 (an online run's
        start), None without a step-0 evaluation or where the two played different episodes
        (a gain is paired within the run): what the run added to where it started."""
        first = self.curve[0] if self.curve else None
        if first is None or first[0] != 0 or self.score is None:
            return None
        if self.summary is not None and _played(self.summary.eval[0]) != _played(
            self.summary.eval[-1]
        ):
            return None
        start = first[1].get("score")  # the same measure as `score`, whatever it names
        return None if start is None else self.score - start

    @classmethod
    def csv_columns(cls) -> list[str]:
        """runs.csv's header: every field but the NOT_CSV ones, in declaration order."""
        return [f.name for f in fields(cls) if f.metadata.get("csv", True)]

    def csv_row(self) -> dict[str, Any]:
        row = {k: getattr(self, k) for k in self.csv_columns()}
        return row | {"variant": variant_text(self.variant)}


def unpaired(a: Row, b: Row) -> str | None:
    """Why two runs of a pair cannot be compared, or None: a paired difference is one of the
    same evaluation (the same last step, the same episodes by env and seed)."""
    if a.summary is None or b.summary is None or not a.summary.eval or not b.summary.eval:
        return None
    last_a, last_b = a.summary.eval[-1], b.summary.eval[-1]
    if last_a.step != last_b.step:
        return f"{a.run} ends at step {last_a.step}, {b.run} at {last_b.step}"
    if _played(last_a) != _played(last_b):
        return f"{a.run} and {b.run} were evaluated on different episodes"
    return None


def _played(point) -> dict[str, list[int]]:
    """An evaluation's episodes by env, as their seeds (empty where a summary kept none)."""
    return {env: [e.seed for e in episodes] for env, episodes in point.episodes.items()}


def variant_text(variant: tuple[tuple[str, str], ...]) -> str:
    """`precision=bf16,optim.lr=0.001`: a variant as a sweep's grid spells it."""
    return ",".join(f"{k}={v}" for k, v in variant)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}); remove it or rerun what wrote it") from None


def read_baselines(runs_dirs: Dirs) -> dict[str, EvalResult]:
    """Task -> the base agent's evaluation written by the sweep (empty if there is none). Two
    directories with different evaluations of one task cannot share a report's base line."""
    out, source = {}, {}
    for runs_dir in as_dirs(runs_dirs):
        for path in sorted(runs_dir.glob(f"{BASELINE_DIR}/*.json")):
            try:
                result = EvalResult.from_dict(read_json(path))
                if not all(r.episodes for r in result.envs.values()) or not result.envs:
                    raise ValueError("no episodes")
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                raise UserError(
                    f"{path} is not an evaluation of the base agent ({e!r}); remove it "
                    "(running the sweep again evaluates it again)"
                ) from None
            task = result.config.get("task") or ",".join(result.config.get("datasets", []))
            if task in out and out[task].envs != result.envs:
                raise UserError(
                    f"the base agent's evaluations of {task} differ between {source[task]} and "
                    f"{path}; report the two directories apart"
                )
            out[task], source[task] = result, path
    return out


def as_dirs(runs_dirs: Dirs) -> list[Path]:
    """A report's runs directories: one path or several."""
    if isinstance(runs_dirs, (str, os.PathLike)):
        return [Path(runs_dirs)]
    return [Path(d) for d in runs_dirs]


def collect_runs(
    runs_dirs: Dirs, baselines: dict[str, EvalResult] | None = None, by: Iterable[str] = ()
) -> list[Row]:
    """One row per finished run (a finetune or online `summary.json`) under `runs_dirs`.
    Configurations are told apart by the sweeps' grid keys and the config keys in `by`
    (`precision` as the run ran: `auto` resolves by hardware)."""
    dirs = as_dirs(runs_dirs)
    for i, a in enumerate(dirs):  # the same runs twice would double every count
        for b in dirs[i + 1 :]:
            if a.resolve().is_relative_to(b.resolve()) or b.resolve().is_relative_to(a.resolve()):
                raise UserError(f"runs directories {a} and {b} overlap (the same folder, or one "
                                "inside the other): their runs would count twice; name each "
                                "once")  # fmt: skip
    if fixed := sorted(set(by) & NOT_VARIANT):
        raise UserError(f"--by {' '.join(fixed)}: tasks, seeds and methods are always apart")
    baselines = read_baselines(dirs) if baselines is None else baselines
    keys = sorted({k for d in dirs for k in variant_keys(d)} | set(by))
    rows = []
    several = len(dirs) > 1  # then a run's name keeps its directory
    for runs_dir in dirs:
        paths = sorted(
            p  # not in hidden folders: a sweep stages a run it copies (`reuse`) in one
            for p in runs_dir.rglob(SUMMARY_FILE)
            if not any(part.startswith(".") for part in p.relative_to(runs_dir).parts)
        )
        if not paths:
            raise UserError(f"no finished runs (summary.json) under {runs_dir}; check the path")
        for path in paths:
            run = path.parent.relative_to(runs_dir)
            rows.append(read_row(path, baselines, keys, str(runs_dir / run if several else run)))
    if len({r.score_name for r in rows}) > 1:
        names = sorted({r.score_name for r in rows})
        raise UserError(f"the runs report different scores ({', '.join(names)}); report apart")
    if len({r.step_unit for r in rows}) > 1:
        raise UserError(
            "finetune and online runs count their curves in updates and in env "
            "steps; report them apart"
        )
    configs = [flatten(r.summary.config) for r in rows]
    for key in sorted(set(by) - {"precision"}):
        if not any(key in config for config in configs):
            raise UserError(
                f"--by {key}: no run has that config key; spell it as config.yaml does, "
                "dotted (e.g. optim.lr)"
            )
    return rows


def read_row(path: Path, baselines: dict[str, EvalResult], keys: list[str], run: str) -> Row:
    """The run whose summary is `path`, named `run`, its variant the values of `keys`."""
    try:
        s = RunSummary.from_dict(read_json(path))
        for point in s.eval:
            if text := [k for k, v in point.metrics.items() if not isinstance(v, int | float)]:
                raise ValueError(f"step {point.step}'s {text[0]} is not a number")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} is not a run summary ({e!r}); remove it") from None
    config = flatten(s.config)
    final = s.final
    curve = [(p.step, p.metrics) for p in s.eval]
    points = [(step, m["score"]) for step, m in curve if "score" in m]
    base = baselines.get(s.label)
    if base is not None and points and points[0][0] > 0:
        points.insert(0, (0, base.mean("score")))
    from_summary = {f.name: getattr(s, f.name) for f in fields(Row) if f.name in SUMMARY_KEYS}
    return Row(
        **from_summary,
        task=s.label,
        env_steps=config.get("env_steps") if s.step_unit == "env_steps" else None,
        score_name=s.score_name,
        score=final.get("score"),
        success_final=final.get("success_final"),
        success_any=final.get("success_any"),
        ret=final.get("return"),
        best_score=s.best(),
        auc=curve_auc(points),
        auc_from=points[0][0] if points else None,
        heldout_loss=final.get("heldout_loss"),
        total_rank=s.total_rank,
        variant=tuple((k, s.precision if k == "precision" else str(config.get(k))) for k in keys),
        run=run,
        curve=curve,
        summary=s,
        path=path.parent,
    )


def planned_configs(runs_dir: Path, rows: list[Row]) -> list[tuple[str, int, float, tuple]]:
    """The (method, rank, rho, variant) configurations the sweep that made `runs_dir` plans,
    finished or not: its grid points, the rest of each config as the finished runs have it.
    Empty without a sweep file."""
    return sorted(planned_tasks_of(runs_dir, rows), key=str)


def planned_tasks_of(runs_dir: Path, rows: list[Row]) -> dict[tuple, set[str]]:
    """`planned_configs`, each with the tasks the sweep plans for it (a configuration of a
    grid over fewer tasks than the sweep's has fewer)."""
    if not (runs_dir / SWEEP_FILE).is_file() or not rows:
        return {}
    grids = saved_grids(runs_dir)
    first = rows[0]
    base = {"method.name": first.method, "method.rank": first.rank, "method.rho": first.rho}
    base |= flatten(first.summary.config)
    # the rows' keys (the grid's and `--by`'s), a key the grid lacks valued as the first run has
    # it: else no planned label matches a tested one and Holm counts each comparison twice
    keys, grid_keys = [k for k, _ in first.variant], variant_keys(runs_dir)
    base |= {k: v for k, v in first.variant if k not in grid_keys}
    planned: dict[tuple, set[str]] = {}
    for point in (p for g in grids for p in expand(g)):
        value = base | {k: _as_recorded(v, base.get(k)) for k, v in point.items()}
        variant = tuple((k, str(value.get(k))) for k in keys)
        config = (value["method.name"], value["method.rank"], value["method.rho"], variant)
        tasks = planned.setdefault(config, set())  # none known: runs named by their datasets
        if value.get("task"):  # "" where the runs name their datasets
            tasks.add(str(value["task"]))
    return planned


def _as_recorded(value: Any, recorded: Any) -> Any:
    """A grid value as a run's config records it: YAML reads `1e-3` as text and `0` as an int
    where the config's field (as `recorded`, a run's value, shows) is a float."""
    if isinstance(recorded, float) and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def planned_tasks(runs_dirs: list[Path]) -> set[str]:
    """The tasks the sweeps that made `runs_dirs` plan (their grids' and `set`'s `task`),
    finished or not."""
    out = set()
    for path in (d / SWEEP_FILE for d in runs_dirs):
        if path.is_file():
            sweep = read_yaml(path)
            out |= {str(t) for g in checked_grids(sweep, path) for t in g.get("task", [])}
            if "task" in (sweep.get("set") or {}):
                out.add(str(sweep["set"]["task"]))
    return out


def variant_keys(runs_dir: Path) -> list[str]:
    """The grid keys of the sweep that made `runs_dir` (if one did) that tell configurations of
    the same method apart: an lr or precision grid gives one configuration per value."""
    return sorted({k for g in saved_grids(runs_dir) for k in g} - NOT_VARIANT)


def saved_grids(runs_dir: Path) -> list[dict[str, list[Any]]]:
    """The grids of the sweep file a sweep saved in `runs_dir` (none without one), checked."""
    path = runs_dir / SWEEP_FILE
    return checked_grids(read_yaml(path), path) if path.is_file() else []


def checked_grids(sweep: dict[str, Any], path: Path) -> list[dict[str, list[Any]]]:
    """The grids of the sweep file `sweep` read from `path`, refused where damaged."""
    grids = as_grids(sweep.get("grid") or {})
    if not all(isinstance(g, dict) and all(isinstance(v, list) for v in g.values()) for g in grids):
        raise UserError(f"{path}'s grid is not a map of keys to lists of values (or a list of "
                        "such maps); restore the sweep file the sweep saved there")  # fmt: skip
    return grids
