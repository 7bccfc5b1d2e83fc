"""EVA results on disk, and turning them into a PEFT LoRA model.

On disk (`eva-rl collect --out DIR`): `eva_state.safetensors` maps each module name of the plain
`DecisionTransformerModel` to its allocated components (rank x d_in; rank-0 layers are stored as
0 x d_in so they can be told apart from layers that were not targeted), and `eva.json` holds
per-layer ranks, explained-variance ratios, convergence step and tokens, plus the budget,
batches, seconds, device and the collector config.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from transformers.pytorch_utils import Conv1D

from eva_rl.assets import SHIPPED
from eva_rl.errors import UserError
from eva_rl.eva.collector import CollectorConfig, CollectResult
from eva_rl.io import atomic_write_bytes, atomic_write_json
from eva_rl.signals import interrupts_held

STATE_FILE = "eva_state.safetensors"
META_FILE = "eva.json"


def save_result(
    result: CollectResult, cfg: CollectorConfig, out: str | os.PathLike, **extra
) -> dict[str, Any]:
    """Write `eva_state.safetensors` and `eva.json` (each atomically); returns eva.json's dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {n: layer.components.contiguous() for n, layer in result.layers.items()}
    atomic_write_bytes(out / STATE_FILE, save(tensors))
    meta = describe(result, cfg, **extra)
    atomic_write_json(out / META_FILE, meta)
    return meta


def describe(result: CollectResult, cfg: CollectorConfig, **extra) -> dict[str, Any]:
    return {
        "budget": result.budget,
        "batches": result.batches,
        "seconds": round(result.seconds, 3),
        "device": result.device,
        "precision": result.precision,
        "converged": result.converged,
        "total_rank": sum(layer.rank for layer in result.layers.values()),
        "config": dataclasses.asdict(cfg),
        **extra,
        "layers": {
            name: {
                "rank": layer.rank,
                "explained_variance_ratio": layer.ratios,
                "converged_at_batch": layer.converged_at,
                "tokens": layer.tokens,
            }
            for name, layer in result.layers.items()
        },
    }


def load_state(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file() or not (directory / META_FILE).is_file():
        raise UserError(
            f"{directory} holds no EVA result ({STATE_FILE} + {META_FILE}); run `eva-rl collect`"
        )
    try:
        state = load_file(str(directory / STATE_FILE))
        return state, json.loads((directory / META_FILE).read_text())
    except Exception as e:  # safetensors or JSON: a damaged result
        raise UserError(f"EVA result in {directory} cannot be read ({e}); collect again") from None


def apply_eva(
    model: torch.nn.Module,
    eva_state: dict[str, torch.Tensor],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    use_dora: bool = False,
    modules_to_save: list[str] | None = None,
):
    """A PEFT LoRA model whose A matrices are the EVA components (B = 0).

    Per-layer ranks go through PEFT's rank_pattern, alpha is scaled by new_rank / rank so the
    LoRA scale alpha / r is unchanged, and rank-0 layers carry no adapter. `model` is modified
    (wrapped), as with any PEFT model; pass a fresh copy.
    """
    from peft import EvaConfig, LoraConfig, get_peft_model
    from peft.tuners.lora.eva import initialize_lora_eva_weights

    known = {n for n, _ in model.named_modules()}
    missing = sorted(set(eva_state) - known)
    if missing:
        raise UserError(f"EVA result names modules the model lacks: {', '.join(missing[:3])}")
    for name, components in eva_state.items():
        module = model.get_submodule(name)
        model_in = module.weight.shape[0 if isinstance(module, Conv1D) else 1]
        if model_in != components.shape[1]:
            d_in = components.shape[1]
            raise UserError(
                f"EVA components of {name} have d_in={d_in} but the model's layer takes {model_in}"
            )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=sorted(eva_state),
        init_lora_weights="eva",
        # the state holds the redistributed ranks already: rho 1 keeps PEFT from doing it again
        # (the collector's rho, tau and whiten are in the run's eva/eva.json)
        eva_config=EvaConfig(rho=1.0, adjust_scaling_factors=True),
        fan_in_fan_out=isinstance(model.get_submodule(next(iter(eva_state))), Conv1D),
        use_dora=use_dora,
        modules_to_save=modules_to_save,
    )
    peft_model = get_peft_model(model, config)
    device = next(model.parameters()).device
    prefixed = {f"base_model.model.{n}": t.to(device) for n, t in eva_state.items()}
    initialize_lora_eva_weights(peft_model, eva_state_dict=prefixed, show_progress_bar=False)
    return peft_model


def log_collection(meta: dict[str, Any], log_dir: str | os.PathLike) -> None:
    """Explained variance per layer (one curve per layer over component index) and a
    rank-allocation bar chart."""
    from matplotlib.figure import Figure
    from torch.utils.tensorboard import SummaryWriter

    layers = meta["layers"]
    with interrupts_held(), SummaryWriter(log_dir) as writer:  # eva_rl.signals
        for name, layer in layers.items():
            for i, ratio in enumerate(layer["explained_variance_ratio"]):
                writer.add_scalar(f"explained_variance_ratio/{name}", ratio, i)
            writer.add_scalar(f"rank/{name}", layer["rank"], 0)
        fig = Figure(figsize=(max(6, 0.5 * len(layers)), 4))  # no pyplot: no global state
        ax = fig.subplots()
        ax.bar(range(len(layers)), [layer["rank"] for layer in layers.values()])
        ax.axhline(meta["config"]["rank"], color="k", ls="--", lw=1, label="nominal rank r")
        ax.set_xticks(
            range(len(layers)),
            [n.removeprefix("encoder.") for n in layers],
            rotation=70,
            fontsize=7,
        )
        ax.set_ylabel("allocated rank")
        ax.set_title(f"EVA rank allocation (budget {meta['budget']}, rho {meta['config']['rho']})")
        ax.legend()
        fig.tight_layout()
        writer.add_figure("eva/rank_allocation", fig, 0)


@dataclass
class CollectConfig:
    """What `eva-rl collect` does: the agent, the data, where the result goes."""

    checkpoint: str = SHIPPED  # a checkpoint directory or a Hugging Face hub id
    stats: str | None = None  # eva_rl.json-style stats for a plain transformers checkpoint
    datasets: list[str] = field(default_factory=list)  # downstream Minari dataset ids
    data_root: str | None = None  # Minari root; None: $MINARI_DATASETS_PATH or ~/.minari
    out: str = ""  # the result's directory (eva_state.safetensors, eva.json, tb/)
    overwrite: bool = False  # replace an existing result
    collector: CollectorConfig = field(default_factory=CollectorConfig)

    def __post_init__(self):
        if not self.datasets or not self.out:
            raise UserError("collect needs --datasets ID [ID ...] and --out DIR")


def run_collection(cfg: CollectConfig, progress: bool = True) -> CollectResult:
    """Collect on the datasets and write the result (rank 0 under torchrun); the output is
    checked before any batch."""
    from eva_rl import ownership
    from eva_rl.agent import Agent
    from eva_rl.config import save_config
    from eva_rl.distributed import is_main, world_size
    from eva_rl.eva.collector import collect_on_datasets
    from eva_rl.io import atomic_write_dir, check_writable
    from eva_rl.runtime import resolve_device

    out = Path(cfg.out)
    earlier = (out / META_FILE).is_file()  # an EVA result (one from before markers too)
    if earlier and not cfg.overwrite:
        raise UserError(f"{out} already holds an EVA result; pass --overwrite or another --out")
    check_writable(out, directory=True)
    if not earlier:
        ownership.check_replaceable(out, "eva-rl collect", kind="collect")
    device = resolve_device(cfg.collector.device)
    agent = Agent.load(cfg.checkpoint, stats=cfg.stats, device=device)
    result = collect_on_datasets(agent, cfg.datasets, cfg.collector, cfg.data_root, progress)
    if is_main():  # every rank holds the same result; rank 0 writes it
        extra = {"checkpoint": cfg.checkpoint, "datasets": cfg.datasets, "processes": world_size()}
        ownership.claim(out, "collect")  # the marker first
        meta = save_result(result, cfg.collector, out, **extra)
        save_config(cfg, out / "collect_config.yaml")
        # tb/ whole: an overwritten result's events go with it
        atomic_write_dir(out / "tb", lambda tb: log_collection(meta, tb))
    return result
