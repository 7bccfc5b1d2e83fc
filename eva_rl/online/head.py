"""The Gaussian head and temperature saved beside an exported adapter, so an online run's agent
reloads as the stochastic policy it was (the adapter alone gives the mean action)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from eva_rl.errors import UserError
from eva_rl.io import atomic_write_bytes, atomic_write_json
from eva_rl.online.policy import GaussianHead, Temperature

HEAD_WEIGHTS = "gaussian_head.safetensors"
HEAD_CONFIG = "gaussian_head.json"


def save_head(directory: Path, head: GaussianHead, temperature: Temperature) -> None:
    """`gaussian_head.safetensors` (raw log-std, log temperature) and its shape and bounds."""
    from safetensors.torch import save

    tensors = {
        "raw_log_std": head.raw_log_std.detach().cpu().contiguous(),
        "log_temperature": temperature.log_temperature.detach().cpu().reshape(1),
    }
    atomic_write_bytes(Path(directory) / HEAD_WEIGHTS, save(tensors))
    atomic_write_json(Path(directory) / HEAD_CONFIG, {
        "act_dim": int(head.raw_log_std.numel()), "squash": head.squash,
        "log_std_bounds": list(head.log_std_bounds)})  # fmt: skip


def load_head(directory: str | Path) -> tuple[GaussianHead, Temperature]:
    """The head and temperature `save_head` wrote into an agent directory."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / HEAD_CONFIG).is_file():
        raise UserError(f"{directory} holds no Gaussian head ({HEAD_CONFIG}): not an online run's")
    if not (directory / HEAD_WEIGHTS).is_file():
        raise UserError(f"{directory} has no {HEAD_WEIGHTS} (`eva-rl export` leaves weights out "
                        "without --weights): load it from the run's own folder")  # fmt: skip
    config = json.loads((directory / HEAD_CONFIG).read_text())
    tensors = load_file(str(directory / HEAD_WEIGHTS))
    head = GaussianHead(config["act_dim"], squash=config["squash"],
                        log_std_bounds=tuple(config["log_std_bounds"]))  # fmt: skip
    with torch.no_grad():
        head.raw_log_std.copy_(tensors["raw_log_std"])
        temperature = Temperature()
        temperature.log_temperature.copy_(tensors["log_temperature"][0])
    return head, temperature
