"""`eva-rl online` end to end on the tiny checkpoint: outputs, reproducibility, resume, export."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import minari
import numpy as np
import pytest
import torch

from conftest import HAMMER
from eva_rl.adapters.methods import METHODS
from eva_rl.cli import main
from eva_rl.config import load_config
from eva_rl.errors import UserError
from eva_rl.online.config import OnlineConfig
from eva_rl.online.run import online

pytestmark = pytest.mark.usefixtures("one_thread")


def overrides(checkpoint, mw_root, out, *extra) -> list[str]:
    """A run of a few seconds: 30-step episodes, 3 iterations of 4 updates."""
    return [
        f"checkpoint={checkpoint}",
        f"data_root={mw_root}",
        f"datasets=[{HAMMER}]",
        f"out={out}",
        "method.name=lora",
        "method.rank=2",
        "method.calibration_batches=1",
        "optim.batch_size=8",
        "optim.warmup_steps=2",
        "optim.lr=1e-3",
        "env_steps=90",
        "updates=4",
        "eval_every=60",
        "save_every=1",
        "log_every=2",
        "eval.episodes=1",
        "precision=fp32",
        "threads=1",
        *extra,
    ]


def config(checkpoint, mw_root, out, *extra) -> OnlineConfig:
    return load_config(OnlineConfig, None, overrides(checkpoint, mw_root, out, *extra))


def read_scalars(log_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_short_run_writes_summary_curves_and_a_minari_dataset(
    checkpoint, mw_root, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    filmed = ("eval.video=1", "eval.video_size=32", "eval.video_every=5")
    warm = "optim.warmup_steps=10"  # still warming at the first logs: the logged lr moves
    summary = online(config(checkpoint, mw_root, out, *filmed, warm), progress=False)
    assert summary["env_steps"] == 90 and summary["iterations"] == 3
    assert summary["updates"] == 12 and summary["episodes_collected"] == 3
    assert [m["isa"] for m in summary["machines"]] == [torch.backends.cpu.get_cpu_capability()]
    assert [p["step"] for p in summary["eval"]] == [0, 60, 90]
    assert [p["updates"] for p in summary["eval"]] == [0, 8, 12]
    (s0, v0), (s1, v1), (s2, v2) = [(p["step"], p["score"]) for p in summary["eval"]]
    by_hand = ((s1 - s0) * (v0 + v1) / 2 + (s2 - s1) * (v1 + v2) / 2) / (s2 - s0)
    assert summary["auc_env_steps"] == pytest.approx(by_hand)  # trapezoids over env steps
    assert json.loads((out / "summary.json").read_text())["env_steps"] == 90
    speed, phases = summary["throughput"], summary["throughput"]["phase_seconds"]
    assert 0 < phases["collect"] and 0 < phases["update"] and 0 < phases["evaluate"]
    assert phases["critic_warmup"] == 0  # no TD3
    assert sum(phases.values()) <= summary["train_seconds"] + 0.05  # phases lie inside the loop
    assert speed["env_steps_per_s"] == pytest.approx(90 / phases["collect"], rel=0.02)
    assert speed["updates_per_s"] == pytest.approx(12 / phases["update"], rel=0.02)
    env_axis = read_scalars(out / "tb" / "env_steps")
    assert [s for s, _ in env_axis["online/collect_return"]] == [30, 60, 90]
    assert [s for s, _ in env_axis["online/return"]] == [0, 60, 90]
    assert env_axis["online/updates_per_env_step"][-1][1] == pytest.approx(12 / 90)
    updates_axis = read_scalars(out / "tb")
    assert [s for s, _ in updates_axis["eval/return"]] == [0, 8, 12]
    assert "train/temperature" in updates_axis and "train/entropy" in updates_axis
    state = torch.load(out / "checkpoints/latest/state.pt", weights_only=True)  # at update 12
    final = math.exp(state["temperature"]["log_temperature"].item())
    assert updates_axis["train/temperature"][-1] == (12, pytest.approx(final, rel=1e-6))
    assert final != pytest.approx(0.1, abs=1e-9)  # tuned away from ODT's initial 0.1
    logged_lr = updates_axis["train/lr"]  # the rate of the update just made: warm-up step / 10
    assert [v for _, v in logged_lr] == pytest.approx([1e-3 * min(s / 10, 1) for s, _ in logged_lr])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from eva_rl.video import read_frames

    for step in (0, 60, 90):  # a film of the first episode at each evaluation, as finetune's
        frames = read_frames(out / "videos" / f"env-steps-{step:08d}" / "hammer-v3-seed1000.mp4")
        assert frames.shape == (1 + 30 // 5, 32, 32, 3) and frames.std() > 0
    acc = EventAccumulator(str(out / "tb" / "env_steps"), size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("video/hammer-v3/seed1000")] == [0, 60, 90]
    (name,) = summary["dataset"]
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(out / "minari"))
    data = minari.load_dataset(name)
    assert data.total_episodes == 3 and data.total_steps == 90
    saved = np.load(out / "episodes" / "0000000.npz")
    first = next(data.iterate_episodes())
    np.testing.assert_array_equal(first.actions, saved["actions"])


def test_cli_runs_and_the_api_names_resolve(checkpoint, mw_root, tmp_path, capsys):
    import eva_rl

    out = tmp_path / "cli"
    items = overrides(checkpoint, mw_root, out, "env_steps=30", "updates=2")
    flags = ["--checkpoint", str(checkpoint), "--data-root", str(mw_root), "--task", "hammer-v3",
             "--method", "lora", "--rank", "2", "--env-steps", "30", "--out", str(out),
             "--precision", "fp32"]  # fmt: skip
    rest = [i for i in items if i.split("=")[0] not in
            ("checkpoint", "data_root", "datasets", "out", "method.name", "method.rank",
             "env_steps", "precision")]  # fmt: skip
    assert main(["online", *flags, *rest]) == 0
    printed = capsys.readouterr().out
    assert "after 30 env steps, 2 updates, 1 episodes collected" in printed
    speed = json.loads((out / "summary.json").read_text())["throughput"]
    assert f"speed: {speed['updates_per_s']:.1f} updates/s updating, " in printed
    assert load_config(OnlineConfig, out / "config.yaml").task == "hammer-v3"
    assert eva_rl.online_finetune is online and eva_rl.OnlineConfig is OnlineConfig
    head, temperature = eva_rl.load_online_head(out / "agent")
    state = torch.load(out / "checkpoints/latest/state.pt", weights_only=True)
    torch.testing.assert_close(head.raw_log_std, state["head"]["raw_log_std"], rtol=0, atol=0)
    assert temperature.value.item() == pytest.approx(
        float(state["temperature"]["log_temperature"].exp())
    )
    assert eva_rl.load_agent(out / "agent").act_dim == head.raw_log_std.numel()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["env_steps=0"], "env_steps=0 must be >= 1"),
        (["method.name=nope"], "unknown method 'nope'"),
        (["from_run=/nonexistent"], "is not a finished finetune run"),
        (["policy=greedy"], "'policy' must be one of ['stochastic', 'deterministic']"),
        (["expl_noise=-0.1"], "expl_noise must be finite and >= 0, got -0.1"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_folder(extra, message, checkpoint, mw_root,
                                                    tmp_path, capsys):  # fmt: skip
    out = tmp_path / "bad"
    code = main(["online", *overrides(checkpoint, mw_root, out, *extra)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_sampled_actions_are_reproducible_by_seed(checkpoint, mw_root, tmp_path):
    def actions(name, seed):
        cfg = config(checkpoint, mw_root, tmp_path / name, "env_steps=30", "updates=0",
                     f"seed={seed}")  # fmt: skip
        online(cfg, progress=False)
        return np.load(tmp_path / name / "episodes" / "0000000.npz")["actions"]

    first, again, other = actions("a", 0), actions("b", 0), actions("c", 1)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert np.all(np.abs(first) <= 1) and first.std(axis=0).min() > 0


def kill_and_resume(checkpoint, mw_root, tmp_path, *extra,
                    saved_inside=lambda counts: 0 < counts["env_steps"] < 150) -> Path:  # fmt: skip
    """An uninterrupted run in tmp_path/a; the same run SIGKILLed after its first checkpoint
    (whose counts must satisfy `saved_inside`) and resumed in tmp_path/b; asserts their counts,
    summaries and episodes are equal. Returns b."""
    extra = ("env_steps=150", "updates=10", *extra)
    whole = online(config(checkpoint, mw_root, tmp_path / "a", *extra), progress=False)
    out = tmp_path / "b"
    items = overrides(checkpoint, mw_root, out, *extra)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", "from eva_rl.cli import main; main()",
                              "online", *items], env=env)  # fmt: skip
    state = out / "checkpoints/latest/state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert state.exists() and not (out / "summary.json").exists(), "killed too late"
    saved = torch.load(state, weights_only=True)["counts"]
    assert saved_inside(saved), saved
    from unittest import mock

    from eva_rl.online.trainer import OnlineTrainer

    with (
        mock.patch.object(OnlineTrainer, "_update", autospec=True,
                          side_effect=OnlineTrainer._update) as updates,
        mock.patch.object(OnlineTrainer, "_collect", autospec=True,
                          side_effect=OnlineTrainer._collect) as collects,
    ):  # fmt: skip
        resumed = online(config(checkpoint, mw_root, out, *extra, "resume=true"), progress=False)
    # from the checkpoint, not from 0 (a restart would give the same numbers here)
    assert updates.call_count == whole["updates"] - saved["updates"]
    assert collects.call_count == whole["iterations"] - saved["iterations"]
    for key in ("env_steps", "updates", "episodes_collected", "auc_env_steps", "final"):
        assert resumed[key] == whole[key], key
    assert resumed["collected"] == whole["collected"]
    assert sorted(p.name for p in (out / "episodes").iterdir()) == sorted(
        p.name for p in (tmp_path / "a" / "episodes").iterdir()
    )
    return out


def test_killed_then_resumed_equals_uninterrupted(checkpoint, mw_root, tmp_path):
    out = kill_and_resume(checkpoint, mw_root, tmp_path)
    from safetensors.torch import load_file

    for name in ("adapter_model.safetensors", "gaussian_head.safetensors"):
        a, b = (load_file(str(r / "agent" / name)) for r in (tmp_path / "a", out))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_methods_train_online(method, checkpoint, mw_root, tmp_path):
    """Every method of the registry: fft trains everything; EVA collects on the offline data;
    LoRA-GA and CorDA take their calibration batches; base-rewriting methods and AdaLoRA
    (hooks, penalty) export as finetune's do, and the export reloads."""
    out = tmp_path / method
    extra = ("env_steps=30", "updates=3", "collector.batch_size=16", "collector.max_batches=4")
    summary = online(config(checkpoint, mw_root, out, f"method.name={method}", *extra),
                     progress=False)  # fmt: skip
    assert summary["method"] == method and summary["updates"] == 3
    assert summary["trainable_parameters"] > 3  # more than the head's log-std
    from test_agent import some_inputs

    import eva_rl

    tuned, base = eva_rl.load_agent(out / "agent"), eva_rl.load_agent(checkpoint)  # reloads
    x = some_inputs(base)  # every method starts as the base's function: the updates moved it
    moved = (tuned.predict(**x) - base.predict(**x)).abs().max()
    # (AdaLoRA's E starts at exactly 0, so untrained it merges to the base exactly; it moves
    # least: 3e-7 after these 3 updates. PiSSA's rewrite alone differs from the base by ~1e-7)
    assert moved > (0.0 if method == "adalora" else 1e-4), moved


def test_from_a_finetune_run(checkpoint, mw_root, tmp_path, capsys):
    from conftest import tiny_finetune_overrides
    from eva_rl.training.finetune import FinetuneConfig, finetune

    run = tmp_path / "ft"
    items = tiny_finetune_overrides(
        checkpoint, mw_root, run, "lora", "loop.steps=10", "precision=fp32"
    )
    finetune(load_config(FinetuneConfig, None, items), progress=False)
    out = tmp_path / "online"
    summary = online(config(checkpoint, mw_root, out, f"from_run={run}", "env_steps=30",
                            "updates=0", "eval_target_scale=1.0"), progress=False)  # fmt: skip
    start = summary["eval"][0]
    finetuned = json.loads((run / "summary.json").read_text())["eval"][-1]
    assert summary["method"] == "lora"
    assert start["episodes"] == finetuned["episodes"]  # the same agent, the same episodes
    code = main(["online", *overrides(checkpoint, mw_root, tmp_path / "x", f"from_run={run}",
                                      "method.rank=4")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "x").exists()
    assert f"--from {run} was made with method.name=lora, method.rank=2; set method.rank=2" in err
    (run / "agent" / "adapter_model.safetensors").unlink()  # as `eva-rl export` leaves a run
    code = main(["online", *overrides(checkpoint, mw_root, tmp_path / "x", f"from_run={run}")])
    err = capsys.readouterr().err
    assert code == 2 and "has no adapter weights" in err and len(err.strip().splitlines()) == 1


def test_from_an_online_run_its_exploration_continues(checkpoint, mw_root, tmp_path, capsys):
    """A chained online run starts from the first one's log-std and temperature (they were
    reset to their initial values), and an export without weights is refused in one line."""
    from safetensors.torch import load_file

    first, second = tmp_path / "first", tmp_path / "second"
    online(config(checkpoint, mw_root, first, "env_steps=30"), progress=False)
    online(config(checkpoint, mw_root, second, f"from_run={first}", "env_steps=30", "updates=0"),
           progress=False)  # fmt: skip
    from eva_rl.online.policy import GaussianHead

    learned = load_file(first / "agent" / "gaussian_head.safetensors")
    fresh = GaussianHead(learned["raw_log_std"].numel()).raw_log_std.detach()
    assert not torch.allclose(learned["raw_log_std"], fresh)  # the first run moved it
    kept = load_file(second / "agent" / "gaussian_head.safetensors")  # no update: as it started
    assert all(torch.equal(kept[k], learned[k]) for k in ("raw_log_std", "log_temperature"))
    (first / "agent" / "gaussian_head.safetensors").unlink()
    code = main(["online", *overrides(checkpoint, mw_root, tmp_path / "x", f"from_run={first}")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "has no gaussian_head.safetensors (`eva-rl export` leaves" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "x").exists()


def online_sweep(checkpoint, mw_root, tmp_path, grid: dict, settings: dict) -> Path:
    """A sweep file of online runs on the hammer data at `overrides`' tiny scale."""
    import yaml

    from eva_rl.config import apply_override

    base, fixed = tmp_path / "online.yaml", {}
    for item in overrides(checkpoint, mw_root, "x"):
        if item.split("=")[0] not in ("out", "datasets", "method.name", "threads"):
            apply_override(fixed, item)
    base.write_text(yaml.safe_dump(fixed))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "base": str(base), "command": "online", "out": str(tmp_path / "runs"), "grid": grid,
        "set": {"task": "hammer-v3", **settings}, "workers": 2,
    }))  # fmt: skip
    return sweep_file


def test_a_from_run_in_no_existing_folder_is_refused_before_anything_runs(
    checkpoint, mw_root, tmp_path, capsys
):
    """A mistyped `from_run` would leave its runs blocked for good (`wait: true`: a sweep
    polling forever); a start whose sweep has begun (its folder exists) may still be running."""
    typo = tmp_path / "offlin" / "seed={seed}"
    sweep_file = online_sweep(checkpoint, mw_root, tmp_path, {"seed": [0]},
                              {"from_run": str(typo), "method.name": "lora"})  # fmt: skip
    assert main(["sweep", str(sweep_file), "wait=true"]) == 2
    err = capsys.readouterr().err
    assert f"run seed=0: from_run {tmp_path}/offlin/seed=0 is in no folder that exists" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # spawns run processes
def test_an_online_sweep_runs_resumes_and_reports_in_env_steps(
    checkpoint, mw_root, tmp_path, capsys
):
    grid = {"method.name": ["lora", "eva"], "seed": [0, 1]}
    sweep_file = online_sweep(checkpoint, mw_root, tmp_path, grid, {"collector.batch_size": 16})
    assert main(["sweep", str(sweep_file)]) == 0
    runs = tmp_path / "runs"
    summary = json.loads((runs / "method=eva,seed=1" / "summary.json").read_text())
    assert summary["method"] == "eva" and summary["env_steps"] == 90
    assert summary["step_unit"] == "env_steps" and summary["task"] == "hammer-v3"
    capsys.readouterr()
    assert main(["sweep", str(sweep_file)]) == 0  # resumed: everything finished, nothing runs
    assert "0 run now, 4 already finished" in capsys.readouterr().out
    assert main(["sweep", str(sweep_file), "command=finetune"]) == 2  # not what ran there
    assert "holds a different sweep" in capsys.readouterr().err
    report = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(report)]) == 0
    text = (report / "README.md").read_text()
    assert "90 env steps per run" in text and "divided by the env steps" in text
    assert "| env step 60 |" in text  # the timeline's columns: evaluations at env-step budgets
    rows = list(csv.DictReader((report / "runs.csv").open()))
    assert len(rows) == 4
    for row in rows:  # env steps beside updates
        updates = json.loads((runs / row["run"] / "summary.json").read_text())["updates"]
        assert (row["env_steps"], row["steps"]) == ("90", str(updates))
    mean = report / "tensorboard/mean/eva_r02_rho2"  # one axis per TensorBoard run
    evaluations = {p["step"]: p["updates"] for p in summary["eval"]}  # env steps -> updates
    assert {s for s, _ in read_scalars(mean)["eval/score"]} == set(evaluations)
    assert "train/loss" not in read_scalars(mean)
    logged = {s for s, _ in read_scalars(mean / "updates")["train/loss"]}
    assert logged and max(logged) == max(evaluations.values())  # the loss against updates
    assert main(["export", str(runs), "--out", str(tmp_path / "export")]) == 0
    exported = tmp_path / "export" / "method=eva,seed=1"
    assert not (exported / "episodes").exists()  # the raw store: minari/ has the same episodes
    assert (exported / "minari/eva_rl/online-hammer-v3-v0/data/main_data.hdf5").is_file()


@pytest.mark.slow  # spawns run processes
def test_an_online_sweep_waits_for_the_runs_it_starts_from(checkpoint, mw_root, tmp_path, capsys):
    """Chained to an offline sweep still running: a run whose `from_run` has finished runs, the
    others wait (not failed, no folder) until an invocation finds their start finished."""
    import shutil

    from conftest import tiny_finetune_overrides
    from eva_rl.training.finetune import FinetuneConfig, finetune

    starts = tmp_path / "offline"
    items = tiny_finetune_overrides(
        checkpoint, mw_root, starts / "seed=0", "lora", "loop.steps=10", "precision=fp32"
    )
    finetune(load_config(FinetuneConfig, None, items), progress=False)
    settings = {"from_run": f"{starts}/seed={{seed}}", "method.name": "lora", "updates": 0}
    sweep_file = online_sweep(checkpoint, mw_root, tmp_path, {"seed": [0, 1]}, settings)
    runs = tmp_path / "runs"
    assert main(["sweep", str(sweep_file), "--status"]) == 0  # not started: from the plan
    blocked = "1 waiting for the run they start from to finish"
    planned = capsys.readouterr().out
    assert f"0 of 2 runs finished, 1 waiting, {blocked}, 0 of 1 baselines" in planned
    assert main(["sweep", str(sweep_file)]) == 0
    out = capsys.readouterr().out
    assert "2 runs (1 run now, 0 already finished)" in out
    waits = f"1 waiting for the run each starts from to finish: seed=1 (from_run {starts}/seed=1"
    assert waits in out
    assert (runs / "seed=0/summary.json").is_file() and not (runs / "seed=1").exists()
    assert json.loads((runs / "runs.json").read_text())["seed=1"]["status"] == "blocked"
    assert main(["sweep", str(sweep_file), "--status"]) == 0
    status = capsys.readouterr().out
    assert f"1 of 2 runs finished, {blocked}" in status
    shutil.copytree(starts / "seed=0", starts / "seed=1")  # as the offline sweep finishes it
    assert main(["sweep", str(sweep_file), "--status"]) == 0
    assert "1 of 2 runs finished, 1 waiting, 1 of 1 baselines" in capsys.readouterr().out
    assert main(["sweep", str(sweep_file)]) == 0
    out = capsys.readouterr().out
    assert "2 runs (1 run now, 1 already finished)" in out and "waiting" not in out
    assert (runs / "seed=1/summary.json").is_file()


@pytest.mark.slow  # spawns run processes
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_sweep_told_to_wait_runs_each_run_once_its_start_finishes(
    executor, checkpoint, mw_root, tmp_path, capsys, monkeypatch
):
    """`wait=true`: the run whose start is there runs at once, the other as soon as its start
    finishes (here, copied in while the first runs), beside it on the second worker rather
    than after it, all in one invocation."""
    import shutil
    import threading

    import eva_rl.sweeps
    from conftest import tiny_finetune_overrides
    from eva_rl.training.finetune import FinetuneConfig, finetune

    monkeypatch.setattr(eva_rl.sweeps.executors, "POLL_SECONDS", 0.2)
    starts, runs = tmp_path / "offline", tmp_path / "runs"
    items = tiny_finetune_overrides(
        checkpoint, mw_root, starts / "seed=0", "lora", "loop.steps=10", "precision=fp32"
    )
    finetune(load_config(FinetuneConfig, None, items), progress=False)
    settings = {"from_run": f"{starts}/seed={{seed}}", "method.name": "lora", "updates": 0}
    sweep_file = online_sweep(checkpoint, mw_root, tmp_path, {"seed": [0, 1]}, settings)

    first_done_when_second_began = []

    def finish_the_second_start():  # once the first online run has begun, as an offline sweep
        while not (runs / "_logs" / "seed=0.log").is_file():
            time.sleep(0.05)
        shutil.copytree(starts / "seed=0", tmp_path / "copying")
        (tmp_path / "copying").rename(starts / "seed=1")  # whole, as a finished run appears
        while json.loads((runs / "runs.json").read_text())["seed=1"]["status"] != "pending":
            time.sleep(0.05)  # taken on, by a free worker at once (the run's imports take long)
        first_done_when_second_began.append((runs / "seed=0" / "summary.json").is_file())

    helper = threading.Thread(target=finish_the_second_start, daemon=True)
    helper.start()
    if executor == "ray":
        pytest.importorskip("ray")
    args = ["sweep", str(sweep_file), "wait=true", "workers=3", f"executor={executor}"]
    assert main(args) == 0  # workers: one free for the run that waits
    helper.join(timeout=5)
    assert first_done_when_second_began == [False]  # not after the first, as in rounds
    captured = capsys.readouterr()
    assert "2 runs (2 run now, 0 already finished)" in captured.out
    assert "not run yet" not in captured.out
    assert "1 runs wait for the run each starts from to finish (checked every 0.2 s" in captured.err
    index = json.loads((runs / "runs.json").read_text())
    assert [index[f"seed={s}"]["status"] for s in (0, 1)] == ["done", "done"]
    assert (runs / "seed=1/summary.json").is_file()


def test_an_online_run_resumes_only_in_its_own_precision(
    checkpoint, mw_root, tmp_path, monkeypatch
):
    """As finetune's: its checkpoint refuses another precision (an online resume went on in
    whatever `precision` resolved to), and a pin of what `auto` resolved to is no change."""
    from eva_rl.online.trainer import OnlineTrainer
    from eva_rl.runtime import resolve_precision

    here = resolve_precision("auto", torch.device("cpu"))
    other = {"fp32": "bf16", "bf16": "fp32"}[here]
    real, calls = OnlineTrainer._update, {"n": 0}

    def crash_in_the_second_iteration(self):
        calls["n"] += 1
        if calls["n"] == 6:  # after the first iteration's checkpoint (4 updates each)
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(OnlineTrainer, "_update", crash_in_the_second_iteration)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        online(config(checkpoint, mw_root, out, "precision=auto"), progress=False)
    monkeypatch.setattr(OnlineTrainer, "_update", real)
    with pytest.raises(UserError, match=f"was trained in {here}; resume it with precision={here}"):
        online(
            config(checkpoint, mw_root, out, "resume=true", f"precision={other}"), progress=False
        )
    resumed = online(config(checkpoint, mw_root, out, "resume=true", f"precision={here}"),
                     progress=False)  # fmt: skip
    assert resumed["precision"] == here and resumed["env_steps"] == 90
