"""TensorBoard in and out: a run's scalars, and method-level runs that average many runs.

`write_aggregates` writes, beside the per-run logs, one TensorBoard run per configuration
averaged over tasks and seeds (`<out>/mean/<config>`) and one per task (`<out>/<task>/<config>`):
the evaluation metrics of the summaries at every evaluated step, and the training loss of the
runs' own event files at every logged step. Names are short and sort in the report's order
(`eva_r08_rho2`), so TensorBoard's Time Series page shows one curve per method. The event
files carry no wall time, host or process id: a report regenerated from the same runs writes
the same bytes, so committed reports do not churn."""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

import numpy as np

from eva_rl.errors import UserError
from eva_rl.io import atomic_write_bytes

EVENT_FILE = "events.out.tfevents.0000000000.eva-rl-report"


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


def write_scalars(log_dir: Path, scalars: list[tuple[str, float, int]]) -> None:
    """One event file of (tag, value, step) scalars, with wall time 0 and a fixed name: the
    same scalars give the same bytes (SummaryWriter stamps the time, host and pid)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter
    from torch.utils.tensorboard.summary import scalar

    buffer = io.BytesIO()
    records = RecordWriter(buffer)
    records.write(Event(wall_time=0.0, file_version="brain.Event:2").SerializeToString())
    for tag, value, step in scalars:
        event = Event(wall_time=0.0, step=step, summary=scalar(tag, value))
        records.write(event.SerializeToString())
    log_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(log_dir / EVENT_FILE, buffer.getvalue())


def write_aggregates(stats, out: Path) -> list[str]:
    """Write the method-level TensorBoard runs under `out` (online configurations' training
    loss, against updates, in `<run>/updates`); returns their names."""
    losses = {}
    for s in stats:
        for r in s.rows:
            tb = r.path / "tb"
            if tb.is_dir():
                losses[r.run] = dict(read_scalars(tb).get("train/loss", []))
    written = []
    for s in stats:
        groups = {"mean": s.rows} | {t: [r for r in s.rows if r.task == t] for t in s.tasks}
        for group, rows in groups.items():
            name = f"{group}/{run_name(s.label)}"
            scalars = []
            for metric in sorted({m for r in rows for _, point in r.curve for m in point}):
                curves = [{st: p[metric] for st, p in r.curve if metric in p} for r in rows]
                scalars += [(f"eval/{metric}", v, st) for st, v in _means(curves).items()]
            loss = [losses[r.run] for r in rows if losses.get(r.run)]
            loss_scalars = [("train/loss", v, st) for st, v in _means(loss).items()]
            if s.rows[0].step_unit == "env_steps" and loss_scalars:
                # eval/* against env steps, the loss against updates: a run of its own, as in
                # an online run's tb/ and tb/env_steps (one run's steps are one axis)
                write_scalars(out / name / "updates", loss_scalars)
                written.append(f"{name}/updates")
            else:
                scalars += loss_scalars
            scalars.append(("runs", len(rows), 0))
            write_scalars(out / name, scalars)
            written.append(name)
    return written
