"""Executors: where a sweep's runs run. `local`: each run in its own spawned process of this
machine (GPU slots shared out when `gpus` is set); `ray`: each run a Ray task. Both take their
runs from a `Feed` (a waiting sweep's blocked runs join it as their starts finish), yield runs
and their results as they finish, and count a run whose worker died as failed."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
import traceback
import warnings
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from eva_rl.errors import UserError
from eva_rl.runtime import cpu_count, quiet_waits, set_threads
from eva_rl.signals import raise_interrupt
from eva_rl.sweeps.baseline import run_baseline
from eva_rl.sweeps.config import SweepConfig
from eva_rl.sweeps.plan import Feed, Run, run_config
from eva_rl.sweeps.stages import runner

POLL_SECONDS = 60.0  # how often a waiting sweep looks for finished `from_run`s


def _run_one(run: Run, threads: int, log: str, device: str | None = None) -> dict[str, Any]:
    """Worker: one run (or baseline evaluation), its output, warnings and progress bars in
    `log` (a bar there moves at most once a minute: `tail` the log, or `sweep --status`)."""
    set_threads(threads)
    started = time.perf_counter()
    with BarLog(log) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        warnings.simplefilter("default")
        try:
            if run.baseline:
                run_baseline(run)
            else:
                runner(run.command)(run_config(run, threads, device), True)
        except Exception:  # reported in the parent; the sweep goes on with the other runs
            traceback.print_exc(file=f)
            return {"ok": False, "seconds": time.perf_counter() - started}
    return {"ok": True, "seconds": time.perf_counter() - started}


class BarLog(io.TextIOWrapper):
    """A run's log file in which a progress bar's redraw (a write starting with a carriage
    return) is kept at most once a minute; the bar's last state before any other output is
    always kept, and that output starts on a line of its own, so the log ends where the run is.
    A redraw is kept without tqdm's trailing blanks: they pad it to the length of tqdm's last
    draw, which the file may not hold."""

    def __init__(self, path: str, every: float = 60.0):
        super().__init__(open(path, "ab"), encoding="utf-8", line_buffering=True)  # noqa: SIM115
        self.every, self.last, self.held, self.in_bar = every, float("-inf"), "", False

    def write(self, text: str) -> int:
        if not text:  # tqdm probes the file with an empty write: not output
            return 0
        if text.startswith("\r") and "\n" not in text:
            self.in_bar, bar = True, text.rstrip(" ")
            if time.monotonic() - self.last < self.every:
                self.held = bar
                return len(text)
            self.last, self.held = time.monotonic(), ""
            super().write(bar)  # line buffering flushes at a carriage return
            return len(text)
        lead = self.held + ("\n" if self.in_bar and not text.startswith(("\n", "\r")) else "")
        super().write(lead + text)
        self.held, self.in_bar = "", False
        return len(text)

    def close(self) -> None:
        if self.in_bar and not self.closed:  # what follows in the file starts a line
            super().write(self.held + "\n")
            self.held, self.in_bar = "", False
        super().close()


def shares(cfg: SweepConfig, cores: list[int], runs: int) -> tuple[int, int]:
    """Parallel runs and threads per run on machines with `cores` cores each: by default one
    run per core and the cores shared out between the runs, no run larger than one machine."""
    workers = min(cfg.workers or sum(cores), max(1, runs))
    return workers, cfg.threads or max(1, min(max(cores), sum(cores) // workers))


def local_shares(cfg: SweepConfig, runs: int) -> tuple[list[str], int, int]:
    """The local executor's GPU slots (none without `gpus`), parallel runs and threads per run
    for `runs` runs on this machine: with GPUs, as many runs as slots unless `workers` says
    fewer."""
    workers, threads = shares(cfg, [cpu_count()], runs)
    if not cfg.gpus:
        return [], workers, threads
    import torch

    slots = gpu_slots(cfg.gpus, torch.cuda.device_count())
    workers = min(workers if cfg.workers else len(slots), len(slots), max(1, runs))
    return slots, workers, cfg.threads or max(1, cpu_count() // workers)


def gpu_slots(gpus_per_run: float, devices: int) -> list[str]:
    """One entry per run that fits at once: `cuda:i` repeated 1/gpus_per_run times per GPU (a
    fraction shares a GPU), or every GPU once per whole-number share."""
    if gpus_per_run <= 0:
        return []
    if devices == 0:
        raise UserError(f"gpus={gpus_per_run:g} per run, but no CUDA device is visible")
    if gpus_per_run <= 1:
        return [f"cuda:{i}" for i in range(devices) for _ in range(int(1 / gpus_per_run))]
    need = int(gpus_per_run)
    if need > devices:
        raise UserError(f"gpus={need} per run, but only {devices} CUDA device(s) are visible")
    return [f"cuda:{i}" for i in range(0, devices - need + 1, need)]


def _child(run: Run, threads: int, log: str, device: str | None, conn) -> None:
    """Entry point of a run's own process: the result goes back through `conn`. The sweep stops
    its runs with SIGTERM (they ignore the terminal's Ctrl-C, which the sweep handles once): the
    run then cleans up as an interrupted finetune does and its log says so."""
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        result = _run_one(run, threads, log, device)
    except KeyboardInterrupt:
        with open(log, "a") as f:
            print("stopped (SIGTERM): run the sweep again to resume this run", file=f)
        raise SystemExit(130) from None
    conn.send(result)
    conn.close()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """A process started in here ignores SIGINT from birth (the disposition survives exec and
    Python then installs no KeyboardInterrupt handler), so Ctrl-C reaches the sweep alone."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # a sweep started off the main thread: signals are not its to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _local(cfg: SweepConfig, feed: Feed, logs: Path) -> Iterator[tuple[Run, dict]]:
    """Each run in its own spawned process (a fresh interpreter, no torch/MuJoCo state shared),
    at most `workers` at once; yields runs and results as they finish. A process that dies
    without a result (killed, out of memory) is a failed run whose log says how it ended; the
    others go on. With `gpus`, each run gets a device from the GPU slots (fractions share one
    GPU), so a GPU node runs as many runs as fit."""
    from multiprocessing.connection import wait as wait_for

    quiet_waits()  # the runs' processes inherit it, even when torch is loaded here already
    slots, workers, threads = local_shares(cfg, _count(feed))
    ctx = get_context("spawn")
    free = list(slots)
    running: dict[int, tuple[Any, Run, str | None, Any]] = {}  # sentinel -> process, run, ...
    try:
        while feed.ready or running or feed.open:
            feed.poll()
            while feed.ready and len(running) < workers:
                run = feed.ready.pop(0)
                device = free.pop(0) if slots else None
                receive, send = ctx.Pipe(duplex=False)
                log = str(logs / f"{run.name}.log")
                process = ctx.Process(target=_child, args=(run, threads, log, device, send))
                with _sigint_ignored():
                    process.start()
                send.close()
                running[process.sentinel] = (process, run, device, receive)
            if not running:  # all that is left waits for its start
                time.sleep(POLL_SECONDS)
                continue
            for sentinel in wait_for(list(running), _poll_timeout(feed)):
                process, run, device, receive = running.pop(sentinel)
                try:  # a process that died mid-run sent nothing: reading finds the pipe closed
                    result = receive.recv() if receive.poll() else None
                except EOFError:
                    result = None
                process.join()
                if device is not None:
                    free.append(device)
                if result is None:
                    code = process.exitcode  # negative: killed by that signal
                    with open(logs / f"{run.name}.log", "a") as f:
                        print(f"the run's process ended with exit code {code} before it "
                              "reported a result", file=f)  # fmt: skip
                    result = {"ok": False}
                yield run, result
    finally:  # stopped early (Ctrl-C, an error): stop the runs still going, let them clean up
        for process, *_ in running.values():
            process.terminate()
        for process, *_ in running.values():
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray: pip install 'eva_rl[ray]'") from None
    return ray


def start_ray(address: str | None) -> None:
    """Connect to the Ray cluster at `address`, or start a local instance of this machine's
    cores whose tasks run at the sweep's own priority. Ray starts workers at nice 15 by
    default, so on a machine with other work a local sweep's runs starved (its test: 33 s on an
    idle machine, 895 s beside three busy processes); the local executor's runs inherit the
    sweep's priority, and so do these. A cluster's own settings are left as they are."""
    ray = import_ray()
    options: dict[str, Any] = {"address": address}
    if address is None:  # "local": a new instance even where a `ray start` cluster runs
        options = {"address": "local", "num_cpus": cpu_count(),
                   "_system_config": {"worker_niceness": 0}}  # fmt: skip
    ray.init(**options, include_dashboard=False, log_to_driver=False)


def _run_in_dir(cwd: str, run: Run, threads: int, log: str) -> dict[str, Any]:
    """Ray worker: in the driver's directory, where the run's relative paths point."""
    os.chdir(cwd)
    return _run_one(run, threads, log)


def _ray(cfg: SweepConfig, feed: Feed, logs: Path) -> Iterator[tuple[Run, dict]]:
    """Each run as a Ray task holding `threads` CPUs and `gpus` GPUs; at most `workers` in
    flight (0: all, Ray schedules them as resources free up). Yields runs and results as they
    finish; a task Ray lost (a crashed or killed worker) is a failed run, not retried."""
    ray = import_ray()
    if not (feed.ready or feed.open):
        return  # no cluster to start
    start_ray(cfg.address)
    pending: dict[Any, Run] = {}
    try:
        cores = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]]
        _, threads = shares(cfg, cores, _count(feed))
        task = ray.remote(num_cpus=threads, num_gpus=cfg.gpus, max_retries=0)(_run_in_dir)
        # Ray sets CUDA_VISIBLE_DEVICES per task: `auto` then picks the GPU it was given
        cwd = os.getcwd()
        while feed.ready or pending or feed.open:
            feed.poll()
            while feed.ready and (not cfg.workers or len(pending) < cfg.workers):
                run = feed.ready.pop(0)
                pending[task.remote(cwd, run, threads, str(logs / f"{run.name}.log"))] = run
            if not pending:  # all that is left waits for its start
                time.sleep(POLL_SECONDS)
                continue
            done, _ = ray.wait(list(pending), timeout=_poll_timeout(feed))
            if not done:
                continue
            run = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as e:
                with open(logs / f"{run.name}.log", "a") as f:
                    print(f"Ray lost this run: {e}", file=f)
                result = {"ok": False}
            yield run, result
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.shutdown()


def _count(feed: Feed) -> int:
    """The runs the executor may start: the ready ones and those it waits for."""
    return len(feed.ready) + (len(feed.blocked) if feed.open else 0)


def _poll_timeout(feed: Feed) -> float | None:
    """How long to wait for a running run to finish before looking at the blocked ones."""
    return POLL_SECONDS if feed.open else None


EXECUTORS = {"local": _local, "ray": _ray}
