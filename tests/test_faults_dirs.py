"""Nothing lost (issue 31): only folders eva_rl made are replaced, one process per run or sweep
folder, SIGTERM means what Ctrl-C means, an interrupted report leaves nothing, a run folder can
be moved and resumed. Real processes, signals and files."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from test_faults import finetune_args, one_line_error, start, tiny_sweep, wait_for

from eva_rl import ownership
from eva_rl.cli import main


def test_a_folder_eva_rl_did_not_make_is_never_replaced(checkpoint, mw_root, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "tb").mkdir(parents=True)
    (mine / "config.yaml").write_text("my own notes\n")
    assert main(finetune_args(checkpoint, mw_root, mine)) == 2
    one_line_error(capsys, f"{mine} exists and was not made by eva-rl", "choose another --out")
    assert (mine / "config.yaml").read_text() == "my own notes\n" and (mine / "tb").is_dir()
    report = tmp_path / "report"
    report.mkdir()
    (report / "curves.csv").write_text("mine\n")
    assert main(["report", str(mine), "--out", str(report), "--overwrite"]) == 2
    one_line_error(capsys, "holds curves.csv, which eva-rl did not write")
    assert (report / "curves.csv").read_text() == "mine\n"


def test_export_into_its_own_source_is_refused(checkpoint, mw_root, tmp_path, capsys):
    out = tmp_path / "runs" / "a"
    assert main(finetune_args(checkpoint, mw_root, out)) == 0
    capsys.readouterr()
    assert main(finetune_args(checkpoint, mw_root, out)) == 2  # an eva_rl run, finished
    one_line_error(capsys, f"{out} holds a run; pass resume=true")
    source = tmp_path / "runs"
    assert main(["export", str(source), "--out", str(source), "--overwrite"]) == 2
    one_line_error(capsys, "is inside the runs it exports")
    assert (out / "agent").is_dir() and any((out / "checkpoints").iterdir())


def _runs(folder, *names):
    """A folder of finished runs as export reads them (a summary each), made by eva_rl."""
    ownership.claim(folder, "sweep")
    for name in names:
        (folder / name / "checkpoints" / "latest").mkdir(parents=True)
        (folder / name / "summary.json").write_text("{}")
    return folder


def test_export_replaces_only_an_earlier_export_and_never_its_source(tmp_path, capsys):
    """--overwrite replaces an export; never a sweep's out (its checkpoints, a live run), a
    folder holding the source, nor one eva_rl did not make; a single run is named as such."""
    sweep_a, sweep_b = _runs(tmp_path / "a", "r1"), _runs(tmp_path / "b", "r9")
    assert main(["export", str(sweep_b), "--out", str(sweep_a), "--overwrite"]) == 2
    one_line_error(capsys, f"{sweep_a} is an eva-rl folder of runs, not an export")
    inner = _runs(tmp_path / "a" / "group", "r2")
    assert main(["export", str(inner), "--out", str(sweep_a), "--overwrite"]) == 2
    one_line_error(capsys, f"--out {sweep_a} holds the runs it exports")
    assert main(["export", str(sweep_a / "r1"), "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "is one run; export the folder that holds its runs")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "runs.json").write_text("{}")  # like an old export, but it holds checkpoints
    (mine / "checkpoints").mkdir()
    assert main(["export", str(sweep_b), "--out", str(mine), "--overwrite"]) == 2
    one_line_error(capsys, f"{mine} exists and was not made by eva-rl")
    assert (sweep_a / "r1" / "checkpoints" / "latest").is_dir() and (mine / "runs.json").is_file()
    swept = _runs(tmp_path / "swept", "r3")  # an export copied back and swept on: its marker
    ownership.mark(swept, "export")  # says export, its runs hold checkpoints
    assert main(["export", str(sweep_b), "--out", str(swept), "--overwrite"]) == 2
    one_line_error(capsys, f"{swept} is an eva-rl folder of runs, not an export")
    assert (swept / "r3" / "checkpoints" / "latest").is_dir()
    assert not list(tmp_path.glob(".*"))  # no staging folder left


def test_an_export_that_fails_or_was_killed_while_swapping_loses_nothing(tmp_path, monkeypatch):
    import shutil

    from eva_rl.sweeps.export import export_runs

    src, dst = _runs(tmp_path / "sweep", "r1", "r2"), tmp_path / "export"
    export_runs(src, dst)
    real = shutil.copytree

    def full_disk(source, target, **kwargs):
        if source.name == "r2":
            raise OSError(28, "No space left on device")
        return real(source, target, **kwargs)

    monkeypatch.setattr(shutil, "copytree", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_runs(src, dst, overwrite=True)
    monkeypatch.setattr(shutil, "copytree", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "sweep"]  # nothing staged
    dst.rename(tmp_path / ".export.old-0000")  # killed between the swap's renames
    (src / "r3").mkdir()
    (src / "r3" / "summary.json").write_text("{}")
    export_runs(src, dst, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "sweep"]
    assert sorted(p.name for p in dst.iterdir() if not p.name.startswith(".")) == ["r1", "r2", "r3"]


def _hold_lock(folder, kind):
    """Another process that made `folder` and works in it (holds its lock) for a minute."""
    code = (
        "import sys, time; from eva_rl import ownership; "
        f"ownership.claim({str(folder)!r}, {kind!r}); "
        f"lock = ownership.DirectoryLock({str(folder)!r}, 'test'); "
        "print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_command_on_a_folder_in_use_is_refused_naming_the_process(
    checkpoint, mw_root, tmp_path, capsys
):
    run = tmp_path / "run"
    holder = _hold_lock(run, "run")  # a live run before its first checkpoint
    try:
        assert main(finetune_args(checkpoint, mw_root, run)) == 2
        one_line_error(capsys, f"{run} is in use by eva-rl process {holder.pid}")
        assert (run / ownership.MARKER).is_file()  # the live run's folder is untouched
        sweep = tiny_sweep(tmp_path, checkpoint, mw_root, {"method.name": ["lora"]})
        holder_sweep = _hold_lock(tmp_path / "runs", "sweep")
        try:
            assert main(["sweep", str(sweep)]) == 2
            one_line_error(capsys, f"is in use by eva-rl process {holder_sweep.pid}")
        finally:
            holder_sweep.kill()
    finally:
        holder.kill()
        holder.wait()
    assert main(finetune_args(checkpoint, mw_root, run)) == 0  # the OS freed the lock


def test_an_interrupted_report_leaves_nothing_and_can_be_run_again(
    checkpoint, mw_root, tmp_path, capsys, monkeypatch
):
    runs = tmp_path / "runs"
    assert main(finetune_args(checkpoint, mw_root, runs / "a")) == 0
    out = tmp_path / "report"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("eva_rl.reports.render.readme", interrupted)
        assert main(["report", str(runs), "--out", str(out)]) == 130
    assert not out.exists() and not list(tmp_path.glob(".report*"))
    assert main(["report", str(runs), "--out", str(out)]) == 0
    assert (out / "README.md").is_file() and ownership.owned(out, "report")


def test_a_run_name_too_long_for_a_folder_is_refused_before_anything_is_written(
    checkpoint, mw_root, tmp_path, capsys
):
    sweep = tiny_sweep(tmp_path, checkpoint, mw_root, {"method.name": ["lora"]})
    data = yaml.safe_load(sweep.read_text())
    data["grid"]["optim.weight_decay"] = [float("0." + "1" * 300)]
    data["grid"]["loop.log_every"] = [int("9" * 250)]  # seeds stop at 2**63: a long int elsewhere
    sweep.write_text(yaml.safe_dump(data))
    assert main(["sweep", str(sweep)]) == 2
    one_line_error(capsys, "bytes, over the 255 a folder name may have")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # a process killed for real
def test_a_moved_run_folder_resumes_where_it_is_and_leaves_no_temporary_file(
    checkpoint, mw_root, tmp_path
):
    out = tmp_path / "run"
    more = ["loop.steps=400", "loop.save_every=20"]
    process = start(finetune_args(checkpoint, mw_root, out, *more), tmp_path / "log")
    wait_for(out / "checkpoints" / "latest" / "state.pt", process)
    process.kill()
    process.wait()
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    out.rename(moved)
    checkpoints = moved / "checkpoints"  # as a kill between a checkpoint swap's renames leaves it
    (checkpoints / "latest").rename(checkpoints / ".latest.old-1badcafe")
    (checkpoints / ".latest.tmp-0badcafe").mkdir()  # the new one, half written
    assert main(finetune_args(checkpoint, mw_root, moved, *more, "resume=true")) == 0
    assert (moved / "summary.json").is_file() and not out.exists()
    assert [p.name for p in (moved / "checkpoints").iterdir()] == ["latest"]


@pytest.mark.slow  # processes signalled for real
def test_sigterm_stops_a_sweep_and_its_runs_which_a_rerun_resumes_once(
    checkpoint, mw_root, tmp_path
):
    import psutil
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    grid = {"method.name": ["lora", "eva"]}
    sweep = tiny_sweep(tmp_path, checkpoint, mw_root, grid, steps=600, save_every=10)
    process = start(["sweep", str(sweep)], tmp_path / "sweep.log")
    runs = [tmp_path / "runs" / f"method={m}" for m in ("lora", "eva")]
    for run in runs:
        wait_for(run / "checkpoints" / "latest" / "state.pt", process, timeout=300)
    children = psutil.Process(process.pid).children(recursive=True)
    os.kill(process.pid, signal.SIGTERM)  # the sweep alone, as a scheduler would
    process.wait(timeout=120)
    log = (tmp_path / "sweep.log").read_text()
    assert process.returncode == 130 and "Traceback" not in log, log
    time.sleep(1.0)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert main(["sweep", str(sweep)]) == 0  # resumes each run from its checkpoint
    for run in runs:
        steps = []
        for path in (run / "tb").glob("events.out.tfevents.*"):
            for event in EventFileLoader(str(path)).Load():
                steps += [event.step for v in event.summary.value if v.tag == "train/loss"]
        assert sorted(steps) == sorted(set(steps)) and max(steps) == 600  # each step once


@pytest.fixture
def full_disk(tmp_path):
    """A 400 KB file system (tmpfs): room for a run's config, not for its checkpoints."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip("needs permission to mount a small tmpfs (root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing(checkpoint, mw_root, full_disk, capsys):
    out = full_disk / "run"
    assert main(finetune_args(checkpoint, mw_root, out, "loop.save_every=10")) == 1
    err = capsys.readouterr().err.split("\n")  # (the progress bar redraws with \r)
    said = [line for line in err if "eva-rl" in line]
    assert len(said) == 1 and "eva-rl: no space left on device" in said[0], err
    assert "run the command again" in said[0] and "Traceback" not in "".join(err)
    if out.exists():  # the disk filled after a checkpoint: that one is kept, whole
        assert (out / "checkpoints" / "latest" / "state.pt").is_file()
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["latest"]


def test_a_dataset_the_disk_cannot_hold_is_refused_before_hdf5_starts(full_disk, capsys):
    """h5py meeting a full disk midway ends in a segmentation fault: the room is checked first."""
    args = ["data", "build", "--suite", "cw10", "--tasks", "push-v3", "--episodes", "4"]
    assert main([*args, "--root", str(full_disk)]) == 1
    said = [line for line in capsys.readouterr().err.split("\n") if "eva-rl" in line]
    assert len(said) == 1 and "was not written: it needs about" in said[0], said
    assert not any(full_disk.iterdir())  # no staging left behind
