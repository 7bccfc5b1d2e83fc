"""The wheel's build step: copy the files that travel with eva_rl (eva_rl/assets.py:
TRAVELLING) into the built package as eva_rl/_data/, where an installed eva_rl finds them.
An editable install reads them in place and copies nothing. Everything else is pyproject.toml."""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("_assets", HERE / "eva_rl" / "assets.py")
assets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(assets)  # stdlib only: no eva_rl dependency needed to build


class BuildWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in assets.TRAVELLING:
            source, target = HERE / name, Path(self.build_lib) / "eva_rl" / "_data" / name
            if not source.exists():
                raise SystemExit(f"setup.py: {source} is missing; build from a full checkout")
            shutil.copytree(source, target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithData})
