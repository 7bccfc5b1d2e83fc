"""Finished runs as rows: every `summary.json` under a runs directory (any eva_rl version), and
the sweep's baseline evaluations of the base agent."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eva_rl.config import flatten, read_yaml
from eva_rl.errors import UserError
from eva_rl.results import EvalResult, RunSummary
from eva_rl.stats import curve_auc
from eva_rl.sweeps import BASELINE_DIR, SWEEP_FILE

# sweep grid keys that are not a variant: the task, the seed and a configuration's own method
NOT_VARIANT = {"task", "seed", "method.name", "method.rank", "method.rho"}


@dataclass
class Row:
    """One finished run, flattened for tables; `curve` keeps every evaluation's metrics."""

    task: str
    method: str
    rank: int
    rho: float
    seed: int
    steps: int
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
    run: str  # path relative to the runs directory
    curve: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    ranks: dict[str, int] = field(default_factory=dict)
    summary: RunSummary | None = None

    CSV = (
        "task", "method", "rank", "rho", "seed", "steps", "score_name", "score", "success_final",
        "success_any", "ret", "best_score", "auc", "heldout_loss", "final_loss",
        "trainable_parameters", "total_rank", "gradient_signal", "collector_seconds",
        "train_seconds", "wall_seconds", "precision", "variant", "run",
    )  # fmt: skip

    def csv_row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.CSV} | {"variant": variant_text(self.variant)}


def variant_text(variant: tuple[tuple[str, str], ...]) -> str:
    """`precision=bf16,optim.lr=0.001`: a variant as a sweep's grid spells it."""
    return ",".join(f"{k}={v}" for k, v in variant)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}); remove it or rerun what wrote it") from None


def read_baselines(runs_dir: str | os.PathLike) -> dict[str, EvalResult]:
    """Task -> the base agent's evaluation written by the sweep (empty if there is none)."""
    out = {}
    for path in sorted(Path(runs_dir).glob(f"{BASELINE_DIR}/*.json")):
        result = EvalResult.from_dict(read_json(path))
        task = result.config.get("task") or ",".join(result.config.get("datasets", []))
        out[task] = result
    return out


def collect_runs(runs_dir: str | os.PathLike, baselines: dict[str, EvalResult] | None = None):
    """One row per finished finetune run (a `summary.json`) anywhere under `runs_dir`."""
    runs_dir = Path(runs_dir)
    paths = sorted(
        p  # not in hidden folders: a sweep stages a run it copies (`reuse`) in one
        for p in runs_dir.rglob("summary.json")
        if not any(part.startswith(".") for part in p.relative_to(runs_dir).parts)
    )
    if not paths:
        raise UserError(f"no finished runs (summary.json) under {runs_dir}; check the path")
    baselines = read_baselines(runs_dir) if baselines is None else baselines
    keys = variant_keys(runs_dir)
    rows = []
    for path in paths:
        try:
            s = RunSummary.from_dict(read_json(path))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path} is not a run summary ({e!r}); remove it") from None
        final = s.final
        curve = [(p.step, p.metrics) for p in s.eval]
        points = [(step, m["score"]) for step, m in curve if "score" in m]
        base = baselines.get(s.label)
        if base is not None and points and points[0][0] > 0:
            points.insert(0, (0, base.mean("score")))
        rows.append(
            Row(
                task=s.label,
                method=s.method,
                rank=s.rank,
                rho=s.rho,
                seed=s.seed,
                steps=s.steps,
                score_name=s.score_name,
                score=final.get("score"),
                success_final=final.get("success_final"),
                success_any=final.get("success_any"),
                ret=final.get("return"),
                best_score=s.best(),
                auc=curve_auc(points),
                heldout_loss=final.get("heldout_loss"),
                final_loss=s.final_loss,
                trainable_parameters=s.trainable_parameters,
                total_rank=s.total_rank,
                gradient_signal=s.gradient_signal,
                collector_seconds=s.collector_seconds,
                train_seconds=s.train_seconds,
                wall_seconds=s.wall_seconds,
                precision=s.precision,
                variant=tuple((k, str(flatten(s.config).get(k))) for k in keys),
                run=str(path.parent.relative_to(runs_dir)),
                curve=curve,
                ranks=s.ranks,
                summary=s,
            )
        )
    if len({r.score_name for r in rows}) > 1:
        names = sorted({r.score_name for r in rows})
        raise UserError(f"the runs report different scores ({', '.join(names)}); report apart")
    return rows


def planned_configs(runs_dir: Path, rows: list[Row]) -> list[tuple[str, int, float, tuple]]:
    """The (method, rank, rho, variant) configurations the sweep that made `runs_dir` plans,
    finished or not: its grid points, the rest of each config as the finished runs have it.
    Empty without a sweep file."""
    from eva_rl.sweeps.plan import expand

    path = runs_dir / SWEEP_FILE
    if not path.is_file() or not rows:
        return []
    grid = read_yaml(path).get("grid") or {}
    first = rows[0]
    base = {"method.name": first.method, "method.rank": first.rank, "method.rho": first.rho}
    base |= flatten(first.summary.config)
    keys = variant_keys(runs_dir)
    planned = set()
    for point in (p for g in (grid if isinstance(grid, list) else [grid]) for p in expand(g)):
        value = {**base, **point}
        variant = tuple((k, str(value.get(k))) for k in keys)
        planned.add((value["method.name"], value["method.rank"], value["method.rho"], variant))
    return sorted(planned, key=str)


def variant_keys(runs_dir: Path) -> list[str]:
    """The grid keys of the sweep that made `runs_dir` (if one did) that tell configurations of
    the same method apart: an lr or precision grid gives one configuration per value."""
    path = runs_dir / SWEEP_FILE
    if not path.is_file():
        return []
    grid = read_yaml(path).get("grid") or {}
    grids = grid if isinstance(grid, list) else [grid]
    return sorted({k for g in grids for k in g} - NOT_VARIANT)
