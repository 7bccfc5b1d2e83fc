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

import json
import os
import re
from importlib import resources
from pathlib import Path

# stdlib only at import time: setup.py loads this file alone, before eva_rl is installed

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


STATS_FIELDS = "state_mean, state_std, return_scale, context_length, horizon"
STATS_FIX = f"pass --stats FILE with {STATS_FIELDS} (examples: envs/hub/*.json)"


def hub_stats(hub_id: str) -> Path:
    """The stats that travel for hub DT `owner/name` (`envs/hub/name.json`), refused unless
    they record that very model: a fork of the same name under another owner may be trained on
    other data, and acting with another model's normalisation fails without an error."""
    from eva_rl.errors import UserError

    path = hub_stats_dir() / f"{hub_id.split('/')[-1]}.json"
    if not path.is_file():  # a mistyped local path reads as a hub id
        raise UserError(
            f"{hub_id} is not a local directory (no such path), and no stats are known for it "
            f"as a Hugging Face hub id; check the path, or for a hub checkpoint {STATS_FIX}"
        )
    recorded = json.loads(path.read_text()).get("provenance", {}).get("model")
    if recorded != hub_id:
        raise UserError(
            f"the stats in {path} are those of {recorded}, not of {hub_id}, which may be "
            f"trained on other data; {STATS_FIX}"
        )
    return path


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
    from eva_rl.errors import UserError

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
