"""Where the files that travel with eva_rl live: the environment suites and the hub agents'
stats (`envs/`), the shipped agent (`results/pretrained/mt40-cpu/agent`) and the configs
(`configs/`, which the quick start and the docs' commands name).

In a checkout (an editable install) they are read in place. A wheel carries copies of them
under `eva_rl/_data/` (setup.py's build step puts them there), found through
`importlib.resources`, so an installed eva_rl runs from any directory. Paths that name them
relative to the checkout (`--checkpoint results/pretrained/mt40-cpu/agent`, the configs'
default) resolve against `root()` wherever the current directory is.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from eva_rl.errors import UserError

SHIPPED = "results/pretrained/mt40-cpu/agent"  # the default checkpoint of finetune and friends
ENVS = "envs"  # the suites (`envs/<family>/<suite>.yaml`) and the hub agents' stats (`envs/hub`)
CONFIGS = "configs"  # the configs the commands default to (quickstart: configs/finetune/...)
TRAVELLING = (ENVS, SHIPPED, CONFIGS)  # what setup.py copies into a wheel's eva_rl/_data/
CHECKOUT = Path(__file__).resolve().parents[1]


def root() -> Path:
    """The installed copies' root where a wheel holds them, else this checkout."""
    data = Path(str(resources.files("eva_rl").joinpath("_data")))
    return data if (data / ENVS).is_dir() else CHECKOUT


def envs_dir() -> Path:
    return root() / ENVS


def hub_stats_dir() -> Path:
    """Stats (`eva_rl.json` fields) of public Decision Transformers on the Hugging Face hub."""
    return root() / ENVS / "hub"


def hub_stats(hub_id: str) -> Path:
    """Where the stats of hub DT `owner/name` travel (`envs/hub/name.json`), if they do."""
    return hub_stats_dir() / f"{hub_id.split('/')[-1]}.json"


def locate(path: str) -> str:
    """`path` as given where it exists (relative to the current directory or absolute), else
    its travelling copy under `root()` where that exists (`configs/finetune/cw10-cpu.yaml`
    run from any directory), else `path` unchanged for the caller's own error."""
    if Path(path).exists() or not (root() / path).exists():
        return path
    return str(root() / path)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def locate_checkpoint(path: str | os.PathLike) -> Path | str:
    """A checkpoint directory (a relative path is also tried against `root()`, where the
    shipped agent lives), or a hub id (`owner/name`) when no such directory exists."""
    local = Path(path)
    for candidate in (local, root() / local):
        if (candidate / "config.json").is_file():
            return candidate
    if not local.exists() and HUB_ID.match(str(path)):
        return str(path)
    default = " (the default: the shipped agent)" if str(path) == SHIPPED else ""
    raise UserError(
        f"{path}{default} is not a checkpoint directory (no config.json) or a hub id; "
        "check the path or pass --checkpoint"
    )
