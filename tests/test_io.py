"""Atomic writes leave the old file on failure and no temp file behind; output checks refuse
paths that cannot be written before any work."""

import os

import pytest

from eva_rl.errors import UserError
from eva_rl.io import atomic_write_json, atomic_write_text, check_writable


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
