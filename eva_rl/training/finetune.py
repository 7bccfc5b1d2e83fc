"""`eva-rl finetune`: adapt a pretrained agent to one downstream task with one method.

A run directory holds `config.yaml`, TensorBoard events (`tb/`: training and evaluation curves,
trainable parameters, per-layer ranks, collector seconds, gradient signal at initialisation, and
an HParams entry), `eva/` (EVA's collector result, reused on resume), `agent/` (the final
adapter in PEFT's format, or a full checkpoint for fft, plus `eva_rl.json`) and `summary.json`.

Under torchrun (data parallel, `eva_rl.training.loop`) every rank builds the same adapter (the
calibration batches and EVA's collector result are shared), trains on its own batches, and
rank 0 writes everything.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from eva_rl import distributed
from eva_rl.adapters.export import export_adapted, save_initial_adapter
from eva_rl.adapters.methods import (
    METHODS,
    BuildContext,
    MethodConfig,
    build_method,
    trainable_parameters,
)
from eva_rl.agent import (
    META_FILE,
    SHIPPED,
    Agent,
    AgentMeta,
    checkpoint_ref,
)
from eva_rl.config import to_dict
from eva_rl.data.catalog import dataset_id
from eva_rl.data.segments import load_trajectories
from eva_rl.errors import UserError
from eva_rl.eva.collector import TOKEN_TYPES, CollectorConfig
from eva_rl.evaluation import EvalConfig, Evaluator
from eva_rl.io import atomic_write_json, save_checkpoint_dir
from eva_rl.results import SCORES, EvalPoint, RunSummary
from eva_rl.runtime import Precision, resolve_device, resolve_precision, set_threads
from eva_rl.training.loop import LoopConfig, OptimConfig, Trainer
from eva_rl.training.losses import action_loss, gradient_signal, heldout_loss
from eva_rl.training.rundir import discard_on_failure, prepare_run_dir, provenance
from eva_rl.video import log_videos

SUMMARY_FILE = "summary.json"
QUIET = (  # benign warnings PEFT and transformers raise on every run of these methods
    "`is_gradient_checkpointing` is deprecated",
    "lora with eva initialization used with low_cpu_mem_usage=False",
    "`corda_config` specified but will be ignored",
    "Full backward hook is firing when gradients are computed with respect to module outputs",
    "The following rank_pattern keys did not match any targeted module",  # AdaLoRA's masks
)


@dataclass
class FinetuneEvalConfig:
    episodes: int = 10  # per evaluation during training
    final_episodes: int = 0  # at the last evaluation (0: `episodes`); the first `episodes` match
    seed: int = 1000  # episode i is reset with seed + i; the same episodes at every evaluation
    max_envs: int = 0  # env slots alive at once; 0: auto (eva_rl.evaluation.EvalConfig)
    workers: int = 0  # env-stepping processes; 0: auto
    video: int = 0  # episodes per env recorded at every evaluation (MP4 in videos/, TensorBoard)
    video_size: int = 240  # frame width and height, pixels
    video_every: int = 2  # keep every k-th frame

    def __post_init__(self):
        if self.episodes < 1 or self.final_episodes < 0 or self.video < 0:
            raise UserError("eval.episodes must be >= 1, eval.final_episodes and video >= 0")


@dataclass
class SplitConfig:
    """The held-out part of the downstream data: never trained on, collected on or used for
    calibration; its action loss is logged at every evaluation."""

    heldout: float = 0.1  # share of each env's episodes; 0: train on everything
    seed: int = 0  # which episodes: fixed per dataset, the same for every run (paired runs)
    batches: int = 8  # fixed held-out batches the loss is averaged over

    def __post_init__(self):
        if not 0.0 <= self.heldout < 1.0 or self.batches < 1:
            raise UserError("split.heldout must be in [0, 1) and split.batches >= 1")


@dataclass
class FinetuneCollectorConfig:
    """EVA's collector settings; its rank, rho, target modules, seed and device are the run's."""

    tau: float = 0.99
    whiten: bool = False
    max_batches: int = 100
    batch_size: int = 64
    token_types: list[str] = field(default_factory=lambda: list(TOKEN_TYPES))
    method: str = "covariance"


@dataclass
class FinetuneConfig:
    checkpoint: str = SHIPPED  # a checkpoint directory or a Hugging Face hub id
    stats: str | None = None  # eva_rl.json-style stats for a plain transformers checkpoint
    datasets: list[str] = field(default_factory=list)  # Minari ids of the downstream data
    task: str = ""  # shorthand for a Meta-World task's data: metaworld/<task>/scripted-v0
    env: str | None = None  # evaluate in this env (default: the env each dataset recorded)
    data_root: str | None = None  # Minari root; None: $MINARI_DATASETS_PATH or ~/.minari
    out: str = ""  # the run directory
    method: MethodConfig = field(default_factory=MethodConfig)
    collector: FinetuneCollectorConfig = field(default_factory=FinetuneCollectorConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(warmup_steps=100))
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(
            steps=2000, log_every=50, eval_every=500, save_every=500, eval_at_start=True
        )
    )
    eval: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)
    seed: int = 0  # of sampling, initialisation and training
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    precision: Precision = "auto"  # auto (bf16 where the hardware has it natively) | bf16 | fp32
    threads: int = 0  # torch CPU threads; 0: a share of the free cores (eva_rl.runtime)
    resume: bool = False  # continue from checkpoints/latest (same config)

    def __post_init__(self):
        if not self.task and not self.datasets:
            raise UserError(
                "name the downstream data: --datasets ID [ID ...] (Minari ids) or --task TASK "
                "(a Meta-World task's scripted-expert dataset)"
            )
        if not self.out:
            raise UserError("name the run directory with --out DIR")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"unknown precision {self.precision!r}; use auto, bf16 or fp32")
        self.collector_config()  # validate the combination now

    @property
    def dataset_ids(self) -> list[str]:
        return self.datasets or [dataset_id(self.task)]

    def collector_config(self) -> CollectorConfig:
        """The collector's full config: its own settings plus the run's rank, rho, targets."""
        return CollectorConfig(
            rank=self.method.rank,
            rho=self.method.rho,
            target_modules=list(self.method.target_modules),
            seed=self.seed,
            device=self.device,
            precision=self.precision,
            **dataclasses.asdict(self.collector),
        )


def finetune(cfg: FinetuneConfig, progress: bool = True) -> RunSummary:
    """Build the method, measure it at initialisation, train, evaluate, export; see module doc."""
    with warnings.catch_warnings():
        for message in QUIET:
            warnings.filterwarnings("ignore", message=re.escape(message))
        return _finetune(cfg, progress)


def _finetune(cfg: FinetuneConfig, progress: bool) -> RunSummary:
    started = time.perf_counter()
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    agent = Agent.load(cfg.checkpoint, stats=cfg.stats, device=device)
    data = load_trajectories(cfg.dataset_ids, cfg.data_root)
    traj, heldout = data.split(cfg.split.heldout, cfg.split.seed)
    # refuses data of other shapes; each rank of a torchrun job draws its own batches
    sampler = agent.segment_sampler(traj, distributed.rank_seed(cfg.seed))
    prepare_run_dir(out, cfg, cfg.resume)  # only after every input was checked
    with discard_on_failure(out, cfg.resume):
        return _train(cfg, agent, data, traj, heldout, sampler, precision, started, progress)


def _train(cfg, agent, data, traj, heldout, sampler, precision, started, progress) -> RunSummary:
    """Everything after the run folder exists: build, measure, train, evaluate, export."""
    out, device = Path(cfg.out), agent.device
    main = distributed.is_main()
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    calibration_sampler = agent.segment_sampler(traj, cfg.seed + 1)
    calibration = [
        calibration_sampler.sample(cfg.optim.batch_size)
        for _ in range(cfg.method.calibration_batches)
    ]
    heldout_batches = []
    if heldout is not None:
        heldout_sampler = agent.segment_sampler(heldout, cfg.split.seed)
        heldout_batches = [
            heldout_sampler.sample(cfg.optim.batch_size) for _ in range(cfg.split.batches)
        ]
    spec = METHODS[cfg.method.name]
    eva_meta = _eva_result(agent, traj, cfg, out, progress) if spec.needs_eva_state else None
    context = BuildContext(
        calibration=calibration,
        loss=action_loss,
        eva_state=eva_meta and eva_meta["state"],
        steps=cfg.loop.steps,
    )
    adapted = build_method(agent.model, cfg.method, context)
    initial = save_initial_adapter(adapted, out) if main else None
    signal = gradient_signal(adapted.model, calibration)
    setup = {
        "trainable_parameters": trainable_parameters(adapted.model),
        "total_parameters": sum(p.numel() for p in agent.model.parameters()),
        "gradient_signal": signal,
        "collector_seconds": eva_meta["seconds"] if eva_meta else None,
        "ranks": adapted.ranks,
    }
    if main and not cfg.resume:
        _log_setup(out / "tb", setup)

    targets = data.max_returns()
    envs = data.envs
    if cfg.env is not None:  # one env for all the data: its target is the best return seen
        envs, targets = [cfg.env], {cfg.env: max(targets.values())}
    meta = _finetuned_meta(agent.meta, targets, cfg, precision)
    tuned = Agent(adapted.model, meta)
    eval_cfg = EvalConfig(
        episodes=cfg.eval.episodes,
        seed=cfg.eval.seed,
        device=str(device),
        precision=precision,
        max_envs=cfg.eval.max_envs,
        workers=cfg.eval.workers,
        video=cfg.eval.video,
        video_size=cfg.eval.video_size,
        video_every=cfg.eval.video_every,
    )
    final_episodes = cfg.eval.final_episodes or cfg.eval.episodes
    evaluator = (
        Evaluator(tuned, envs, eval_cfg, progress=False, max_episodes=final_episodes)
        if main
        else None
    )

    def run_eval(step: int) -> EvalPoint:
        episodes = final_episodes if step == cfg.loop.steps else cfg.eval.episodes
        extra = {}
        if heldout_batches:
            extra["heldout_loss"] = heldout_loss(adapted.model, heldout_batches, precision)
        result = evaluator.run(episodes, video_dir=str(out / "videos" / f"step-{step:06d}"))
        log_videos(result, out / "tb", step)
        return EvalPoint.of(step, result, **extra)

    def write_agent(directory: Path) -> None:
        export_adapted(adapted, directory, cfg.checkpoint, initial)
        atomic_write_json(directory / META_FILE, dataclasses.asdict(meta))

    def export(directory: Path, step: int) -> None:
        meta.provenance["steps"] = step
        write_agent(directory / "agent")

    loop_started = time.perf_counter()
    try:
        trainer = Trainer(
            adapted.model,
            sampler,
            cfg.optim,
            cfg.loop,
            out,
            export,
            run_eval,
            resume=cfg.resume,
            progress=progress,
            hooks=adapted.hooks,
            penalty=adapted.penalty,
            precision=precision,
        )
        history = trainer.run()
    finally:
        if evaluator is not None:
            evaluator.close()
    loop_seconds = time.perf_counter() - loop_started
    meta.provenance["steps"] = cfg.loop.steps
    # wall time of the whole run: this invocation outside the loop, plus every loop segment
    outside = time.perf_counter() - started - loop_seconds
    points = [EvalPoint.from_dict(p) for p in history["eval"]]
    summary = RunSummary(
        method=cfg.method.name,
        task=cfg.task or None,
        datasets=cfg.dataset_ids,
        rank=cfg.method.rank,
        rho=cfg.method.rho,
        seed=cfg.seed,
        steps=cfg.loop.steps,
        eval=points,
        final_loss=history.get("loss"),
        trainable_parameters=setup["trainable_parameters"],
        total_parameters=setup["total_parameters"],
        gradient_signal=setup["gradient_signal"],
        collector_seconds=setup["collector_seconds"],
        ranks=spec.final_ranks(adapted),
        processes=distributed.world_size(),
        effective_batch_size=history["effective_batch_size"],
        train_seconds=history["seconds"],
        wall_seconds=outside + history["seconds"],
        config=to_dict(cfg),
        precision=precision,
        score_name=_score_name(points),
    )
    if main:
        save_checkpoint_dir(out / "agent", write_agent)
        atomic_write_json(out / SUMMARY_FILE, summary.to_dict())
        _log_hparams(out / "tb", cfg, summary)
    return summary


def _score_name(points: list[EvalPoint]) -> str:
    """The primary score the evaluations reported (see eva_rl.results)."""
    for point in points:
        for name in SCORES:
            if name in point.metrics:
                return name
    return "return"


def _eva_result(agent: Agent, traj, cfg: FinetuneConfig, out: Path, progress: bool) -> dict:
    """Collect (or, on resume, reload) EVA's components on the training split into `out/eva`."""
    from eva_rl.eva.collector import collect_on_trajectories
    from eva_rl.eva.state import META_FILE as EVA_META
    from eva_rl.eva.state import load_state, log_collection, save_result

    directory = out / "eva"
    collector = cfg.collector_config()
    if not (directory / EVA_META).is_file():  # every rank collects (on its own batches)
        result = collect_on_trajectories(agent, traj, collector, progress=progress)
        if distributed.is_main():
            meta = save_result(result, collector, directory, checkpoint=cfg.checkpoint)
            log_collection(meta, out / "tb")
        distributed.barrier()
    state, meta = load_state(directory)
    return {"state": state, "seconds": meta["seconds"]}


def _finetuned_meta(
    base: AgentMeta, targets: dict[str, float], cfg: FinetuneConfig, precision: str
) -> AgentMeta:
    """The base agent's normalisation, with the task's target return and the run's provenance."""
    meta = copy.deepcopy(base)
    meta.target_returns = {**base.target_returns, **targets}
    meta.provenance = provenance(
        cfg,
        cfg.dataset_ids,
        precision,
        base_checkpoint=checkpoint_ref(cfg.checkpoint),
        base_provenance=base.provenance,
        method=cfg.method.name,
    )
    return meta


def _log_setup(log_dir: Path, setup: dict[str, Any]) -> None:
    with SummaryWriter(log_dir) as writer:
        writer.add_scalar("init/trainable_parameters", setup["trainable_parameters"], 0)
        writer.add_scalar("init/gradient_signal", setup["gradient_signal"], 0)
        if setup["collector_seconds"] is not None:
            writer.add_scalar("init/collector_seconds", setup["collector_seconds"], 0)
        for name, rank in setup["ranks"].items():
            writer.add_scalar(f"rank_init/{name}", rank, 0)


def _log_hparams(log_dir: Path, cfg: FinetuneConfig, summary: RunSummary) -> None:
    """One HParams session per run (in the run's own tb/), so TensorBoard's HParams tab lines up
    every run under a common logdir by method, rank, rho, task and seed."""
    hparams = {
        "method": cfg.method.name,
        "rank": cfg.method.rank,
        "rho": cfg.method.rho,
        "task": summary.label,
        "seed": cfg.seed,
        "steps": cfg.loop.steps,
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
    with SummaryWriter(log_dir) as writer:
        for name, rank in summary.ranks.items():
            writer.add_scalar(f"rank_final/{name}", rank, cfg.loop.steps)
        writer.add_hparams(hparams, metrics, run_name=".", global_step=cfg.loop.steps)
