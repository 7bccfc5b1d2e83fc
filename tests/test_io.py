"""Atomic writes leave the old file on failure and no temp file behind; a checkpoint folder is
never lost between its renames; output checks refuse paths that cannot be written before any
work."""

import os

import pytest

from eva_rl.errors import UserError
from eva_rl.io import (
    atomic_write_json,
    atomic_write_text,
    check_writable,
    checkpoint_holds,
    restore_checkpoint_dir,
    save_checkpoint_dir,
)


def test_atomic_write_replaces_or_keeps_the_old_file(tmp_path):
    path = tmp_path / "sub" / "f.json"
    atomic_write_json(path, {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'

    class Boom:
        def __str__(self):
            raise RuntimeError("serialising failed")

    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": Boom()})  # json refuses the object before any write
    assert path.read_text() == '{\n  "a": 1\n}\n'
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert os.listdir(path.parent) == ["f.json"]  # no temp file left
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_check_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    check_writable(tmp_path / "new" / "deeper" / "out.json")  # creatable: fine
    check_writable(tmp_path, directory=True)
    with pytest.raises(UserError, match="is a file"):
        check_writable(blocker, directory=True)
    with pytest.raises(UserError, match="is a directory"):
        check_writable(tmp_path)
    with pytest.raises(UserError, match=f"cannot write {blocker / 'x.json'}"):
        check_writable(blocker / "x.json")


def _write(step):
    return lambda folder: (folder / "state.pt").write_text(step)


def test_a_checkpoint_interrupted_between_its_renames_keeps_the_previous_one(tmp_path, monkeypatch):
    """SIGTERM (a sweep stopping its runs) arrives as KeyboardInterrupt, anywhere: after the old
    checkpoint was moved aside and before the new one took its place, the old one goes back."""
    latest = tmp_path / "checkpoints" / "latest"
    save_checkpoint_dir(latest, _write("500"))
    real, calls = os.rename, []

    def interrupted_second(src, dst):
        calls.append(src)
        if len(calls) == 2:  # latest -> .latest.old-*, done; .latest.tmp-* -> latest: stopped
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "rename", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_dir(latest, _write("1000"))
    monkeypatch.setattr(os, "rename", real)
    assert (latest / "state.pt").read_text() == "500"
    assert os.listdir(latest.parent) == ["latest"]
    save_checkpoint_dir(latest, _write("1000"))
    assert (latest / "state.pt").read_text() == "1000" and os.listdir(latest.parent) == ["latest"]


def test_a_checkpoint_killed_between_its_renames_is_put_back(tmp_path):
    """A kill (no cleanup runs) there leaves the previous checkpoint under a hidden name: it
    counts as the run's checkpoint and is restored; a half-written new one is removed."""
    folder = tmp_path / "checkpoints"
    (folder / ".latest.old-0badcafe").mkdir(parents=True)
    (folder / ".latest.old-0badcafe" / "state.pt").write_text("500")
    (folder / ".latest.tmp-1badcafe").mkdir()  # the new one, complete or not
    assert checkpoint_holds(folder / "latest", "state.pt")
    assert not checkpoint_holds(folder / "latest", "other.pt")
    restore_checkpoint_dir(folder / "latest")
    assert (
        os.listdir(folder) == ["latest"] and (folder / "latest" / "state.pt").read_text() == "500"
    )


def test_an_atomic_write_reads_the_umask_without_setting_it(tmp_path, monkeypatch):
    """Setting it (even back) is process-wide: another thread's file made meanwhile gets 0o666."""
    mode = 0o666 & ~_umask()
    monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("the umask was set"))
    atomic_write_text(tmp_path / "f", "x")
    assert oct((tmp_path / "f").stat().st_mode & 0o777) == oct(mode)
