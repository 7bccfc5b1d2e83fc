"""The commands a sweep's runs can be: each a config dataclass and the function that runs it.
Imported lazily, so that planning a sweep does not load torch before it must."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def config_class(command: str) -> type:
    """`FinetuneConfig` or `OnlineConfig`: what validates a run's config."""
    if command == "online":
        from eva_rl.online.config import OnlineConfig

        return OnlineConfig
    from eva_rl.training.finetune import FinetuneConfig

    return FinetuneConfig


def runner(command: str) -> Callable[[Any, bool], dict]:
    """`finetune` or `online`: what runs a validated config (`progress` second)."""
    if command == "online":
        from eva_rl.online.run import online

        return online
    from eva_rl.training.finetune import finetune

    return finetune
