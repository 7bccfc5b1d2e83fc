"""Reports from runs' own outputs: `write_report` turns every finished fine-tuning run under a
directory (and the sweep's baseline evaluations) into CSVs (runs, learning-curve points), tables
with bootstrap intervals and paired tests (README.md), plots and method-level TensorBoard runs;
`plot_curve` draws one run. Stages: `runs` (read) -> `aggregate` (pure statistics) -> `plots` /
`render` / `tensorboard` (write)."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Sequence
from pathlib import Path

from eva_rl import ownership
from eva_rl.adapters.methods import REFERENCE
from eva_rl.errors import UserError
from eva_rl.io import atomic_write_text, check_writable
from eva_rl.reports import plots, render
from eva_rl.reports.aggregate import CurvePoint, aggregate, curves, finished_seeds
from eva_rl.reports.hypotheses import evaluate_hypotheses, load_hypotheses, tested_runs
from eva_rl.reports.paired import compare
from eva_rl.reports.registration import check_registration
from eva_rl.reports.runs import (
    Row,
    as_dirs,
    collect_runs,
    planned_configs,
    planned_tasks,
    planned_tasks_of,
    read_baselines,
)
from eva_rl.reports.tables import configuration_table
from eva_rl.reports.tensorboard import read_scalars, write_aggregates
from eva_rl.results import STEP_UNITS

TENSORBOARD_DIR = "tensorboard"
# what only a report writes: a folder holding one of them holds a report (or someone's files)
REPORT_FILES = ("README.md", "runs.csv", "curves.csv", TENSORBOARD_DIR)
# every figure a report may draw -> its title, in the README's order; forest.png (comparisons)
# and rank_allocation.png (EVA runs) only where it has them: an overwrite removes an earlier
# report's that the new one does not draw
FIGURES = {
    "forest.png": "paired differences against the reference",
    "learning_curves.png": "score vs {unit} per task (mean over seeds, 95% band)",
    "per_task.png": "final score per task, seeds as dots",
    "budget.png": "score, loss and AUC vs trainable parameters",
    "gradient_signal.png": "gradient signal at initialisation",
    "rank_allocation.png": "EVA rank allocation",
}
OUTPUTS = (*REPORT_FILES, *FIGURES)  # all a report writes


def write_report(
    runs_dir: str | os.PathLike | list[str | os.PathLike],
    out: str | os.PathLike,
    command: str,
    overwrite: bool = False,
    tasks: list[str] | None = None,
    reference: str | list[str] = REFERENCE,
    partial: bool = False,
    hypotheses: str | os.PathLike | None = None,
    by: tuple[str, ...] | list[str] = (),
) -> dict:
    """CSV, plots, README.md and method-level TensorBoard runs for every finished run under
    `runs_dir` (one directory or several, e.g. a study and a follow-up; only `tasks`, if given),
    with paired comparisons under each `reference` entry (see `paired.compare`). `by`:
    config keys that split configurations besides the sweeps' grids (`precision`). `partial`
    (a sweep still running) keeps each configuration's seeds finished on every task.
    `hypotheses`: a file of pre-registered hypotheses, tested on every finished run once their
    pairs are complete. A hand-written `notes.md` in `out` is kept and appended to the README."""
    dirs, out = as_dirs(runs_dir), Path(out)
    check_out(out, overwrite, dirs)
    registered = load_hypotheses(hypotheses) if hypotheses is not None else None
    baselines = read_baselines(dirs)
    rows = collect_runs(dirs, baselines, by)
    tested = None
    if registered is not None:  # on every finished run, before any filter below
        registration = check_registration(hypotheses, tested_runs(rows, registered))
        tests = evaluate_hypotheses(rows, registered, planned_tasks(dirs))
        tested = (hypotheses, tests, registration)
    where = " or ".join(str(d) for d in dirs)
    if tasks:
        missing = sorted(set(tasks) - {r.task for r in rows})
        if missing:
            raise UserError(f"no finished runs of {', '.join(missing)} under {where}")
        rows = [r for r in rows if r.task in tasks]
        baselines = {t: b for t, b in baselines.items() if t in tasks}
    left_out = None  # not an interim report
    if partial:  # each configuration's seeds finished on the tasks the sweep plans for it
        planned_tasks_by = planned_tasks_of(dirs[0], rows) if len(dirs) == 1 else None
        rows, left_out = finished_seeds(rows, planned_tasks_by)
        if not rows:
            raise UserError(f"no configuration under {where} has a seed finished on every task")
    stats = aggregate(rows)
    # the comparisons one sweep plans: Holm's family; reports of several sweeps correct over
    # the comparisons they make
    planned = planned_configs(dirs[0], rows) if len(dirs) == 1 else []
    comparisons = compare(stats, reference, planned)
    score = rows[0].score_name
    base = {task: result.mean("score") for task, result in baselines.items()}
    points = curves(stats, base)
    with ownership.staged(out, "report", OUTPUTS) as stage:  # notes.md, runs, others stay
        write_csv(Row.csv_columns(), [r.csv_row() for r in rows], stage / "runs.csv")
        write_csv([f.name for f in dataclasses.fields(CurvePoint)],
                  map(dataclasses.asdict, points), stage / "curves.csv")  # fmt: skip
        figures = write_plots(stats, points, base, baselines, comparisons, stage, score,
                              STEP_UNITS[rows[0].step_unit])  # fmt: skip
        write_aggregates(stats, stage / TENSORBOARD_DIR)
        notes = (out / "notes.md").read_text() if (out / "notes.md").is_file() else ""
        text = render.readme(out.name, command, dirs, rows, stats, comparisons, reference,
                             baselines, figures, notes, left_out, tested)  # fmt: skip
        atomic_write_text(stage / "README.md", text)
    return {
        "runs": len(rows),
        "configs": len(stats),
        "out": out,
        "table": configuration_table(stats, score),
        "comparisons": comparisons,
        "left_out": len(left_out or []),
        "hypotheses": [] if tested is None else tested[1],
        "registration": None if tested is None else tested[2],
    }


def check_out(out: Path, overwrite: bool, dirs: Sequence[Path] = ()) -> None:
    """Write a report only where none is, or over an eva_rl report with `overwrite`; never over
    files of the same names that eva_rl did not write, nor into a folder of someone else's
    (one eva_rl did not make and that holds more than a hand-written `notes.md` and the runs,
    `dirs`, or other eva_rl folders: a report there would replace its figures)."""
    ours = [f for f in REPORT_FILES if (out / f).exists()]
    made = ownership.owned(out, "report") or _older_report(out)
    if ours and not made:
        raise UserError(
            f"{out} holds {ours[0]}, which eva-rl did not write (no {ownership.MARKER} marker); "
            "choose another --out"
        )
    if ours and not overwrite:
        raise UserError(f"{out} already holds a report; pass --overwrite or choose another --out")
    check_writable(out, directory=True)
    other = ownership.made_for(out)
    if out.is_dir() and not made and other is not None:
        raise UserError(f"{out} is an eva-rl {other} folder, so a report will not write into it; "
                        "choose another --out")  # fmt: skip
    if out.is_dir() and not made:
        inputs = {d.resolve() for d in dirs}
        foreign = sorted(e.name for e in out.iterdir() if not _report_input(e, inputs))
        if foreign:
            raise UserError(
                f"{out} exists and was not made by eva-rl (no {ownership.MARKER} marker; it holds "
                f"{foreign[0]}), so a report will not write into it; choose a new or empty --out "
                "(a notes.md there is kept and appended to the README)"
            )
    check_writable(out.parent / f".{out.name}.report", directory=True)


def _report_input(entry: Path, runs: set[Path]) -> bool:
    """What a folder may hold before its first report: the hand-written `notes.md`, the runs
    reported on, other eva_rl folders (a sweep, an export)."""
    if entry.name == "notes.md":
        return entry.is_file()
    return entry.is_dir() and (entry.resolve() in runs or ownership.owned(entry))


def _older_report(out: Path) -> bool:
    """A report an eva_rl without markers wrote: its README names the command that made it."""
    readme = out / "README.md"
    return readme.is_file() and "Made by `eva-rl report" in readme.read_text()[:4000]


def write_plots(stats, points, base, baselines, comparisons, out: Path, score: str, unit: str):
    """The report's figures (curves against `unit`: updates or env steps); returns (file,
    title) for each, in the README's order."""
    drawn = ["learning_curves.png", "per_task.png", "budget.png", "gradient_signal.png"]
    plots.learning_curves(stats, points, base, out / drawn[0], score, unit)
    plots.per_task(stats, baselines, out / drawn[1], score)
    plots.budget(stats, out / drawn[2], score, unit)
    plots.gradient_signal(stats, out / drawn[3])
    if comparisons:
        plots.forest(comparisons, out / "forest.png", score)
        drawn.append("forest.png")
    if plots.rank_allocation(stats, out / "rank_allocation.png"):
        drawn.append("rank_allocation.png")
    return [(name, FIGURES[name].format(unit=unit)) for name in FIGURES if name in drawn]


def write_csv(fields, records: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(path, buffer.getvalue())


def plot_curve(run_dir: str | os.PathLike, out: str | os.PathLike, title: str = "") -> None:
    """A pretrain/finetune run's loss and evaluation curves as one PNG."""
    scalars = read_scalars(Path(run_dir) / "tb")
    if "train/loss" not in scalars:
        raise UserError(f"{run_dir} has no train/loss scalars; is it a training run?")
    plots.training_curve(scalars, Path(out), title)
