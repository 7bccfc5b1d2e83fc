"""Aggregation of finished runs, as pure functions: per configuration (method, rank, rho) the
score per task and over tasks x seeds with stratified-bootstrap intervals, and the learning
curves (`eva_rl.reports.paired` compares configurations)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from eva_rl.adapters.methods import METHODS
from eva_rl.errors import UserError
from eva_rl.reports.runs import Row, variant_text
from eva_rl.results import mean_or_none
from eva_rl.stats import (
    interval,
    t_interval,
)


def config_label(method: str, rank: int, rho: float, variant=()) -> str:
    """`eva r8 rho2 precision=bf16`: the rank only where an adapter has one, rho only where it
    matters, then the values of the sweep's other grid keys."""
    spec = METHODS.get(method)
    if spec is not None and spec.trains_full_model:
        label = method
    else:
        label = f"{method} r{rank}"
        label += f" rho{rho:g}" if spec is not None and spec.uses_rho else ""
    return label + (f" {variant_text(variant)}" if variant else "")


def row_label(row: Row) -> str:
    return config_label(row.method, row.rank, row.rho, row.variant)


def config_of(row: Row) -> tuple:
    """What makes a configuration: (method, rank, rho, variant)."""
    return (row.method, row.rank, row.rho, row.variant)


def config_key(row: Row) -> tuple:
    """Sort order: registry order of methods, then rank and rho numerically, then variant."""
    order = list(METHODS)
    method = order.index(row.method) if row.method in order else len(order)
    return (method, row.rank, row.rho, row.variant)


def finished_seeds(
    rows: list[Row], planned: dict[tuple, set[str]] | None = None
) -> tuple[list[Row], list[Row]]:
    """For a sweep still running: per configuration, the runs of the seeds it has finished on
    every task of the report that the sweep plans for it (`planned`, configuration -> tasks;
    without it, every task of the report): the bootstrap and the pairing need whole seeds.
    Returns (kept, left out)."""
    tasks = {r.task for r in rows}
    done: dict[tuple, set[str]] = {}
    for r in rows:
        done.setdefault((config_of(r), r.seed), set()).add(r.task)

    def whole(r: Row) -> bool:
        return done[(config_of(r), r.seed)] == tasks & ((planned or {}).get(config_of(r)) or tasks)

    return [r for r in rows if whole(r)], [r for r in rows if not whole(r)]


@dataclass
class ConfigStats:
    method: str
    rank: int
    rho: float
    variant: tuple[tuple[str, str], ...]
    label: str
    rows: list[Row]
    tasks: list[str]
    seeds: int
    per_task: dict[str, tuple[float, float, float]]  # task -> score mean over seeds, 95% CI
    mean: tuple[float, float, float]  # over tasks x seeds, stratified-bootstrap 95% CI
    iqm: tuple[float, float, float]
    means: dict[str, float | None] = field(default_factory=dict)  # other metrics, plain means
    # the mean of AUC and losses over tasks x seeds with its 95% stratified-bootstrap interval,
    # where every run has the metric
    intervals: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def matrix(self, tasks: list[str], seeds: list[int], metric: str = "score") -> np.ndarray:
        """A metric (default the score) as a (seeds x tasks) matrix for the (task, seed) grid."""
        by = {(r.task, r.seed): getattr(r, metric) for r in self.rows}
        return np.array([[by[(t, s)] for t in tasks] for s in seeds], dtype=np.float64)


@dataclass
class CurvePoint:
    """One configuration's score on one task at one evaluation: mean over its runs (seeds) with
    a 95% t-interval; `runs` 0: the base agent's score, before fine-tuning."""

    config: str
    task: str
    step: int
    runs: int
    mean: float
    low: float
    high: float


def curves(stats: list[ConfigStats], base: dict[str, float]) -> list[CurvePoint]:
    """Every configuration's score curve per task, a point per evaluation step over the runs
    that evaluated there; where they did not evaluate at step 0, the base agent's score on that
    task (`base`, task -> score) starts the curve, with no width and `runs` 0."""
    out = []
    for s in stats:
        for task in s.tasks:
            runs = [r for r in s.rows if r.task == task]
            by_step: dict[int, list[float]] = {}
            for r in runs:
                for step, metrics in r.curve:
                    if "score" in metrics:
                        by_step.setdefault(step, []).append(metrics["score"])
            if task in base and 0 not in by_step:
                out.append(CurvePoint(s.label, task, 0, 0, *[base[task]] * 3))
            for step in sorted(by_step):
                out.append(CurvePoint(s.label, task, step, len(by_step[step]),
                                      *t_interval(by_step[step])))  # fmt: skip
    return out


def measured_after(row: Row) -> tuple[str, int | None]:
    """What a run's final score measures: its budget (updates, or env steps online) and the
    final evaluation's episodes."""
    config = row.summary.config
    evaluation = config.get("eval") or {}
    episodes = evaluation.get("final_episodes") or evaluation.get("episodes")
    if row.step_unit == "env_steps":
        return f"{config.get('env_steps')} env steps", episodes
    return f"{(config.get('loop') or {}).get('steps')} updates", episodes


def aggregate(rows: list[Row]) -> list[ConfigStats]:
    """One entry per (method, rank, rho), in registry then numeric order. Within a
    configuration every task needs the same seeds (the bootstrap resamples seeds per task)."""
    groups: dict[tuple, list[Row]] = {}
    for row in sorted(rows, key=config_key):
        groups.setdefault(config_of(row), []).append(row)
    out = []
    for (method, rank, rho, variant), group in groups.items():
        label = row_label(group[0])
        if any(r.score is None for r in group):
            raise UserError(f"{label} has runs without a final evaluation; finish or remove them")
        for r in group:
            if not np.isfinite(r.score):
                raise UserError(f"the run {r.run} has score {r.score} (did it diverge?); paired "
                                "tests need finite scores: rerun it or leave it out")  # fmt: skip
        seen: dict[tuple[str, int], str] = {}
        for r in group:
            if (twin := seen.setdefault((r.task, r.seed), r.run)) != r.run:
                raise UserError(
                    f"{twin} and {r.run} are both {label} on {r.task}, seed {r.seed}; remove "
                    "one, or tell them apart with --by KEY (a config key where they differ)"
                )
        budgets: dict[tuple, str] = {}
        for r in group:
            budgets.setdefault(measured_after(r), r.run)
        if len(budgets) > 1:  # one configuration's scores must measure the same thing
            (a, run_a), (b, run_b) = list(budgets.items())[:2]
            raise UserError(
                f"{label}'s runs end at different budgets: {run_a} after {a[0]} (final "
                f"evaluation on {a[1]} episodes), {run_b} after {b[0]} ({b[1]}); report them "
                "apart with --by KEY (loop.steps, env_steps, eval.final_episodes) or remove one"
            )
        tasks = sorted({r.task for r in group})
        seeds = {t: sorted(r.seed for r in group if r.task == t) for t in tasks}
        if len({tuple(s) for s in seeds.values()}) != 1:
            raise UserError(
                f"{label} has different seeds per task ({seeds}); finish or remove the missing "
                "runs, or report the seeds finished on every task with --partial"
            )
        stats = ConfigStats(method, rank, rho, variant, label, group, tasks, len(seeds[tasks[0]]),
                            {}, (0, 0, 0), (0, 0, 0))  # fmt: skip
        matrix = stats.matrix(tasks, seeds[tasks[0]])
        stats.per_task = {t: interval(matrix[:, [i]]) for i, t in enumerate(tasks)}
        stats.mean, stats.iqm = interval(matrix, "mean"), interval(matrix, "iqm")
        for key in (
            "success_final",
            "success_any",
            "ret",
            "auc",
            "heldout_loss",
            "final_loss",
            "trainable_parameters",
            "gradient_signal",
            "wall_seconds",
            "best_score",
        ):
            stats.means[key] = mean_or_none(getattr(r, key) for r in group)  # fmt: skip
        for key in ("auc", "heldout_loss", "final_loss"):
            if all(getattr(r, key) is not None for r in group):
                stats.intervals[key] = interval(stats.matrix(tasks, seeds[tasks[0]], key))
        out.append(stats)
    return out
