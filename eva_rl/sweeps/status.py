"""Where a sweep stands, read from its files: a run is finished when its summary is there (as the
sweep itself decides), started when its folder is there without one (running, or stopped and
resumable), failed when the index says its last attempt failed, blocked while the run it starts
from (`from_run`) has not finished, else waiting (before the sweep starts, every run of its plan);
a waiting run that `reuse` would copy is counted apart. How long the rest should take comes from
the finished runs' pace (their summaries' wall time, a reusable run's from its source), method by
method: a DoRA run takes about twice a LoRA run, so one pace for all would misjudge a sweep whose
methods run in blocks. Each method's pace is that of its last `RECENT` runs to finish: runs
slowed by other work on the machine earlier (or sped up by a quieter one) stop counting once
newer runs show the machine's present pace."""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from eva_rl.config import read_yaml
from eva_rl.results import SUMMARY_FILE
from eva_rl.sweeps.config import (
    BASE_FILE,
    BASELINE_DIR,
    SweepConfig,
    check_same_sweep,
    read_index,
)

RECENT = 5  # finished runs per method whose median wall time is its pace
LOOP_BAR = re.compile(r"^(?:train|online)\s+(\d+)/(\d+)")  # the run's loop: done/total


@dataclass
class SweepStatus:
    out: Path
    done: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # run -> its unfinished `from_run`
    baselines: tuple[int, int] = (0, 0)  # finished, planned
    methods: dict[str, str] = field(default_factory=dict)  # run -> its grid's method, if any
    reused: dict[str, Path] = field(default_factory=dict)  # waiting run -> a finished copy
    where: dict[str, str] = field(default_factory=dict)  # started run -> its log's last bar

    @property
    def total(self) -> int:
        return sum(map(len, (self.done, self.started, self.failed, self.waiting, self.blocked)))

    @cached_property
    def seconds(self) -> dict[str, float]:
        """The finished runs' wall times, read from their summaries (only when asked), in the
        order they finished (their summaries' modification times)."""
        found = []
        sources = {**{n: self.out / n for n in self.done}, **self.reused}
        for name, directory in sources.items():
            with contextlib.suppress(OSError, ValueError, KeyError):  # the pace is an estimate
                path = directory / SUMMARY_FILE
                seconds = float(json.loads(path.read_text())["wall_seconds"])
                found.append((path.stat().st_mtime, name, seconds))
        return {name: seconds for _, name, seconds in sorted(found)}

    @property
    def median_seconds(self) -> float | None:
        return statistics.median(self.seconds.values()) if self.seconds else None

    def share_left(self, name: str) -> float:
        """How much of a run is still to do: for a started run whose log's last bar is its
        training or online loop's, the part of it not done (a run near its end is not a whole
        run); else all of it (before its loop, or while it evaluates: an estimate)."""
        found = LOOP_BAR.match(self.where.get(name, "")) if name in self.started else None
        if found is None or int(found[2]) == 0:
            return 1.0
        return max(0.0, 1.0 - int(found[1]) / int(found[2]))

    def hours_left(self, parallel: int) -> float | None:
        """The unfinished runs, `parallel` at a time, each at the median time of its method's
        last `RECENT` finished runs (of all finished runs where its method has none yet), a
        started one at the share of it left (`share_left`)."""
        if self.median_seconds is None:
            return None
        paces: dict[str | None, list[float]] = {}
        for name, seconds in self.seconds.items():
            paces.setdefault(self.methods.get(name), []).append(seconds)
        median = {method: statistics.median(times[-RECENT:]) for method, times in paces.items()}
        unfinished = [*self.started, *self.failed, *self.blocked,
                      *set(self.waiting) - set(self.reused)]  # fmt: skip
        total = sum(median.get(self.methods.get(n), self.median_seconds) * self.share_left(n)
                    for n in unfinished)  # fmt: skip
        return total / max(1, parallel) / 3600

    def describe(self, parallel: int, blind: bool = False) -> str:
        """For a person: the counts, the failed runs, where the running runs are (`blind`:
        without the values their bars report), the time left (where it can be estimated)."""
        parts = [f"{len(self.done)} of {self.total} runs finished"]
        blocked = "waiting for the run they start from to finish"
        for names, label in ((self.started, "started (running, or stopped and resumable)"),
                             (self.failed, "failed"), (self.waiting, "waiting"),
                             (self.blocked, blocked)):  # fmt: skip
            if names:
                parts.append(f"{len(names)} {label}")
            if names and names is self.waiting and self.reused:  # the reused are waiting runs
                parts[-1] += (f" ({len(self.reused)} of them finished in a `reuse` sweep: "
                              "copied when the sweep (re)starts, not run again)")  # fmt: skip
        if self.baselines[1]:
            parts.append(f"{self.baselines[0]} of {self.baselines[1]} baselines")
        text = f"{self.out}: " + ", ".join(parts)
        if self.failed:
            shown = ", ".join(self.failed[:3]) + ("..." if len(self.failed) > 3 else "")
            text += f"\nfailed: {shown} (logs in {self.out / '_logs'}); running the sweep again "
            text += "retries them"
        for name, bar in self.where.items():
            text += f"\n  {name}: {POSTFIX.sub('', bar) if blind else bar}"
        hours = self.hours_left(parallel)
        if hours is not None and len(self.done) + len(self.reused) < self.total:
            runs = f"{parallel} run{'s' * (parallel > 1)}"
            text += (f"\nabout {hours:.1f} h left at {runs} at a time, each run at the median "
                     f"time of its method's last {RECENT} finished runs (a method with none yet "
                     f"at {self.median_seconds:.0f} s, the median of all; a started run at the "
                     "share of its bar left)")  # fmt: skip
        return text


def sweep_status(out: str | os.PathLike) -> SweepStatus | None:
    """The fine-tuning runs of the sweep at `out` (baselines apart); None before it has an index."""
    out = Path(out)
    index = read_index(out)
    if index is None:
        return None
    status, baselines, finished = SweepStatus(out), 0, 0
    for name, entry in index.items():
        if name.startswith(f"{BASELINE_DIR}."):
            baselines += 1
            finished += (out / BASELINE_DIR / f"{name[len(BASELINE_DIR) + 1 :]}.json").is_file()
            continue
        method = entry.get("overrides", {}).get("method.name")
        if method is not None:
            status.methods[name] = method
        if (out / name / SUMMARY_FILE).is_file():
            status.done.append(name)
        elif entry["status"] == "failed":
            status.failed.append(name)
        elif (out / name).is_dir():
            status.started.append(name)
            if bar := last_bar(out / "_logs" / f"{name}.log"):
                status.where[name] = bar
        elif "waits_for" in entry and not (Path(entry["waits_for"]) / SUMMARY_FILE).is_file():
            status.blocked[name] = entry["waits_for"]
        else:
            status.waiting.append(name)
    status.baselines = (finished, baselines)
    return status


# a bar's reported values (`, score=0.43`, `, loss=0.0123`): what a blind status leaves out, so
# that a pre-registered study's progress can be watched without looking at its outcomes
POSTFIX = re.compile(r",\s*\w+=[^,\]]*")
BAR = re.compile(r"^(?P<desc>[^:|]+):\s+\d+%\|[^|]*\|\s*(?P<rest>\S.*)$")


def last_bar(log: Path, tail: int = 4096) -> str | None:
    """Where a run's last progress bar stood, from its log (`executors.BarLog`): `train
    6300/10000 [40:12<23:30, 2.61step/s, loss=0.0123]`; None without a bar."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            lines = re.split(r"[\r\n]", f.read().decode("utf-8", "replace"))
    except OSError:
        return None
    for line in reversed(lines):
        if match := BAR.match(line.strip()):
            return f"{match['desc'].strip()} {match['rest']}"
    return None


def planned_status(cfg: SweepConfig) -> SweepStatus:
    """`sweep_status` of the sweep's out or, before it starts, its plan with every run waiting
    (or blocked, on its `from_run`); either way the waiting runs `reuse` would copy are marked."""
    from eva_rl.sweeps.plan import plan, reusable

    out = Path(cfg.out)
    check_same_sweep(cfg)  # a status of the sweep that is there, not of another file's
    snapshot = out / BASE_FILE  # a started sweep's runs are planned from its copy of the base
    # (which checks every run's config) without checking each run's checkpoint and datasets:
    # a status runs nothing, and may be asked on a machine that lacks them
    runs = plan(cfg, read_yaml(snapshot) if snapshot.is_file() else None, inputs=False)
    status = sweep_status(out)
    if status is not None and not (cfg.reuse and status.waiting):
        return status
    if status is None:
        planned = [r for r in runs if not r.baseline]
        status = SweepStatus(out, waiting=[r.name for r in planned if not r.waits_for],
                             blocked={r.name: r.waits_for for r in planned if r.waits_for},
                             baselines=(0, sum(r.baseline for r in runs)))  # fmt: skip
        status.methods = {r.name: r.overrides["method.name"] for r in runs
                          if "method.name" in r.overrides}  # fmt: skip
    waiting = set(status.waiting)
    status.reused = reusable([r for r in runs if r.name in waiting], cfg.reuse)
    return status
