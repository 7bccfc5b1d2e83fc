"""TensorBoard in and out: a run's scalars, and method-level runs that average many runs.

`write_aggregates` writes, beside the per-run logs, one TensorBoard run per configuration
averaged over tasks and seeds (`<out>/mean/<config>`) and one per task (`<out>/<task>/<config>`):
the evaluation metrics of the summaries at every evaluated step, and the training loss of the
runs' own event files at every logged step. Names are short and sort in the report's order
(`eva_r08_rho2`), so TensorBoard's Time Series page shows one curve per method."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from eva_rl.errors import UserError


def read_scalars(log_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a TensorBoard log directory -> [(step, value), ...] (last value per
    step wins, as TensorBoard shows after a resume)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # resumed runs: "out of order"
    if not Path(log_dir).is_dir():
        raise UserError(f"no TensorBoard log directory at {log_dir}")
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        out[tag] = sorted({e.step: e.value for e in acc.Scalars(tag)}.items())
    return out


def run_name(label: str) -> str:
    """`eva r8 rho2` -> `eva_r08_rho2`: TensorBoard sorts names as text."""
    label = re.sub(r"\br(\d)\b", r"r0\1", label)
    return label.replace(" ", "_")


def _means(series: list[dict[int, float]]) -> dict[int, float]:
    """Per step, the mean over the series that have that step."""
    steps = sorted({s for one in series for s in one})
    return {s: float(np.mean([one[s] for one in series if s in one])) for s in steps}


def write_aggregates(stats, runs_dir: Path, out: Path) -> list[str]:
    """Write the method-level TensorBoard runs under `out`; returns their names."""
    from torch.utils.tensorboard import SummaryWriter

    losses = {}
    for s in stats:
        for r in s.rows:
            tb = runs_dir / r.run / "tb"
            if tb.is_dir():
                losses[r.run] = dict(read_scalars(tb).get("train/loss", []))
    written = []
    for s in stats:
        groups = {"mean": s.rows} | {t: [r for r in s.rows if r.task == t] for t in s.tasks}
        for group, rows in groups.items():
            name = f"{group}/{run_name(s.label)}"
            metrics = sorted({m for r in rows for _, point in r.curve for m in point})
            with SummaryWriter(out / name) as writer:
                for metric in metrics:
                    curves = [{st: p[metric] for st, p in r.curve if metric in p} for r in rows]
                    for step, value in _means(curves).items():
                        writer.add_scalar(f"eval/{metric}", value, step)
                loss = [losses[r.run] for r in rows if losses.get(r.run)]
                for step, value in _means(loss).items():
                    writer.add_scalar("train/loss", value, step)
                writer.add_scalar("runs", len(rows), 0)
            written.append(name)
    return written
