"""The files that travel with eva_rl are found from any directory (eva_rl/assets.py)."""

from pathlib import Path

from eva_rl import assets
from eva_rl.assets import SHIPPED, locate, locate_checkpoint
from eva_rl.envs import available_suites


def test_travelling_files_resolve_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVA_RL_ENVS_DIR", raising=False)
    assert locate_checkpoint(SHIPPED) == assets.root() / SHIPPED
    base = "configs/finetune/cw10-cpu.yaml"
    assert Path(locate(base)) == assets.root() / base
    assert locate("configs/no-such.yaml") == "configs/no-such.yaml"  # the caller's own error
    assert "metaworld/cw10" in available_suites()
    (tmp_path / "configs/finetune").mkdir(parents=True)
    (tmp_path / base).write_text("seed: 1\n")  # the user's own copy wins over the travelling one
    assert locate(base) == base


def test_every_travelling_path_exists_in_the_checkout():
    """setup.py copies these into the wheel; a missing one would fail the build."""
    for name in assets.TRAVELLING:
        assert (assets.CHECKOUT / name).exists(), name


def test_assets_loads_alone_as_setup_py_loads_it(tmp_path):
    """setup.py runs eva_rl/assets.py as a lone file before eva_rl is installed (a wheel's
    build): it must import nothing of eva_rl at module level. `-S`: no site-packages, so no
    installed eva_rl to fall back on."""
    import subprocess
    import sys

    code = ("import importlib.util, sys; "
            "spec = importlib.util.spec_from_file_location('_assets', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(m.TRAVELLING)")  # fmt: skip
    path = str(assets.CHECKOUT / "eva_rl" / "assets.py")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code, path],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "configs" in done.stdout
