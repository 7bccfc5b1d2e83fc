"""Shared fixtures: every test gets its own Minari root, so no test touches a user's datasets."""

import pytest


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root
