"""Every failure leaves a clean state (issue 14): faults injected for real (signals, truncated
and random files, paths that cannot be created), each giving one line and the right exit code,
or a clean recovery."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import HAMMER, tiny_finetune_overrides, tiny_pretrain_overrides, write_minari
from eva_rl.cli import main

PUSH = "metaworld/push-v3/scripted-v0"


def finetune_args(checkpoint, mw_root, out, *extra):
    return ["finetune", *tiny_finetune_overrides(checkpoint, mw_root, out, "lora", *extra)]


def one_line_error(capsys, *fragments) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("eva-rl: error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def start(args, log: Path, group: bool = False):
    """`eva-rl ARGS` in its own process (signals then reach it alone; with `group`, it and its
    children, as a terminal's job), output to `log` (a pipe nobody reads would fill and block)."""
    cmd = [sys.executable, "-c", "import sys; from eva_rl.cli import main; sys.exit(main())"]
    with open(log, "w") as f:
        return subprocess.Popen(
            [*cmd, *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=group,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def wait_for(path: Path, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# --- run folders: nothing dead-ends -------------------------------------------------------------


@pytest.mark.slow  # a process per run
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_stopped_before_the_first_checkpoint_then_the_same_command_runs(
    sig, checkpoint, mw_root, tmp_path
):
    out = tmp_path / "run"
    slow = ["loop.steps=4000", "loop.save_every=4000"]  # stopped long before a checkpoint
    process = start(finetune_args(checkpoint, mw_root, out, *slow), tmp_path / "log")
    wait_for(out / "config.yaml", process)
    deadline = time.monotonic() + 120
    while "train:" not in (tmp_path / "log").read_text():  # training under way (a signal during
        assert time.monotonic() < deadline  # imports can land in a finalizer and be lost)
        time.sleep(0.1)
    process.send_signal(sig)
    process.wait(timeout=120)
    if sig == signal.SIGINT:
        assert process.returncode == 130 and "interrupted" in (tmp_path / "log").read_text()
        assert not out.exists()  # a run stopped before its first checkpoint leaves nothing
    else:
        assert process.returncode == -signal.SIGKILL and (out / "config.yaml").is_file()
    assert main(finetune_args(checkpoint, mw_root, out)) == 0  # the same command, again
    assert (out / "summary.json").is_file()


def test_a_diverged_pretraining_before_any_checkpoint_leaves_nothing(mw_root, tmp_path, capsys):
    out = tmp_path / "pretrain"
    args = ["pretrain", *tiny_pretrain_overrides(mw_root, out), "optim.lr=1e15"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "loss became nan at step" in err and "nothing was kept; run again" in err
    assert not out.exists()


def test_resume_refuses_a_changed_config_and_keeps_its_files(checkpoint, mw_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(finetune_args(checkpoint, mw_root, out)) == 0
    before = (out / "config.yaml").read_bytes()
    summary = (out / "summary.json").read_bytes()
    capsys.readouterr()
    resume = finetune_args(checkpoint, mw_root, out, "resume=true")
    assert main([*resume, "loop.steps=40", "optim.lr=0.5"]) == 2
    one_line_error(capsys, "loop.steps: 30 -> 40", "optim.lr: 0.003 -> 0.5")
    assert main([*resume, "--method", "dora"]) == 2
    one_line_error(capsys, "method.name: 'lora' -> 'dora'")
    assert main([*resume, "--rank", "4"]) == 2
    one_line_error(capsys, "method.rank: 2 -> 4")
    here = json.loads(summary)["precision"]  # what `auto` resolved to; pinning it is no change
    other = {"fp32": "bf16", "bf16": "fp32"}[here]
    assert main([*resume, f"precision={other}"]) == 2  # the checkpoint's precision is kept
    one_line_error(capsys, f"was trained in {here}; resume it with precision={here}")
    assert (out / "config.yaml").read_bytes() == before
    assert (out / "summary.json").read_bytes() == summary
    older = yaml.safe_load(before)  # as an eva_rl before videos wrote it: keys added since
    older["eval"] = {k: v for k, v in older["eval"].items() if not k.startswith("video")}
    (out / "config.yaml").write_text(yaml.safe_dump(older))  # count as their defaults
    assert main([*resume, "eval.video=1"]) == 2
    one_line_error(capsys, "eval.video: 0 -> 1")
    assert main([*resume, "threads=1", "eval.workers=1"]) == 0  # how it runs, not what
    precision = json.loads(summary)["precision"]
    assert json.loads((out / "summary.json").read_text())["precision"] == precision


@pytest.mark.slow  # processes killed for real
def test_a_resume_replays_no_tensorboard_point_twice(checkpoint, mw_root, tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = tmp_path / "run"
    more = ["loop.steps=400", "loop.log_every=1", "loop.save_every=20"]
    process = start(finetune_args(checkpoint, mw_root, out, *more), tmp_path / "log")
    wait_for(out / "checkpoints" / "latest" / "state.pt", process)
    time.sleep(2.0)  # logs past the checkpoint, which the resume will log again
    process.kill()
    process.wait()
    assert main(finetune_args(checkpoint, mw_root, out, *more, "resume=true")) == 0
    steps = []
    for path in (out / "tb").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            steps += [event.step for v in event.summary.value if v.tag == "train/loss"]
    assert sorted(steps) == list(range(1, 401))  # every step once


def test_an_interrupted_purge_keeps_the_events_and_leaves_no_file_tensorboard_reads(
    tmp_path, monkeypatch
):
    from tensorboard.summary.writer.record_writer import RecordWriter
    from torch.utils.tensorboard import SummaryWriter

    from eva_rl.training.rundir import purge_events

    with SummaryWriter(tmp_path) as writer:
        for step in range(5):
            writer.add_scalar("x", float(step), step)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def interrupted(self, record):
        raise KeyboardInterrupt

    monkeypatch.setattr(RecordWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        purge_events(tmp_path, 2)
    # TensorBoard reads any file whose name holds "tfevents", hidden or not
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_pickled_object_in_a_checkpoint_is_refused(checkpoint, mw_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(finetune_args(checkpoint, mw_root, out)) == 0
    state_path = out / "checkpoints/latest/state.pt"
    state = torch.load(state_path, weights_only=True)  # what eva_rl writes loads safely
    state["payload"] = Path("anything")  # an arbitrary class: unpickling it could run code
    torch.save(state, state_path)
    capsys.readouterr()
    assert main(finetune_args(checkpoint, mw_root, out, "resume=true")) == 2
    one_line_error(capsys, "state.pt holds objects other than tensors", "could run code")


@pytest.mark.parametrize("damage", [b"hello world", bytes(range(256)) * 4, b""])
def test_a_damaged_checkpoint_is_called_damaged_not_unsafe(
    checkpoint, mw_root, tmp_path, capsys, damage
):
    out = tmp_path / "run"
    assert main(finetune_args(checkpoint, mw_root, out, "loop.steps=10")) == 0
    (out / "checkpoints/latest/state.pt").write_bytes(damage)
    capsys.readouterr()
    assert main(finetune_args(checkpoint, mw_root, out, "loop.steps=10", "resume=true")) == 2
    err = one_line_error(capsys, "state.pt is not a readable checkpoint", "start the run again")
    assert "could run code" not in err


# --- sweeps survive their workers --------------------------------------------------------------


def tiny_sweep(tmp_path, checkpoint, mw_root, grid, steps=60, save_every=30) -> Path:
    """A sweep file of tiny hammer runs over `grid`, two at a time, out in tmp_path/runs."""
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "checkpoint": str(checkpoint), "data_root": str(mw_root), "task": "hammer-v3",
        "method": {"rank": 2, "calibration_batches": 1}, "collector": {"batch_size": 16},
        "optim": {"batch_size": 16, "warmup_steps": 2},
        "loop": {"steps": steps, "log_every": 3, "eval_every": 0, "save_every": save_every},
        "eval": {"episodes": 1},
    }))  # fmt: skip
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": str(base), "out": str(tmp_path / "runs"), "workers": 2, "threads": 1,
        "grid": grid, "baseline": False,
    }))  # fmt: skip
    return sweep


@pytest.mark.slow  # processes killed for real
def test_a_killed_sweep_worker_fails_its_run_only(checkpoint, mw_root, tmp_path):
    import psutil

    sweep = tiny_sweep(tmp_path, checkpoint, mw_root, {"loop.steps": [3000, 60]})
    process = start(["sweep", str(sweep)], tmp_path / "sweep.log")
    log = tmp_path / "runs" / "_logs" / "loop.steps=3000.log"
    wait_for(tmp_path / "runs" / "loop.steps=3000" / "config.yaml", process, timeout=240)
    # the run's own process is the child holding its log open
    victim = next(
        child
        for child in psutil.Process(process.pid).children()
        if any(f.path == str(log) for f in child.open_files())
    )
    victim.kill()
    process.wait(timeout=600)
    err = (tmp_path / "sweep.log").read_text()
    assert process.returncode == 1
    assert "1 of 2 runs failed" in err and "loop.steps=3000" in err
    assert (tmp_path / "runs" / "loop.steps=60" / "summary.json").is_file()  # the other finished
    assert "ended with exit code -9 before it reported a result" in log.read_text()


@pytest.mark.slow  # a sweep and its runs interrupted for real
def test_ctrl_c_stops_a_sweep_with_one_message_and_resumable_runs(checkpoint, mw_root, tmp_path):
    import psutil

    grid = {"method.name": ["lora", "eva"]}
    sweep = tiny_sweep(tmp_path, checkpoint, mw_root, grid, steps=20000, save_every=10)
    process = start(["sweep", str(sweep)], tmp_path / "sweep.log", group=True)
    runs = [tmp_path / "runs" / f"method={m}" for m in ("lora", "eva")]
    for run in runs:  # both runs past their first checkpoint
        wait_for(run / "checkpoints" / "latest" / "state.pt", process, timeout=300)
    children = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    process.wait(timeout=120)
    out = (tmp_path / "sweep.log").read_text()
    assert process.returncode == 130, out
    assert "Traceback" not in out and out.count("eva-rl: interrupted") == 1, out
    # every process the sweep started ends: its runs, and the multiprocessing resource tracker,
    # which exits on its own once the sweep has closed its pipe (allow it a moment to see that)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not [c for c in alive if c.status() != psutil.STATUS_ZOMBIE], alive
    for run in runs:  # each run stopped cleanly, checkpoint kept: the sweep resumes it
        log = tmp_path / "runs" / "_logs" / f"{run.name}.log"
        assert "stopped (SIGTERM): run the sweep again" in log.read_text()
        assert "Traceback" not in log.read_text()
        assert (run / "config.yaml").is_file() and any((run / "checkpoints").iterdir())


# --- reports, corrupt and empty inputs ---------------------------------------------------------


def test_report_on_runs_evaluated_only_at_the_end(checkpoint, mw_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    for method in ("lora", "eva"):
        args = ["finetune", *tiny_finetune_overrides(checkpoint, mw_root, runs / method, method)]
        assert main([*args, "loop.eval_every=0", "loop.eval_at_start=false"]) == 0
    assert main(["report", str(runs), "--out", str(tmp_path / "report")]) == 0
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "| lora r2 |" in readme  # AUC: '-' (one evaluation), no crash


@pytest.fixture
def damaged_root(mw_root, tmp_path):
    """A copy of the test datasets: hammer truncated, push intact."""
    root = tmp_path / "damaged"
    shutil.copytree(mw_root, root, ignore=shutil.ignore_patterns(".*"))
    data = root / HAMMER / "data" / "main_data.hdf5"
    os.truncate(data, data.stat().st_size // 2)
    return root


def test_truncated_dataset_is_named_and_listed_as_broken(checkpoint, damaged_root, tmp_path,
                                                         capsys):  # fmt: skip
    assert main(["collect", "--checkpoint", str(checkpoint), "--dataset", HAMMER,
                 "--data-root", str(damaged_root), "--out", str(tmp_path / "c")]) == 2  # fmt: skip
    one_line_error(capsys, HAMMER, "cannot be read", "truncated file", "rebuild it")
    args = finetune_args(checkpoint, damaged_root, tmp_path / "f")
    assert main(args) == 2
    one_line_error(capsys, HAMMER, "cannot be read")
    assert not (tmp_path / "f").exists() and not (tmp_path / "c").exists()
    assert main(["data", "list", "--root", str(damaged_root)]) == 0
    out = capsys.readouterr().out
    assert f"{HAMMER}: BROKEN:" in out and f"{PUSH}: 4 episodes" in out


def test_an_empty_dataset_is_refused(checkpoint, tmp_path, capsys):
    import gymnasium as gym

    root = tmp_path / "empty"
    write_minari("test/pendulum/one-v0", gym.make("Pendulum-v1"), [
        (np.zeros((3, 3)), [[0.0], [0.0]], [1.0, 1.0])], root)  # fmt: skip
    metadata = root / "test/pendulum/one-v0/data/metadata.json"
    meta = json.loads(metadata.read_text())
    meta["total_episodes"], meta["total_steps"] = 0, 0  # a dataset with no episodes
    metadata.write_text(json.dumps(meta))
    args = ["collect", "--checkpoint", str(checkpoint), "--dataset", "test/pendulum/one-v0",
            "--data-root", str(root), "--out", str(tmp_path / "c")]  # fmt: skip
    assert main(args) == 2
    one_line_error(capsys, "test/pendulum/one-v0", "has no episodes")
    assert main(["data", "list", "--root", str(root)]) == 0
    assert "test/pendulum/one-v0: BROKEN:" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncate", "random"])
def test_damaged_model_weights_are_named(damage, checkpoint, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    weights = ckpt / "model.safetensors"
    if damage == "truncate":
        os.truncate(weights, weights.stat().st_size // 3)
    else:
        weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))
    args = ["evaluate", "--checkpoint", str(ckpt), "--episodes", "1",
            "--out", str(tmp_path / "e.json")]  # fmt: skip
    assert main(args) == 2
    one_line_error(capsys, f"checkpoint {ckpt} cannot be loaded", "restore or retrain it")


def test_damaged_or_incomplete_stats_are_named(checkpoint, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    meta = ckpt / "eva_rl.json"
    good = json.loads(meta.read_text())
    meta.write_text(meta.read_text()[:40])  # truncated
    args = ["evaluate", "--checkpoint", str(ckpt), "--episodes", "1",
            "--out", str(tmp_path / "e.json")]  # fmt: skip
    assert main(args) == 2
    one_line_error(capsys, f"{meta} is not a readable JSON stats file")
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({k: v for k, v in good.items() if k != "horizon"}))
    assert main([*args, "--stats", str(stats)]) == 2
    one_line_error(capsys, "missing config key(s): horizon")
    stats.write_text("{not json")
    assert main([*args, "--stats", str(stats)]) == 2
    one_line_error(capsys, f"{stats} is not a readable JSON stats file")


def test_pretraining_on_datasets_of_different_shapes_is_refused(mw_root, tmp_path, capsys):
    import gymnasium as gym

    write_minari("test/pendulum/hand-v0", gym.make("Pendulum-v1"), [
        (np.zeros((4, 3)), [[0.1]] * 3, [1.0] * 3)], mw_root)  # fmt: skip
    out = tmp_path / "pretrain"
    args = ["pretrain", *tiny_pretrain_overrides(mw_root, out)]
    args += [f"datasets=[{PUSH}, test/pendulum/hand-v0]"]
    try:
        assert main(args) == 2
    finally:
        shutil.rmtree(mw_root / "test")
    one_line_error(capsys, "datasets of different shapes", "(39, 4)", "(3, 1)")
    assert not out.exists()


# --- outputs are checked before the work -------------------------------------------------------


def test_unwritable_or_existing_outputs_fail_before_any_work(checkpoint, mw_root, tmp_path,
                                                             capsys):  # fmt: skip
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    nowhere = blocker / "sub"  # cannot be created: its parent is a file
    started = time.perf_counter()
    assert main(["collect", "--checkpoint", str(checkpoint), "--dataset", HAMMER,
                 "--data-root", str(mw_root), "--out", str(nowhere)]) == 2  # fmt: skip
    one_line_error(capsys, f"cannot write {nowhere}")
    args = ["evaluate", "--checkpoint", str(checkpoint), "--episodes", "50"]
    assert main([*args, "--out", str(nowhere / "e.json")]) == 2
    one_line_error(capsys, "cannot write")
    assert main([*args, "--out", str(tmp_path), "--overwrite"]) == 2
    one_line_error(capsys, "is a directory")
    assert time.perf_counter() - started < 30  # refused without rollouts or collection
    assert main(["data", "build", "--tasks", "push-v3", "--root", str(nowhere)]) == 2
    one_line_error(capsys, "cannot write")
    assert main(["report", str(tmp_path), "--out", str(blocker)]) == 2
    one_line_error(capsys, "is a file")
    run = tmp_path / "run"
    assert main(finetune_args(checkpoint, mw_root, run)) == 0
    capsys.readouterr()  # the run's progress bars
    png = tmp_path / "curve.png"
    png.write_bytes(b"old")
    assert main(["curve", str(run), "--out", str(png)]) == 2
    one_line_error(capsys, "exists; pass --overwrite")
    assert png.read_bytes() == b"old"
    assert main(["curve", str(run), "--out", str(tmp_path), "--overwrite"]) == 2
    one_line_error(capsys, "is a directory")
    assert not list(tmp_path.glob(".*tmp*"))  # no stray temp file
    assert main(["curve", str(run), "--out", str(png), "--overwrite"]) == 0


# --- smaller -------------------------------------------------------------------------------------


def test_quickstart_refuses_an_unknown_method_before_building_data(tmp_path, capsys):
    root = tmp_path / "minari"
    args = ["quickstart", "methods=[eva, lorra]", f"data_root={root}", f"out={tmp_path / 'qs'}"]
    assert main(args) == 2
    one_line_error(capsys, "unknown method 'lorra'")
    assert not root.exists() and not (tmp_path / "qs").exists()


def test_overrides_parse_wherever_they_stand(checkpoint, mw_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--checkpoint", str(checkpoint), "--data-root", str(mw_root),
            "--task", "hammer-v3", "threads=1", "--method", "lora", "--steps", "6",
            "loop.save_every=3", "--rank", "2", "--out", str(out), "optim.batch_size=16",
            "eval.episodes=1", "loop.eval_every=0", "method.calibration_batches=1"]  # fmt: skip
    assert main(args) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["threads"] == 1 and config["loop"]["save_every"] == 3
    assert config["loop"]["steps"] == 6 and config["optim"]["batch_size"] == 16
    capsys.readouterr()
    assert main(["data", "build", "--tasks", "hammer-v3", "episodes=abc"]) == 2
    one_line_error(capsys, "config key 'episodes' must be an integer, got 'abc'")


def test_a_dataset_shorter_than_the_context_warns(checkpoint, tmp_path):
    import gymnasium as gym

    from eva_rl.agent import Agent
    from eva_rl.data.segments import load_trajectories

    root = tmp_path / "short"
    write_minari("test/pendulum/short-v0", gym.make("Pendulum-v1"), [
        (np.zeros((3, 3)), [[0.0], [0.0]], [1.0, 1.0])], root)  # fmt: skip
    stats = {"state_mean": [0.0] * 3, "state_std": [1.0] * 3, "return_scale": 1.0,
             "context_length": 5, "horizon": 20}  # fmt: skip
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    from eva_rl.agent import ModelConfig, build_model

    model = build_model(ModelConfig(hidden_size=8, n_layer=1, n_head=1, context_length=5), 3, 1)
    model.save_pretrained(tmp_path / "plain")
    agent = Agent.load(tmp_path / "plain", stats=tmp_path / "stats.json")
    with pytest.warns(UserWarning, match=r"shorter than the context \(2 < 5 steps\)"):
        agent.segment_sampler(load_trajectories(["test/pendulum/short-v0"], root), seed=0)
