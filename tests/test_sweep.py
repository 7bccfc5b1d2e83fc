"""Sweeps: grid expansion, names, validation before running, resume skips and restarts; both
executors (local processes, Ray)."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from eva_rl import ownership
from eva_rl.agent import load_agent
from eva_rl.cli import main
from eva_rl.errors import UserError
from eva_rl.runtime import resolve_precision
from eva_rl.sweeps import expand, gpu_slots, load_sweep, plan, run_name, sweep
from eva_rl.sweeps.executors import start_ray
from eva_rl.sweeps.plan import run_config


def test_grid_expansion_is_the_full_product_first_key_slowest():
    points = expand({"task": ["a", "b"], "method.name": ["lora", "eva"], "seed": [0, 1, 2]})
    assert len(points) == 12
    assert points[0] == {"task": "a", "method.name": "lora", "seed": 0}
    assert points[1] == {"task": "a", "method.name": "lora", "seed": 1}
    assert points[-1] == {"task": "b", "method.name": "eva", "seed": 2}
    assert run_name(points[0]) == "task=a,method=lora,seed=0"


def test_a_list_of_grids_pools_their_runs():
    from eva_rl.config import from_dict
    from eva_rl.sweeps import SweepConfig

    grids = [{"method.name": ["eva"], "method.rho": [1, 2]}, {"method.name": ["lora"]}]
    cfg = from_dict(SweepConfig, {"out": "x", "grid": grids})
    assert [run_name(p) for p in cfg.points] == [
        "method=eva,rho=1",
        "method=eva,rho=2",
        "method=lora",
    ]
    with pytest.raises(UserError, match="grid key 'seed' needs a non-empty list"):
        from_dict(SweepConfig, {"out": "x", "grid": {"seed": []}})


def write_base(tmp_path, checkpoint, mw_root):
    """A finetune config for the tiny checkpoint, a few updates per run."""
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "checkpoint": str(checkpoint),
                "data_root": str(mw_root),
                "method": {"rank": 2, "calibration_batches": 1},
                "collector": {"batch_size": 16},
                "optim": {"batch_size": 16, "warmup_steps": 2},
                "loop": {"steps": 6, "log_every": 3, "eval_every": 0, "save_every": 3},
                "eval": {"episodes": 1},
            }
        )
    )
    return base


def write_sweep(tmp_path, checkpoint, mw_root, **extra):
    base = write_base(tmp_path, checkpoint, mw_root)
    spec = {
        "base": str(base),
        "out": str(tmp_path / "runs"),
        "grid": {"method.name": ["lora", "eva"], "seed": [0, 1]},
        "set": {"task": "hammer-v3"},
        "workers": 2,
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_set_override_sets_one_key_and_keeps_the_rest_of_its_section(
    checkpoint, mw_root, tmp_path
):
    path = write_sweep(tmp_path, checkpoint, mw_root, grid={"seed": [0]})
    (run,) = [r for r in plan(load_sweep(path, ["set.method.name=eva"])) if not r.baseline]
    assert run.config["method"] == {"rank": 2, "calibration_batches": 1, "name": "eva"}


def test_sweep_files_that_cannot_do_what_they_say_are_refused_in_one_line(
    checkpoint, mw_root, tmp_path, capsys
):
    """A mapping as a grid value (it would replace the base's whole section), a bad entry of a
    list of grids (named, not the whole list), an out that is a file: one line, exit 2."""
    grid = {"method": [{"name": "lora", "rank": 4}]}
    path = write_sweep(tmp_path, checkpoint, mw_root, grid=grid)
    assert main(["sweep", str(path)]) == 2
    assert "grid key 'method' has a mapping among its values" in capsys.readouterr().err
    path = write_sweep(tmp_path, checkpoint, mw_root, grid=[{"seed": [0]}, "seed"])
    assert main(["sweep", str(path)]) == 2
    assert "config key 'grid[1]' must be a mapping, got 'seed'" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("mine\n")
    path = write_sweep(tmp_path, checkpoint, mw_root, grid={"seed": [0]}, out=str(blocker))
    assert main(["sweep", str(path)]) == 2
    assert f"output {blocker} is a file; choose another path" in capsys.readouterr().err
    assert blocker.read_text() == "mine\n" and not (tmp_path / "runs").exists()


def test_one_baseline_per_distinct_evaluation(checkpoint, mw_root, tmp_path):
    """Runs that evaluate the same data two ways (here fp32 and bf16) get two baselines, not
    one per run of the second way."""
    grid = {"precision": ["fp32", "bf16"], "seed": [0, 1], "method.name": ["lora"]}
    path = write_sweep(tmp_path, checkpoint, mw_root, grid=grid)
    baselines = [r for r in plan(load_sweep(path)) if r.baseline]
    assert [r.name for r in baselines] == ["_baseline.hammer-v3", "_baseline.hammer-v3-1"]
    assert [r.config["key"]["precision"] for r in baselines] == ["fp32", "bf16"]


def test_a_set_value_follows_the_grid_through_placeholders(checkpoint, mw_root, tmp_path):
    """`{seed}` and `{method}` (method.name's short name) in a `set` string: one setting per run,
    as an online sweep's `from_run` naming the offline sweep's run of the same point."""
    template = "offline/seed={seed},method={method}/s={method.name}"
    path = write_sweep(tmp_path, checkpoint, mw_root, set={"task": "hammer-v3",
                                                           "stats": template})  # fmt: skip
    runs = {r.name: r.config["stats"] for r in plan(load_sweep(path)) if not r.baseline}
    assert runs == {
        "method=lora,seed=0": "offline/seed=0,method=lora/s=lora",
        "method=lora,seed=1": "offline/seed=1,method=lora/s=lora",
        "method=eva,seed=0": "offline/seed=0,method=eva/s=eva",
        "method=eva,seed=1": "offline/seed=1,method=eva/s=eva",
    }
    path = write_sweep(tmp_path, checkpoint, mw_root, set={"task": "hammer-v3",
                                                           "stats": "x/{rank}"})  # fmt: skip
    with pytest.raises(
        UserError,
        match=r"set.stats names \{rank\}, which is not a grid key of "
        r"this run \(grid keys: method.name, seed\)",
    ):
        plan(load_sweep(path))


def test_bad_run_configs_fail_before_anything_runs(checkpoint, mw_root, tmp_path):
    path = write_sweep(tmp_path, checkpoint, mw_root, grid={"method.name": ["lora", "lorra"]})
    with pytest.raises(UserError, match="unknown method 'lorra'"):
        plan(load_sweep(path))
    path = write_sweep(tmp_path, checkpoint, mw_root, grid={"optim.lrr": [1e-3]})
    with pytest.raises(UserError, match="did you mean lr"):
        sweep(load_sweep(path), progress=False)
    assert not (tmp_path / "runs").exists()


def test_time_left_takes_each_methods_own_pace(tmp_path):
    """Unfinished runs count at the median time of their method's last five finished runs (the
    machine's present pace: four older, slower LoRA runs no longer count); a method with none
    finished yet at the median of all finished runs."""
    from eva_rl.sweeps import sweep_status

    index = {}
    lora = [(f"a{i}", "lora", 1000 if i < 5 else 100) for i in range(9)]  # 5 slow, then 4 fast
    others = [("a9", "lora", None), ("b0", "dora", 300), ("b1", "dora", None),
              ("b2", "dora", None), ("c0", "fft", None)]  # fmt: skip
    for order, (name, method, seconds) in enumerate(lora + others):
        index[name] = {"overrides": {"method.name": method}, "status": "pending"}
        if seconds is not None:
            (tmp_path / name).mkdir()
            summary = tmp_path / name / "summary.json"
            summary.write_text(json.dumps({"wall_seconds": seconds}))
            os.utime(summary, (1e9 + order, 1e9 + order))  # finished in this order
    (tmp_path / "runs.json").write_text(json.dumps(index))
    status = sweep_status(tmp_path)
    assert (len(status.done), len(status.waiting), status.median_seconds) == (10, 4, 650)
    # a9 at LoRA's last five (1000, 100, 100, 100, 100): 100; b1, b2 at 300; c0 at all's 650
    assert status.hours_left(parallel=2) == pytest.approx((100 + 2 * 300 + 650) / 2 / 3600)
    assert "the median time of its method's last 5 finished runs" in status.describe(parallel=2)


def test_a_run_log_keeps_a_bar_once_a_minute_and_status_reads_where_it_stands(tmp_path):
    """A progress bar in a run's log: its redraws at most once per `every`, its last state
    before other output always (without tqdm's padding, which is relative to a draw the log
    need not hold), so the log ends where the run stands and `last_bar` reads it."""
    from tqdm import tqdm

    from eva_rl.sweeps.executors import BarLog
    from eva_rl.sweeps.status import last_bar

    log = tmp_path / "run.log"
    with BarLog(str(log), every=3600) as f:
        print("a warning", file=f)
        bar = tqdm(total=10_000, desc="train", file=f, unit="step", mininterval=0)
        for _ in range(6300):
            bar.update()
        assert log.read_bytes().count(b"\r") == 1  # the first draw; 6,300 redraws held back
        bar.set_postfix(loss="0.0123")
        assert last_bar(log) == "train 0/10000 [00:00<?, ?step/s]"
        print("evaluating", file=f)  # other output: the bar's last state is written first
        assert re.fullmatch(r"train 6300/10000 \[\S+<\S+, \S+step/s, loss=0\.0123\]",
                            last_bar(log))  # fmt: skip
        bar.update(10)
        padded = bar.format_meter(6320, 10_000, 1.0, prefix="train") + "   "  # as tqdm pads
        f.write("\r" + padded)  # a draw shorter than its last one
    assert "6320/10000" in last_bar(log) and log.read_text().endswith("]\n")  # held, unpadded
    assert log.read_text().startswith("a warning\n") and "0123]\nevaluating\n" in log.read_text()
    assert last_bar(tmp_path / "none.log") is None


def test_a_blind_status_shows_where_runs_are_without_what_they_report(tmp_path):
    """`--blind`: a pre-registered study watched without its outcomes (an online run's bar
    carries its last evaluation's score and its last episode's return)."""
    from eva_rl.sweeps.status import SweepStatus

    bars = {
        "seed=1": "env steps 2500/5000 [40:12<41:30, 1.02step/s, updates=1250, score=0.433, "
        "collected=512]",
        "seed=2": "train 6300/10000 [40:12<23:30, 2.61step/s, loss=0.0123]",
        "seed=3": "critic warm-up 10/100 [00:02<00:18, 5.0step/s]",
    }
    status = SweepStatus(tmp_path, started=list(bars), where=bars)
    seen = status.describe(2)
    assert "score=0.433" in seen and "loss=0.0123" in seen
    blind = status.describe(2, blind=True)
    assert "\n  seed=1: env steps 2500/5000 [40:12<41:30, 1.02step/s]" in blind
    assert "\n  seed=2: train 6300/10000 [40:12<23:30, 2.61step/s]" in blind
    assert "\n  seed=3: critic warm-up 10/100 [00:02<00:18, 5.0step/s]" in blind
    assert not re.search(r", \w+=", blind)  # no value any run reports is left


def test_the_reuse_note_follows_the_waiting_runs_it_counts(tmp_path):
    from eva_rl.sweeps.status import SweepStatus

    status = SweepStatus(tmp_path, waiting=["a", "b"], blocked={"c": "/x/c"},
                         reused={"a": tmp_path / "elsewhere" / "a"})  # fmt: skip
    note = "(1 of them finished in a `reuse` sweep: copied when the sweep (re)starts, not run "
    note += "again)"
    assert f"2 waiting {note}, 1 waiting for the run they start from" in status.describe(1)


def test_status_before_a_sweep_starts_plans_it_and_counts_what_reuse_would_copy(
    checkpoint, mw_root, tmp_path, capsys
):
    """A finished run elsewhere with a waiting run's config is counted as copied, not run: the
    time left leaves it out and takes its method's pace from it; nothing is written."""
    path = write_sweep(tmp_path, checkpoint, mw_root, grid={"seed": [0, 1]}, baseline=False)
    spec = yaml.safe_load(path.read_text()) | {"reuse": [str(tmp_path / "earlier")]}
    path.write_text(yaml.safe_dump(spec))
    source = tmp_path / "earlier" / "seed=0"  # as an earlier sweep left the same run
    run = next(r for r in plan(load_sweep(path)) if r.name == "seed=0")
    source.mkdir(parents=True)
    (source / "config.yaml").write_text(yaml.safe_dump({**run.config, "out": str(source)}))
    ran = resolve_precision("auto", torch.device("cpu"))  # as this machine runs it: reusable
    (source / "summary.json").write_text(json.dumps({"wall_seconds": 720, "precision": ran}))
    assert main(["sweep", str(path), "--status"]) == 0
    out = capsys.readouterr().out
    assert "0 of 2 runs finished, 2 waiting (1 of them finished in a `reuse` sweep" in out
    assert "about 0.2 h left at 1 run at a time" in out  # seed 1 at seed 0's 720 s
    assert f"not started; eva-rl sweep {path} starts it" in out
    assert not (tmp_path / "runs").exists()


def test_status_reads_a_sweep_on_a_machine_without_its_inputs(
    checkpoint, mw_root, tmp_path, capsys
):
    """`--status` runs nothing, so it answers where the sweep's checkpoint is missing (a machine
    watching another's sweep); starting the sweep there is refused, naming it."""
    path = write_sweep(tmp_path, checkpoint, mw_root, grid={"seed": [0, 1]}, baseline=False)
    spec = yaml.safe_load(path.read_text())
    spec["set"]["checkpoint"] = str(tmp_path / "elsewhere")
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--status"]) == 0
    assert "0 of 2 runs finished, 2 waiting" in capsys.readouterr().out
    assert main(["sweep", str(path)]) == 2
    assert str(tmp_path / "elsewhere") in capsys.readouterr().err


@pytest.mark.slow  # spawns run processes
def test_sweep_runs_all_then_resume_skips_finished_and_reruns_partial(
    checkpoint, mw_root, tmp_path, capsys
):
    path = write_sweep(tmp_path, checkpoint, mw_root)
    assert main(["sweep", str(path), "--status"]) == 0  # nothing run, nothing written
    assert "0 of 4 runs finished, 4 waiting, 0 of 1 baselines\nnot started; eva-rl sweep" in (
        capsys.readouterr().out
    )
    assert not (tmp_path / "runs").exists()
    assert main(["sweep", str(path)]) == 0
    runs = tmp_path / "runs"
    names = sorted(p.name for p in runs.iterdir() if not p.name.startswith(("_", ".")))
    assert ownership.owned(runs, "sweep") and ownership.owned(runs / "method=eva,seed=0", "run")
    assert names == [
        "base_config.yaml",
        "method=eva,seed=0",
        "method=eva,seed=1",
        "method=lora,seed=0",
        "method=lora,seed=1",
        "runs.json",
        "sweep.yaml",
    ]
    index = json.loads((runs / "runs.json").read_text())
    assert {v["status"] for v in index.values()} == {"done"}
    summary = json.loads((runs / "method=eva,seed=1/summary.json").read_text())
    assert summary["method"] == "eva" and summary["seed"] == 1 and summary["task"] == "hammer-v3"
    check_export(runs, tmp_path, capsys)

    # interrupted after a checkpoint (no summary) -> resumed; before any checkpoint -> restarted
    finished = runs / "method=lora,seed=0/summary.json"
    mtime = finished.stat().st_mtime_ns
    (runs / "method=eva,seed=0/summary.json").unlink()
    restarted = runs / "method=lora,seed=1"
    for child in sorted(restarted.rglob("*"), reverse=True):
        if child.name != "config.yaml":  # as a run killed before its first checkpoint leaves it
            child.rmdir() if child.is_dir() else child.unlink()
    (restarted / "tb").mkdir()
    capsys.readouterr()
    assert main(["sweep", str(path), "--status"]) == 0
    status = capsys.readouterr().out
    assert "2 of 4 runs finished, 2 started (running, or stopped and resumable), 1 of 1 " in status
    assert "h left at 2 runs at a time" in status
    saved = yaml.safe_load((runs / "sweep.yaml").read_text())  # as `sweep ... workers=1` saves it
    (runs / "sweep.yaml").write_text(yaml.safe_dump(saved | {"workers": 1}))
    assert main(["sweep", str(path), "--status"]) == 0  # the running invocation's pace
    assert "h left at 1 run at a time" in capsys.readouterr().out
    assert main(["sweep", str(path), "--status", "workers=2"]) == 0  # or the one asked about
    assert "h left at 2 runs at a time" in capsys.readouterr().out
    steps = run_config(next(r for r in plan(load_sweep(path)) if not r.baseline), 1).loop.steps
    # where each started run stands: its log's last progress bar (the train bar, at its end)
    assert re.search(rf"\n  method=eva,seed=0: train {steps}/{steps} \[\S+<00:00", status)
    assert main(["sweep", str(path), "--blind"]) == 0  # the same, without the runs' losses
    blind = capsys.readouterr().out
    assert "loss=" in status and "loss=" not in blind
    assert re.search(rf"\n  method=eva,seed=0: train {steps}/{steps} \[[^=\]]*\]\n", blind)
    saved = yaml.safe_load((runs / "sweep.yaml").read_text())
    del saved["command"]  # as an eva_rl before online sweeps wrote it: a finetune sweep
    (runs / "sweep.yaml").write_text(yaml.safe_dump(saved))
    assert main(["sweep", str(path), "workers=1"]) == 0
    assert "4 runs (2 run now, 2 already finished) and 1 baseline" in capsys.readouterr().out
    rerun = json.loads((runs / "runs.json").read_text())  # a finished run keeps its run time
    assert rerun["method=lora,seed=0"]["seconds"] == index["method=lora,seed=0"]["seconds"]
    baseline = json.loads((runs / "_baseline/hammer-v3.json").read_text())
    assert baseline["config"]["baseline"] and len(baseline["envs"]["hammer-v3"]["episodes"]) == 1
    assert finished.stat().st_mtime_ns == mtime
    assert (runs / "method=eva,seed=0/summary.json").is_file()
    assert (restarted / "summary.json").is_file()
    log = (runs / "_logs" / "method=eva,seed=0.log").read_text()
    assert "Traceback" not in log


def check_export(runs, tmp_path, capsys):
    """`eva-rl export` of a finished sweep: every file but checkpoints, weights and logs, and
    the report made from the export is the report made from the sweep."""
    export = tmp_path / "export"
    assert main(["export", str(runs), "--out", str(export)]) == 0
    heavy = ("checkpoints", "_logs")
    kept = {
        p.relative_to(runs)
        for p in runs.rglob("*")
        if p.is_file()
        and not set(heavy) & set(p.relative_to(runs).parts)
        and p.suffix != ".safetensors"
        and p.name != ownership.LOCK  # the process state of the sweep and its runs
    }
    assert {p.relative_to(export) for p in export.rglob("*") if p.is_file()} == kept
    assert (export / "method=eva,seed=0/eva/eva.json").is_file()
    assert (export / "_baseline/hammer-v3.json").is_file()
    capsys.readouterr()
    assert main(["export", str(runs), "--out", str(export)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    (export / "stale.txt").write_text("from an earlier export")
    assert main(["export", str(runs), "--out", str(export), "--overwrite"]) == 0
    assert {p.relative_to(export) for p in export.rglob("*") if p.is_file()} == kept
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []
    assert main(["export", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "no finished runs (summary.json) under" in capsys.readouterr().err
    # --weights: the final adapters and EVA states too, never checkpoints; the runs load from it
    loadable = tmp_path / "export-weights"
    assert main(["export", str(runs), "--out", str(loadable), "--weights"]) == 0
    final = {
        p.relative_to(runs) for p in runs.rglob("*.safetensors") if "checkpoints" not in p.parts
    }
    assert Path("method=eva,seed=0/agent/adapter_model.safetensors") in final
    assert Path("method=eva,seed=0/eva/eva_state.safetensors") in final
    assert {p.relative_to(loadable) for p in loadable.rglob("*") if p.is_file()} == kept | final
    run = "method=eva,seed=0/agent"
    there, here = load_agent(runs / run).model, load_agent(loadable / run).model
    assert all(
        torch.equal(a, b)
        for a, b in zip(there.state_dict().values(), here.state_dict().values(), strict=True)
    )
    for source in (runs, export):
        assert main(["report", str(source), "--out", str(tmp_path / f"report-{source.name}")]) == 0
    report = {n: (tmp_path / n / "runs.csv").read_text() for n in ("report-runs", "report-export")}
    assert report["report-runs"] == report["report-export"]


@pytest.mark.slow  # spawns run processes
def test_reuse_copies_finished_runs_of_the_same_config_from_another_sweep(
    checkpoint, mw_root, tmp_path, capsys
):
    first = write_sweep(tmp_path, checkpoint, mw_root, grid={"seed": [0]}, baseline=False)
    assert main(["sweep", str(first), "set.method.name=lora"]) == 0
    source = tmp_path / "runs" / "seed=0"
    older = yaml.safe_load((source / "config.yaml").read_text())  # as an eva_rl before videos
    older["eval"] = {k: v for k, v in older["eval"].items() if not k.startswith("video")}
    (source / "config.yaml").write_text(yaml.safe_dump(older))  # wrote it: still the same run
    spec = yaml.safe_load(first.read_text())
    spec |= {"out": str(tmp_path / "more"), "grid": {"seed": [0, 1]}, "workers": 1,
             "set": {"task": "hammer-v3", "method.name": "lora"},
             "reuse": [str(tmp_path / "runs")]}  # fmt: skip
    second = tmp_path / "more.yaml"
    second.write_text(yaml.safe_dump(spec))
    partial = tmp_path / "runs" / ".seed=0.copying"  # an interrupted copy, no agent: not taken
    partial.mkdir()
    for name in ("config.yaml", "summary.json"):
        shutil.copy(source / name, partial / name)
    capsys.readouterr()
    assert main(["sweep", str(second)]) == 0
    assert "2 runs (1 run now, 1 already finished, 1 of them copied from reuse)" in (
        capsys.readouterr().out
    )
    copy = tmp_path / "more" / "seed=0"
    assert (copy / "summary.json").read_text() == (source / "summary.json").read_text()
    assert not (copy / "checkpoints").exists() and (copy / "agent").is_dir()
    index = json.loads((tmp_path / "more" / "runs.json").read_text())
    assert index["seed=0"]["copied_from"] == str(source)
    assert "copied_from" not in index["seed=1"]  # another seed: run, not copied
    summary = json.loads((tmp_path / "more" / "seed=1" / "summary.json").read_text())
    assert summary["seed"] == 1
    spec["reuse"] = [str(tmp_path / "nowhere")]
    second.write_text(yaml.safe_dump(spec))
    with pytest.warns(UserWarning, match="nowhere is not a directory; its runs will run here"):
        assert main(["sweep", str(second)]) == 0  # nothing left to run, nothing to copy


def test_the_time_left_counts_a_started_run_at_the_share_of_its_loop_left(tmp_path):
    """Two runs at 95% of their loop are about a tenth of a run, not two runs; a run that is
    collecting or evaluating counts whole (its bar says nothing of the run's progress)."""
    from eva_rl.sweeps.status import SweepStatus

    bars = {"b": "train 9500/10000 [2:00:00<03:00, 1.1step/s]", "c": "online 4750/5000 [1:00:00",
            "d": "collect 3/16 [00:05<00:20]"}  # fmt: skip
    status = SweepStatus(tmp_path, done=["a"], started=["b", "c", "d"], waiting=["e"], where=bars)
    status.__dict__["seconds"] = {"a": 3600.0}  # one finished run: an hour
    assert status.hours_left(1) == pytest.approx(0.05 + 0.05 + 1 + 1)
    assert status.hours_left(2) == pytest.approx(2.1 / 2)


def test_a_reordered_grid_in_the_same_out_is_refused(checkpoint, mw_root, tmp_path, capsys):
    """The same grid with its keys swapped names every run anew (`seed=0,method=lora`): it
    would run them all again beside the finished ones."""
    from eva_rl.config import save_config

    path = write_sweep(tmp_path, checkpoint, mw_root)  # method.name, then seed
    spec = yaml.safe_load(path.read_text())
    swapped = tmp_path / "swapped.yaml"
    grid = dict(reversed(spec["grid"].items()))
    swapped.write_text(yaml.safe_dump(spec | {"grid": grid}, sort_keys=False))
    (tmp_path / "runs").mkdir()
    save_config(load_sweep(swapped), tmp_path / "runs" / "sweep.yaml")  # as its start saved it
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "holds this sweep with its grid keys in another order (seed, method.name)" in err
    assert os.listdir(tmp_path / "runs") == ["sweep.yaml"]


def test_a_changed_grid_in_the_same_out_is_refused(checkpoint, mw_root, tmp_path, capsys):
    path = write_sweep(tmp_path, checkpoint, mw_root)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "sweep.yaml").write_text(yaml.safe_dump({"base": "x", "grid": {}}))
    assert main(["sweep", str(path)]) == 2
    assert "holds a different sweep" in capsys.readouterr().err
    assert os.listdir(tmp_path / "runs") == ["sweep.yaml"]


def test_a_changed_base_config_is_refused(checkpoint, mw_root, tmp_path, capsys):
    path = write_sweep(tmp_path, checkpoint, mw_root)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "base_config.yaml").write_text(yaml.safe_dump({"optim": {"lr": 0.5}}))
    assert main(["sweep", str(path)]) == 2
    assert "base.yaml changed since this sweep started" in capsys.readouterr().err
    assert sorted(os.listdir(runs)) == ["base_config.yaml"]


def test_a_run_without_its_dataset_is_refused_before_any_starts(
    checkpoint, mw_root, tmp_path, capsys
):
    path = write_sweep(
        tmp_path, checkpoint, mw_root, grid={"task": ["hammer-v3", "shelf-place-v3"]}
    )  # the test data has no shelf-place dataset
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "run task=shelf-place-v3: Minari dataset 'metaworld/shelf-place-v3/scripted-v0' " in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # spawns run processes
def test_a_failing_run_is_reported_and_the_others_finish(checkpoint, mw_root, tmp_path, capsys):
    path = write_sweep(tmp_path, checkpoint, mw_root, grid={"optim.lr": [3e-3, 1e15]})
    assert main(["sweep", str(path)]) == 1  # lr 1e15: the loss becomes NaN
    err = capsys.readouterr().err
    assert "1 of 3 runs failed" in err and "optim.lr=1000000000000000.0" in err  # + baseline
    assert main(["sweep", str(path), "--status"]) == 0
    status = capsys.readouterr().out
    assert "1 of 2 runs finished, 1 failed, 1 of 1 baselines" in status
    assert "failed: optim.lr=1000000000000000.0 (logs in" in status
    assert (tmp_path / "runs/optim.lr=0.003/summary.json").is_file()
    log = (tmp_path / "runs/_logs/optim.lr=1000000000000000.0.log").read_text()
    assert "loss became nan" in log


@pytest.mark.slow  # spawns run processes
def test_quickstart_at_a_tiny_size(checkpoint, mw_root, tmp_path, capsys):
    base = write_base(tmp_path, checkpoint, mw_root)
    out = tmp_path / "qs"
    args = ["quickstart", "--task", "hammer-v3", "--steps", "4", "--out", str(out)]
    args += [f"checkpoint={checkpoint}", f"data_root={mw_root}", f"base={base}", "eval_every=2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| eva r2 rho2 |" in printed and "| lora r2 |" in printed
    assert f"tensorboard --logdir {out / 'runs'}" in printed
    (video,) = (out / "videos").glob("hammer-v3-seed*.mp4")  # base agent, EVA, LoRA
    assert f"the agents side by side on one episode: {video}" in printed
    readme = (out / "report" / "README.md").read_text()
    assert "eva-rl quickstart --task hammer-v3 --steps 4" in readme
    for method in ("eva", "lora"):
        summary = json.loads((out / f"runs/method={method}/summary.json").read_text())
        assert [e["step"] for e in summary["eval"]] == [0, 2, 4]
    finished = out / "runs/method=eva/summary.json"
    mtime = finished.stat().st_mtime_ns
    assert main(args) == 0  # again: finished runs are reused, the report is rewritten
    assert finished.stat().st_mtime_ns == mtime


def test_executor_settings_are_checked_before_anything_is_written(checkpoint, mw_root, tmp_path):
    for extra, message in [
        ({"executor": "slurm"}, r"'executor' must be one of \['local', 'ray'\], got 'slurm'"),
        ({"address": "auto"}, "address is a Ray setting"),
        ({"gpus": -1}, "gpus must be >= 0"),
        ({"gpus": 1.5}, "gpus per run must be a fraction <= 1 or whole"),
    ]:
        path = write_sweep(tmp_path, checkpoint, mw_root, **extra)
        with pytest.raises(UserError, match=message):
            sweep(load_sweep(path), progress=False)
    if not torch.cuda.is_available():
        path = write_sweep(tmp_path, checkpoint, mw_root, gpus=0.25)
        with pytest.raises(UserError, match="gpus=0.25 per run, but no CUDA device is visible"):
            sweep(load_sweep(path), progress=False)
    assert not (tmp_path / "runs").exists()


def test_gpu_slots_share_gpus_by_fraction_and_whole_numbers():
    assert gpu_slots(0, 2) == []
    assert gpu_slots(0.25, 2) == ["cuda:0"] * 4 + ["cuda:1"] * 4
    assert gpu_slots(1, 3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert gpu_slots(2, 5) == ["cuda:0", "cuda:2"]
    with pytest.raises(UserError, match="only 1 CUDA device"):
        gpu_slots(2, 1)


def test_status_counts_the_runs_a_gpu_node_runs_at_once(
    checkpoint, mw_root, tmp_path, monkeypatch, capsys
):
    """A quarter of a GPU per run on 2 GPUs: 8 runs at once (the local executor's count), 2
    here by the cores when the machine asked has no GPU (a login node)."""
    from eva_rl.sweeps.config import SweepConfig
    from eva_rl.sweeps.executors import local_shares

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    slots, workers, _ = local_shares(SweepConfig(out="o", grid={"seed": [0]}, gpus=0.25), 20)
    assert (len(slots), workers) == (8, 8)
    assert local_shares(SweepConfig(out="o", grid={"seed": [0]}, gpus=0.25, workers=3), 20)[1] == 3
    grid = {"seed": list(range(10)), "method.name": ["lora"]}
    path = write_sweep(tmp_path, checkpoint, mw_root, grid=grid, gpus=0.25, baseline=False,
                       workers=0)  # fmt: skip
    finished = tmp_path / "runs" / "seed=0,method=lora"  # a pace to estimate from
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text(json.dumps({"wall_seconds": 3600}))
    lora = {"overrides": {"method.name": "lora"}}
    index = {f"seed={i},method=lora": {**lora, "status": "pending"} for i in range(10)}
    index["seed=0,method=lora"]["status"] = "done"
    (tmp_path / "runs" / "runs.json").write_text(json.dumps(index))
    assert main(["sweep", str(path), "--status"]) == 0
    assert "about 1.1 h left at 8 runs at a time" in capsys.readouterr().out  # 9 x 1 h / 8
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["sweep", str(path), "--status", "workers=2"]) == 0
    assert "about 4.5 h left at 2 runs at a time" in capsys.readouterr().out


def test_the_ray_executor_without_ray_says_how_to_install_it(
    checkpoint, mw_root, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    path = write_sweep(tmp_path, checkpoint, mw_root, executor="ray")
    with pytest.raises(UserError, match=r"needs Ray: pip install 'eva_rl\[ray\]'"):
        sweep(load_sweep(path), progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_local_ray_instance_runs_its_tasks_at_the_sweeps_priority():
    """Ray's default worker niceness (15) starved a local sweep's runs beside other work."""
    ray = pytest.importorskip("ray")
    start_ray(None)
    try:
        niceness = ray.get(ray.remote(lambda: os.nice(0)).remote())
    finally:
        ray.shutdown()
    assert niceness == os.nice(0)


@pytest.mark.slow  # two Ray starts, three tiny runs: ~28 s on 2 busy cores
def test_a_sweep_on_a_local_ray_instance_completes_and_resumes(
    checkpoint, mw_root, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)  # a relative out: Ray tasks must run in this directory
    path = write_sweep(tmp_path, checkpoint, mw_root, out="runs", grid={"seed": [0, 1]})
    assert main(["sweep", str(path), "workers=0", "--executor", "ray"]) == 0  # all in flight
    assert "2 runs (2 run now, 0 already finished)" in capsys.readouterr().out
    runs = tmp_path / "runs"
    index = json.loads((runs / "runs.json").read_text())
    assert {k: v["status"] for k, v in index.items()} == {
        "_baseline.hammer-v3": "done",
        "seed=0": "done",
        "seed=1": "done",
    }
    assert all((runs / f"seed={seed}/summary.json").is_file() for seed in (0, 1))
    cfg = load_sweep(path, ["executor=ray"])
    assert sweep(cfg, progress=False)["ran"] == 0  # finished runs are skipped (no Ray started)

    # interrupted after its last checkpoint: resumed there; the finished one is left alone
    finished = runs / "seed=1/summary.json"
    mtime = finished.stat().st_mtime_ns
    (runs / "seed=0/summary.json").unlink()
    config = runs / "seed=0/config.yaml"
    written = config.stat().st_mtime_ns
    result = sweep(cfg, progress=False)
    assert (result["ran"], result["skipped"]) == (1, 1)
    assert config.stat().st_mtime_ns == written  # resumed (a new run would be refused its folder)
    assert (runs / "seed=0/summary.json").is_file() and finished.stat().st_mtime_ns == mtime
    assert "Traceback" not in (runs / "_logs/seed=0.log").read_text()


def test_a_sweep_resumed_where_auto_means_another_precision_refuses_until_pinned(
    checkpoint, mw_root, tmp_path, capsys
):
    here = resolve_precision("auto", torch.device("cpu"))
    other = {"fp32": "bf16", "bf16": "fp32"}[here]
    path = write_sweep(
        tmp_path, checkpoint, mw_root, grid={"seed": [0, 1]}, baseline=False, workers=1
    )
    assert main(["sweep", str(path)]) == 0
    shutil.rmtree(tmp_path / "runs" / "seed=1")  # not run yet, as it were
    done = tmp_path / "runs" / "seed=0" / "summary.json"
    summary = json.loads(done.read_text())
    assert summary["precision"] == here
    done.write_text(json.dumps(summary | {"precision": other}))  # as made on another machine
    spec = yaml.safe_load(path.read_text())
    before = sorted(os.listdir(tmp_path / "runs"))
    capsys.readouterr()
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"would mix precisions (1 in {min(here, other)}, 1 in {max(here, other)}" in err
    assert f"add `precision: {other}` (the finished runs') to the sweep file" in err
    assert sorted(os.listdir(tmp_path / "runs")) == before  # nothing started, nothing written
    path.write_text(yaml.safe_dump(spec | {"precision": other}))
    assert main(["sweep", str(path)]) == 0
    new = json.loads((tmp_path / "runs" / "seed=1" / "summary.json").read_text())
    assert new["precision"] == other
    with pytest.raises(UserError, match="sweep precision must be fp32 or bf16, not 'fp16'"):
        load_sweep(path, ["precision=fp16"])


def test_status_of_a_started_sweep_checks_the_file_it_is_given(
    checkpoint, mw_root, tmp_path, capsys
):
    """`--status` printed the saved status whatever the file said (another grid, a bad
    method), exit 0, where running that file is refused."""
    from eva_rl.config import save_config

    path = write_sweep(tmp_path, checkpoint, mw_root)
    out = tmp_path / "runs"
    out.mkdir()
    save_config(load_sweep(path), out / "sweep.yaml")  # as a started sweep has it
    (out / "runs.json").write_text("{}\n")
    assert main(["sweep", str(path), "--status"]) == 0
    capsys.readouterr()
    for change in ({"grid": {"seed": [0, 1, 2]}}, {"set": {"method.name": "lorax"}}):
        changed = tmp_path / "changed.yaml"
        changed.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | change))
        assert main(["sweep", str(changed), "--status"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{out} holds a different sweep" in err, err


@pytest.mark.parametrize("damage", ["{", "[]", '{"x": 1}'])
def test_a_damaged_runs_index_is_refused_with_the_way_back(
    checkpoint, mw_root, tmp_path, capsys, damage
):
    path = write_sweep(tmp_path, checkpoint, mw_root)
    out = tmp_path / "runs"
    out.mkdir()
    (out / "runs.json").write_text(damage)
    for status in ([], ["--status"]):
        assert main(["sweep", str(path), *status]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{out / 'runs.json'} is damaged" in err, err
        assert "delete it and run the sweep again, which rebuilds it" in err
    assert [p.name for p in out.iterdir()] == ["runs.json"]  # nothing written
    assert (out / "runs.json").read_text() == damage
