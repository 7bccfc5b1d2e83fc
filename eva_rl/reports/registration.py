"""Whether a hypotheses file was registered before its data: the file's last commit against
the wall times in the TensorBoard logs of the runs its hypotheses test. A report states what it
finds instead of asserting "written before the runs", so a reader need not take it on trust.

The check is only as good as the clocks and the history: commit times come from git (a shallow
clone has none to give), run times from the machines that ran them; an amended or rebased
commit moves later, which errs on the side of "not pre-registered"."""

from __future__ import annotations

import datetime
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Registration:
    path: str
    commit: str | None = None  # the last commit that changed the file
    committed: float | None = None  # its committer time (seconds since the epoch)
    unknown: str | None = None  # why the file's commit cannot be told
    runs: int = 0  # tested runs with TensorBoard logs
    first_start: float | None = None  # the earliest event of any tested run
    first_finish: float | None = None  # the earliest last event of a tested run

    @property
    def holds(self) -> bool | None:
        """Committed before any tested run finished (the project's definition); None: unknown."""
        if self.unknown or self.committed is None or self.first_finish is None:
            return None
        return self.committed < self.first_finish

    def sentence(self, markdown: bool = True) -> str:
        """What the check found, for the README (markdown) or a terminal (plain)."""
        code, bold = ("`", "**") if markdown else ("", "")
        where = f"{code}{self.path}{code}"
        if self.unknown:
            return f"Pre-registration of {where} cannot be checked here: {self.unknown}."
        if self.first_finish is None:
            return (f"{where} was last changed by commit {self.commit[:7]} "
                    f"({_utc(self.committed)}); no tested run has TensorBoard logs to compare "
                    "with, so its pre-registration cannot be checked.")  # fmt: skip
        when = (f"{where} was last changed by commit {self.commit[:7]} ({_utc(self.committed)}); "
                f"the {self.runs} runs its hypotheses test started from "
                f"{_utc(self.first_start)} and the first finished at {_utc(self.first_finish)} "
                "(their TensorBoard wall times)")  # fmt: skip
        if not self.holds:
            return (f"{bold}Not pre-registered{bold}: {when}, so the file was changed after a "
                    "run it tests had finished; read its tests as exploratory.")  # fmt: skip
        before = "any of them started" if self.committed < self.first_start else (
            "any of them finished (some had started)")  # fmt: skip
        return f"Pre-registered: {when}; committed before {before}."


def check_registration(path: str | Path, run_dirs: list[Path]) -> Registration:
    """`path`'s last commit (with its uncommitted changes refused) against `run_dirs`' logs."""
    out = Registration(str(path))
    out.commit, out.committed, out.unknown = _last_commit(Path(path))
    times = [t for t in (_wall_times(d) for d in run_dirs) if t is not None]
    if times:
        out.runs = len(times)
        out.first_start = min(start for start, _ in times)
        out.first_finish = min(finish for _, finish in times)
    return out


def _last_commit(path: Path) -> tuple[str | None, float | None, str | None]:
    """(sha, committer time, None), or (None, None, why not)."""
    folder, name = path.resolve().parent, path.resolve().name

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, timeout=30, check=True)  # fmt: skip
        return done.stdout.strip()

    try:
        if git("rev-parse", "--is-shallow-repository") == "true":
            return None, None, "a shallow clone lacks the file's history (git fetch --unshallow)"
        status = git("status", "--porcelain", "--", name)
        if status.startswith("??"):
            return None, None, "the file was never committed"
        if status:
            return None, None, "the file has changes that are not committed"
        last = git("log", "-1", "--format=%H %ct", "--", name)
    except FileNotFoundError:
        return None, None, "git is not installed"
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None, None, "the file is not in a git repository"
    if not last:
        return None, None, "the file was never committed"
    sha, seconds = last.split()
    return sha, float(seconds), None


def _wall_times(run_dir: Path) -> tuple[float, float] | None:
    """The first and last wall time of a run's TensorBoard events (every file: a resumed run
    writes several), None without any."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    first = last = None
    for events in sorted((run_dir / "tb").rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(events)).Load():
            first = event.wall_time if first is None else min(first, event.wall_time)
            last = event.wall_time if last is None else max(last, event.wall_time)
    return None if first is None else (first, last)


def _utc(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")
