"""What a run of an adapted agent does besides training, shared by the stages that adapt one:
EVA's collector result (collected once into the run's `eva/`, reloaded on resume), the tuned
agent's meta (the base's normalisation, the task's target, the run's provenance), and the
TensorBoard records of the adapter at initialisation and of the run's hyperparameters, and the
base and runner of a stage's recipe object (`FinetuneRun`, `OnlineRun`)."""

from __future__ import annotations

import copy
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from eva_rl import distributed
from eva_rl.agent import Agent, AgentMeta, checkpoint_ref
from eva_rl.assets import locate_checkpoint
from eva_rl.data.segments import load_trajectories
from eva_rl.eva.collector import CollectorConfig, collect_on_trajectories
from eva_rl.eva.state import META_FILE as EVA_META
from eva_rl.eva.state import load_state, log_collection, save_result
from eva_rl.results import RunSummary
from eva_rl.runtime import cores_given_back, resolve_device, resolve_precision
from eva_rl.signals import interrupts_held
from eva_rl.training.rundir import provenance, run_dir
from eva_rl.weights import weights_digest

QUIET = (  # benign warnings PEFT and transformers raise on every run of these methods
    "`is_gradient_checkpointing` is deprecated",
    "lora with eva initialization used with low_cpu_mem_usage=False",
    "`corda_config` specified but will be ignored",
    "Full backward hook is firing when gradients are computed with respect to module outputs",
    "The following rank_pattern keys did not match any targeted module",  # AdaLoRA's masks
)


class AdaptedRun:
    """What every recipe of an adapted agent loads first, before its run folder exists (so a
    bad input leaves no folder): the device and precision, the base agent and the datasets."""

    def __init__(self, cfg: Any, progress: bool):
        self.started = time.perf_counter()
        self.cfg, self.progress, self.out = cfg, progress, Path(cfg.out)
        device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, device)
        self.agent = Agent.load(cfg.checkpoint, stats=cfg.stats, device=device)
        self.data = load_trajectories(cfg.dataset_ids, cfg.data_root)


def run_recipe(recipe: Callable[[Any, bool], Any], cfg: Any, progress: bool) -> Any:
    """Run a stage's recipe object: built from `cfg` (loading checks every input) before its
    run folder exists, then setup, train and save inside the folder (`rundir.run_dir`), with
    the warnings PEFT and transformers raise on every run of these methods silenced."""
    with warnings.catch_warnings():
        for message in QUIET:
            warnings.filterwarnings("ignore", message=re.escape(message))
        run = recipe(cfg, progress)
        with run_dir(Path(cfg.out), cfg, cfg.resume), cores_given_back():
            run.setup()
            history = run.train()
            return run.save(history)


def eva_result(
    agent: Agent, traj, collector: CollectorConfig, checkpoint: str, out: Path, progress: bool
) -> dict:
    """Collect (or, on resume, reload) EVA's components on the training split into `out/eva`."""
    directory = out / "eva"
    if not (directory / EVA_META).is_file():  # every rank collects (on its own batches)
        result = collect_on_trajectories(agent, traj, collector, progress=progress)
        if distributed.is_main():
            meta = save_result(result, collector, directory, checkpoint=checkpoint)
            log_collection(meta, out / "tb")
        distributed.barrier()
    state, meta = load_state(directory)
    return {"state": state, "seconds": meta["seconds"]}


def tuned_meta(base: AgentMeta, targets: dict[str, float], cfg: Any, precision: str) -> AgentMeta:
    """The base agent's normalisation, with the task's target return and the run's provenance."""
    meta = copy.deepcopy(base)
    meta.target_returns = {**base.target_returns, **targets}
    meta.provenance = provenance(
        cfg,
        cfg.dataset_ids,
        precision,
        base_checkpoint=checkpoint_ref(cfg.checkpoint),
        base_weights_sha256=weights_digest(locate_checkpoint(cfg.checkpoint)),  # see resolve_base
        base_provenance=base.provenance,
        method=cfg.method.name,
        envs=sorted(targets),  # what `evaluate` plays by default (the base's targets stay too)
    )
    return meta


def log_setup(log_dir: Path, setup: dict[str, Any]) -> None:
    with interrupts_held(), SummaryWriter(log_dir) as writer:  # eva_rl.signals
        writer.add_scalar("init/trainable_parameters", setup["trainable_parameters"], 0)
        writer.add_scalar("init/gradient_signal", setup["gradient_signal"], 0)
        if setup["collector_seconds"] is not None:
            writer.add_scalar("init/collector_seconds", setup["collector_seconds"], 0)
        for name, rank in setup["ranks"].items():
            writer.add_scalar(f"rank_init/{name}", rank, 0)


def log_hparams(log_dir: Path, cfg: Any, summary: RunSummary, steps: int | None = None) -> None:
    """One HParams session per run (in the run's own tb/), so TensorBoard's HParams tab lines up
    every run under a common logdir by method, rank, rho, task and seed. `steps`: the updates
    (default `cfg.loop.steps`; an online run has no loop config)."""
    steps = cfg.loop.steps if steps is None else steps
    hparams = {
        "method": cfg.method.name,
        "rank": cfg.method.rank,
        "rho": cfg.method.rho,
        "task": summary.label,
        "seed": cfg.seed,
        "steps": steps,
        "lr": cfg.optim.lr,
        "precision": summary.precision,
    }
    nan = float("nan")
    best = summary.best()
    metrics = {
        "hparam/final_score": summary.final.get("score", nan),
        "hparam/best_score": nan if best is None else best,
        "hparam/final_success_final": summary.final.get("success_final", nan),
        "hparam/final_success_any": summary.final.get("success_any", nan),
        "hparam/final_return": summary.final.get("return", nan),
        "hparam/final_heldout_loss": summary.final.get("heldout_loss", nan),
        "hparam/trainable_parameters": summary.trainable_parameters,
        "hparam/gradient_signal": summary.gradient_signal,
    }
    with interrupts_held(), SummaryWriter(log_dir) as writer:  # eva_rl.signals
        for name, rank in summary.ranks.items():
            writer.add_scalar(f"rank_final/{name}", rank, steps)
        writer.add_hparams(hparams, metrics, run_name=".", global_step=steps)
