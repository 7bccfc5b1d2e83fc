"""Outputs eva_rl did not make are never written into or replaced (report, collect, evaluate's
TensorBoard folder), an overwrite leaves only the new outputs, and outputs that cannot be
written are refused before any work (video into a file, an odd video size)."""

import shutil

import numpy as np
import pytest
import torch
from test_faults import finetune_args, one_line_error
from test_report import write_baseline, write_run

from eva_rl import ownership
from eva_rl.agent import Agent, AgentMeta, ModelConfig, build_model
from eva_rl.cli import main
from eva_rl.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

EVENTS = "events.out.tfevents.*"


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        write_run(root, "hammer-v3", "eva", 8, seed, (0.1, 0.4 + 0.1 * seed), trainable=500)
        write_run(root, "hammer-v3", "lora", 8, seed, (0.1, 0.3 + 0.1 * seed), trainable=600)
    write_baseline(root, "hammer-v3", 0.25)
    return root


@pytest.fixture
def ckpt(tmp_path):
    """A tiny Meta-World agent (39 states, 4 actions, episodes of 20 steps)."""
    torch.manual_seed(0)
    meta = AgentMeta(state_mean=[0.0] * 39, state_std=[1.0] * 39, return_scale=1000.0,
                     context_length=5, horizon=20, target_returns={"push-v3": 1500.0})  # fmt: skip
    model = build_model(ModelConfig(hidden_size=32, n_layer=1, n_head=2, context_length=5), 39, 4)
    Agent(model.eval(), meta).save(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- report -------------------------------------------------------------------------------------


def test_a_report_is_refused_in_a_folder_eva_rl_did_not_make(runs, tmp_path, capsys):
    """Not only the report's CSVs and README: its figures (any name it writes) are someone
    else's in a folder eva_rl did not make, with or without --overwrite (the folders a report
    may go into are the next test's)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "per_task.png").write_text("mine\n")
    (mine / "notes.md").write_text("my notes\n")
    before = files(mine)
    for extra in ([], ["--overwrite"]):
        assert main(["report", str(runs), "--out", str(mine), *extra]) == 2
        one_line_error(capsys, f"{mine} exists and was not made by eva-rl", "holds per_task.png",
                       "choose a new or empty --out")  # fmt: skip
        assert files(mine) == before
    assert not list(tmp_path.glob(".mine.*"))  # no stage left beside it


def test_a_report_overwrite_leaves_the_new_report_notes_and_runs_only(runs, tmp_path):
    """A results folder before its first report (a hand-written notes.md, the runs reported on,
    an eva_rl export) takes one. Overwritten, as committed results are (no marker: recognised
    by its README), figures the earlier report drew and the new one does not (forest.png: no
    comparisons left; rank_allocation.png: no EVA runs) go; the hand-written notes.md and other
    files, and the runs inside the folder, stay."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "notes.md").write_text("mine\n")
    moved = study / "runs"
    runs.rename(moved)
    ownership.claim(study / "export", "export")
    assert main(["report", str(moved), "--out", str(study)]) == 0
    assert (study / "README.md").read_text().rstrip().endswith("mine")
    assert {"forest.png", "rank_allocation.png"} <= {p.name for p in study.iterdir()}
    (study / ownership.MARKER).unlink(missing_ok=True)  # as committed: no marker
    (study / "selection_rule.md").write_text("hand-written\n")
    for eva in moved.glob("hammer-v3/eva-*"):
        shutil.rmtree(eva)
    fresh = tmp_path / "fresh"  # the same report into a new folder: what the overwrite leaves
    assert main(["report", str(moved), "--out", str(fresh)]) == 0
    assert main(["report", str(moved), "--out", str(study), "--overwrite"]) == 0

    def shown(folder):
        return {p.name for p in folder.iterdir() if not p.name.startswith(".")}

    assert shown(study) == shown(fresh) | {"notes.md", "runs", "export", "selection_rule.md"}
    assert "forest.png" not in shown(fresh) and "rank_allocation.png" not in shown(fresh)
    assert (study / "notes.md").read_text() == "mine\n" and any(moved.rglob("summary.json"))
    assert not list(tmp_path.glob(".study.*"))


# --- collect ------------------------------------------------------------------------------------


def collect_args(ckpt, mw_root, out, *extra):
    return ["collect", "--checkpoint", str(ckpt), "--dataset", "metaworld/push-v3/scripted-v0",
            "--data-root", str(mw_root), "--rank", "2", "--max-batches", "4", "--batch-size",
            "16", "--out", str(out), *extra]  # fmt: skip


def test_collect_refuses_a_folder_it_did_not_make_and_replaces_its_own_whole(
    ckpt, mw_root, tmp_path, capsys
):
    mine = tmp_path / "mine"
    (mine / "tb").mkdir(parents=True)
    (mine / "collect_config.yaml").write_text("my own notes\n")
    for extra in ([], ["--overwrite"]):
        assert main(collect_args(ckpt, mw_root, mine, *extra)) == 2
        one_line_error(capsys, f"{mine} exists and was not made by eva-rl", "another --out")
        assert (mine / "collect_config.yaml").read_text() == "my own notes\n"
        assert sorted(p.name for p in mine.iterdir()) == ["collect_config.yaml", "tb"]
    out = tmp_path / "eva"
    assert main(collect_args(ckpt, mw_root, out)) == 0
    assert ownership.owned(out, "collect") and len(list((out / "tb").glob(EVENTS))) == 1
    (out / ownership.MARKER).unlink()  # a result from before markers: still eva_rl's
    assert main(collect_args(ckpt, mw_root, out, "--overwrite")) == 0
    assert len(list((out / "tb").glob(EVENTS))) == 1  # the earlier events went with it
    assert ownership.owned(out, "collect")


# --- evaluate's TensorBoard folder --------------------------------------------------------------


def evaluate_args(ckpt, out, *extra):
    return ["evaluate", "--checkpoint", str(ckpt), "--tasks", "push-v3", "--episodes", "1",
            "--workers", "1", "--device", "cpu", "--out", str(out), *extra]  # fmt: skip


def test_evaluate_overwrite_leaves_only_the_new_events(ckpt, tmp_path, capsys):
    out, tb = tmp_path / "e.json", tmp_path / "e_tb"
    assert main(evaluate_args(ckpt, out)) == 0
    (first,) = tb.glob(EVENTS)
    assert ownership.owned(tb, "evaluation")
    assert main(evaluate_args(ckpt, out, "--overwrite")) == 0
    (second,) = tb.glob(EVENTS)  # one run's events: the earlier file is gone
    assert second != first
    (tb / ownership.MARKER).unlink()  # an evaluation from before markers: its default <out>_tb
    assert main(evaluate_args(ckpt, out, "--overwrite")) == 0
    (third,) = tb.glob(EVENTS)
    assert third != second and ownership.owned(tb, "evaluation")
    out.unlink()  # events without their report: not silently added to
    capsys.readouterr()
    assert main(evaluate_args(ckpt, out)) == 2
    one_line_error(capsys, f"{tb} holds an earlier evaluation's", "pass --overwrite")
    assert list(tb.glob(EVENTS)) == [third] and not out.exists()


def test_evaluate_never_writes_events_into_a_folder_it_did_not_make(ckpt, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    out = tmp_path / "e.json"
    for extra in ([], ["--overwrite"]):
        assert main(evaluate_args(ckpt, out, "--tb", str(mine), *extra)) == 2
        one_line_error(capsys, f"{mine} exists and was not made by eva-rl", "another --tb")
        assert [p.name for p in mine.iterdir()] == ["notes.txt"] and not out.exists()
    run = ownership.claim(tmp_path / "run", "run")  # eva_rl's, but not an evaluation's
    (run / "config.yaml").write_text("a run\n")
    assert main(evaluate_args(ckpt, out, "--tb", str(run), "--overwrite")) == 2
    one_line_error(capsys, f"{run} exists and was made by eva-rl for another use", "--tb")
    assert (run / "config.yaml").read_text() == "a run\n" and ownership.owned(run, "run")


# --- video --------------------------------------------------------------------------------------


def test_video_into_a_file_is_refused_before_any_agent_loads(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("an agent was loaded before the output was checked")

    monkeypatch.setattr("eva_rl.compare.load_agent", never)
    blocker = tmp_path / "videos"
    blocker.write_text("mine\n")
    args = ["video", str(tmp_path / "agent"), "--env", "reach-v3", "--out"]
    assert main([*args, str(blocker)]) == 2
    one_line_error(capsys, f"output {blocker} is a file")
    assert blocker.read_text() == "mine\n"
    folder = tmp_path / "folder"
    (folder / "reach-v3-seed1000.mp4").mkdir(parents=True)  # a folder in a video's place
    assert main([*args, str(folder), "--overwrite"]) == 2
    one_line_error(capsys, "reach-v3-seed1000.mp4 is a directory")


def test_an_odd_video_size_is_refused_before_any_rollout(ckpt, tmp_path, capsys):
    from eva_rl.evaluation import EvalConfig

    with pytest.raises(UserError, match=r"eval.video_size must be an even number"):
        EvalConfig(video=1, video_size=65)
    out = tmp_path / "e.json"
    assert main(evaluate_args(ckpt, out, "--video", "1", "--video-size", "65")) == 2
    one_line_error(capsys, "eval.video_size must be an even number", "got 65")
    assert not out.exists() and not (tmp_path / "e_tb").exists()
    assert not (tmp_path / "e_videos").exists()


def test_write_mp4_refuses_to_rename_an_empty_file(tmp_path):
    """ffmpeg cannot encode an odd frame size in H.264 and does not raise: the empty file it
    leaves never takes the video's name."""
    from eva_rl.video import read_frames, write_mp4

    path = tmp_path / "odd.mp4"
    with pytest.raises(UserError, match=r"ffmpeg wrote nothing .* 65x65 pixels.*even"):
        write_mp4(path, [np.zeros((65, 65, 3), np.uint8)] * 3, fps=10)
    assert list(tmp_path.iterdir()) == []  # neither the video nor its temp file
    write_mp4(path, [np.full((64, 66, 3), 128, np.uint8)] * 3, fps=10)
    assert read_frames(path).shape == (3, 64, 66, 3)


# --- every command replaces only a folder of its own kind ---------------------------------------


def test_a_run_never_replaces_an_eva_rl_folder_of_another_kind_nor_a_finished_run(
    checkpoint, mw_root, tmp_path, capsys
):
    """A run replaces a run folder that stopped before its first checkpoint; before, any
    folder with an eva_rl marker went (a whole sweep, a report with its notes, an export, an
    exported finished run), exit 0."""
    for kind in ("sweep", "report", "export", "collect", "evaluation"):
        folder = tmp_path / kind
        ownership.claim(folder, kind)
        (folder / "notes.md").write_text("mine\n")
        before = files(folder)
        assert main(finetune_args(checkpoint, mw_root, folder)) == 2
        one_line_error(capsys, "made by eva-rl for another use (its .eva_rl marker is not 'run')")
        assert files(folder) == before
    finished = tmp_path / "exported-run"  # a finished run whose checkpoints an export dropped
    ownership.claim(finished, "run")
    (finished / "summary.json").write_text("{}\n")
    before = files(finished)
    assert main(finetune_args(checkpoint, mw_root, finished)) == 2
    one_line_error(capsys, f"{finished} holds a finished run (summary.json)", "another out=")
    assert files(finished) == before
    stale = tmp_path / "stale"  # stopped before its first checkpoint: replaced, as before
    ownership.claim(stale, "run")
    (stale / "config.yaml").write_text("method: {name: lora}\n")
    assert main(finetune_args(checkpoint, mw_root, stale)) == 0
    assert (stale / "summary.json").is_file()


def test_collect_sweep_and_report_refuse_eva_rl_folders_of_another_kind(
    ckpt, mw_root, runs, tmp_path, capsys
):
    run = tmp_path / "run"
    ownership.claim(run, "run")
    (run / "tb").mkdir()
    (run / "tb" / "events.out.tfevents.1").write_bytes(b"training curves")
    before = files(run)
    assert main(collect_args(ckpt, mw_root, run)) == 2  # it replaced the run's tb/
    one_line_error(capsys, f"{run} exists and was made by eva-rl for another use", "--out")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(f"base: {tmp_path / 'base.yaml'}\nout: {run}\ngrid: {{seed: [0]}}\n")
    (tmp_path / "base.yaml").write_text(
        f"task: push-v3\ncheckpoint: {ckpt}\ndata_root: {mw_root}\n"
    )
    assert main(["sweep", str(sweep_file)]) == 2  # it swept inside the run's folder
    one_line_error(capsys, f"{run} exists and was made by eva-rl for another use")
    assert main(["report", str(runs), "--out", str(run)]) == 2
    one_line_error(capsys, f"{run} is an eva-rl run folder, so a report will not write into it")
    assert files(run) == before
