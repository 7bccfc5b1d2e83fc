"""Starting an online run from a finished `eva-rl finetune` run: its exported agent (a PEFT
adapter, or a full checkpoint for fft) becomes the trainable model, so online fine-tuning
continues the offline adapter instead of building a new one. From a finished online run, its
Gaussian head and temperature continue too."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from eva_rl.adapters.methods import METHODS, Adapted, adapter_ranks
from eva_rl.agent import Agent, checkpoint_ref, resolve_base
from eva_rl.errors import UserError
from eva_rl.results import SUMMARY_FILE


@dataclass
class Start:
    adapted: Adapted  # method "lora" for any adapter: exports are plain LoRA (eva_rl.adapters)
    head: tuple | None = None  # an online run's (GaussianHead, Temperature), which continue


def from_finetune_run(cfg, base: Agent) -> Start:
    """The agent of finetune run `cfg.from_run`, on `base` (which must be the run's base)."""
    from eva_rl.online.head import HEAD_CONFIG, load_head

    run = Path(cfg.from_run)
    agent_dir = run / "agent"
    if not (run / SUMMARY_FILE).is_file() or not agent_dir.is_dir():
        raise UserError(f"--from {run} is not a finished finetune run (no summary.json, agent/)")
    _check_made_as(cfg, run, json.loads((run / SUMMARY_FILE).read_text()))
    head = load_head(agent_dir) if (agent_dir / HEAD_CONFIG).is_file() else None
    adapter_config = agent_dir / "adapter_config.json"
    if not adapter_config.is_file():  # fft: a full checkpoint, all of it trains
        full = Agent.load(agent_dir, device=base.device)
        full.check_dims(base.state_dim, base.act_dim, f"--from {run}")
        for p in full.model.parameters():
            p.requires_grad_(True)
        return Start(Adapted(full.model.train(), {}, method="fft"), head)
    from peft import PeftModel

    if not any(
        (agent_dir / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")
    ):
        raise UserError(
            f"--from {run} has no adapter weights (agent/adapter_model.safetensors; `eva-rl "
            "export` leaves them out without --weights): start from the run's own folder"
        )
    named = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if not named:
        raise UserError(f"--from {run}: its adapter_config.json names no base checkpoint")
    if resolve_base(agent_dir, named) != checkpoint_ref(cfg.checkpoint):
        raise UserError(
            f"--from {run} adapted {named}, not --checkpoint {cfg.checkpoint}; pass that checkpoint"
        )
    model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(agent_dir), is_trainable=True)
    return Start(Adapted(model.train(), adapter_ranks(model), method="lora"), head)


def _check_made_as(cfg, run: Path, summary: dict) -> None:
    """The start run's method must be the one the config names (with its rank, and rho where
    the method uses it): the summary, TensorBoard's HParams and the agent's provenance label the
    online run by its config."""
    method = summary.get("method", "?")
    made = {"method.name": method, "method.rank": summary.get("rank"),
            "method.rho": summary.get("rho")}  # fmt: skip
    spec = METHODS.get(method)
    if spec is None or spec.trains_full_model:
        del made["method.rank"], made["method.rho"]
    elif not spec.uses_rho:
        del made["method.rho"]
    named = {"method.name": cfg.method.name, "method.rank": cfg.method.rank,
             "method.rho": cfg.method.rho}  # fmt: skip
    differ = [f"{key}={value}" for key, value in made.items() if named[key] != value]
    if differ:
        was = ", ".join(f"{key}={value}" for key, value in made.items())
        raise UserError(f"--from {run} was made with {was}; set {' '.join(differ)} so that this "
                        "run is labelled as what it continues")  # fmt: skip
