"""Atomic writes leave the old file on failure and no temp file behind; a checkpoint folder is
never lost between its renames; output checks refuse paths that cannot be written before any
work."""

import os

import pytest

from eva_rl.errors import UserError
from eva_rl.io import (
    atomic_write_dir,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    checkpoint_holds,
    restore_dir,
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
    atomic_write_dir(latest, _write("500"))
    real, calls = os.rename, []

    def interrupted_second(src, dst):
        calls.append(src)
        if len(calls) == 2:  # latest -> .latest.old-*, done; .latest.tmp-* -> latest: stopped
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "rename", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_dir(latest, _write("1000"))
    monkeypatch.setattr(os, "rename", real)
    assert (latest / "state.pt").read_text() == "500"
    assert os.listdir(latest.parent) == ["latest"]
    atomic_write_dir(latest, _write("1000"))
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
    restore_dir(folder / "latest")
    assert (
        os.listdir(folder) == ["latest"] and (folder / "latest" / "state.pt").read_text() == "500"
    )


def test_a_folder_written_over_a_symlink_replaces_the_link_and_leaves_its_target(tmp_path):
    """An export's --out may be a link (to a results disk): the link goes, the folder it
    pointed to keeps its files; a dangling link is replaced the same way."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "state.pt").write_text("old")
    link = tmp_path / "out"
    link.symlink_to(target)
    atomic_write_dir(link, _write("new"))
    assert not link.is_symlink() and (link / "state.pt").read_text() == "new"
    assert (target / "state.pt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "out"]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    atomic_write_dir(dangling, _write("new"))
    assert (dangling / "state.pt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["dangling", "elsewhere", "out"]


def test_an_atomic_write_reads_the_umask_without_setting_it(tmp_path, monkeypatch):
    """Setting it (even back) is process-wide: another thread's file made meanwhile gets 0o666."""
    mode = 0o666 & ~_umask()
    monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("the umask was set"))
    atomic_write_text(tmp_path / "f", "x")
    assert oct((tmp_path / "f").stat().st_mode & 0o777) == oct(mode)
