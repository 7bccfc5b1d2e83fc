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

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eva_rl import distributed
from eva_rl.adapters.export import export_adapted, save_initial_adapter
from eva_rl.adapters.methods import (
    METHODS,
    BuildContext,
    MethodConfig,
    build_method,
    trainable_parameters,
)
from eva_rl.agent import META_FILE, Agent
from eva_rl.assets import SHIPPED
from eva_rl.config import check_seed, to_dict
from eva_rl.data.catalog import dataset_id
from eva_rl.errors import UserError
from eva_rl.eva.collector import TOKEN_TYPES, CollectorConfig, CollectorMethod
from eva_rl.evaluation import EvalConfig, Evaluator
from eva_rl.io import atomic_write_dir, atomic_write_json
from eva_rl.layers import check_rank
from eva_rl.results import SUMMARY_FILE, EvalPoint, RunSummary
from eva_rl.runtime import Precision, check_precision, set_threads
from eva_rl.training.adapted import (
    AdaptedRun,
    eva_result,
    log_hparams,
    log_setup,
    run_recipe,
    tuned_meta,
)
from eva_rl.training.loop import LoopConfig, OptimConfig, Trainer
from eva_rl.training.losses import action_loss, gradient_signal, heldout_loss
from eva_rl.video import check_video, log_videos

# FinetuneEvalConfig's integer fields: key -> (least value, what the least one means)
EVAL_LEAST = {
    "episodes": (1, ""),
    "final_episodes": (0, " (0: eval.episodes)"),
    "max_envs": (0, " (0: auto)"),
    "workers": (0, " (0: auto, 1: in this process)"),
}  # the video settings: video.check_video


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
        """Every field, before the run folder is claimed or EVA collects (`for_run` builds the
        evaluator's config only once the run is set up)."""
        for key, (least, meaning) in EVAL_LEAST.items():
            if getattr(self, key) < least:
                raise UserError(f"eval.{key} must be >= {least}{meaning}, got {getattr(self, key)}")
        check_video(self.video, self.video_size, self.video_every)  # the size H.264 encodes
        check_seed(self.seed, "eval.seed")

    @property
    def final_count(self) -> int:
        return self.final_episodes or self.episodes

    def for_run(self, device: str, precision: str) -> EvalConfig:
        """The evaluator's config: these fields (all but `final_episodes`) on the run's device."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del shared["final_episodes"]
        return EvalConfig(**shared, device=device, precision=precision)


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
        check_seed(self.seed, "split.seed")


@dataclass
class FinetuneCollectorConfig:
    """EVA's collector settings; its rank, rho, target modules, seed and device are the run's."""

    tau: float = 0.99  # a layer has converged when its components' cosines reach this
    whiten: bool = False  # components divided by the sqrt of their singular values (PEFT)
    max_batches: int = 100  # stop there (with a warning) if some layer has not converged
    batch_size: int = 64  # segments per collector batch
    # the tokens whose layer inputs count: return-to-go, state, action
    token_types: list[str] = field(default_factory=lambda: list(TOKEN_TYPES))
    # covariance: exact streaming statistics; incremental-svd: PEFT's algorithm, for comparison
    method: CollectorMethod = "covariance"


@dataclass
class AdaptedRunConfig:
    """What every run that adapts a pretrained agent to offline data names, `eva-rl finetune`'s
    and `eva-rl online`'s alike: the base, the data, the run folder, the method and EVA's
    collector, the evaluation, and how the run executes."""

    checkpoint: str = SHIPPED  # a checkpoint directory or a Hugging Face hub id
    stats: str | None = None  # eva_rl.json-style stats for a plain transformers checkpoint
    datasets: list[str] = field(default_factory=list)  # Minari ids of the downstream data
    task: str = ""  # shorthand for a Meta-World task's data: metaworld/<task>/scripted-v0
    env: str | None = None  # evaluate (online: also play) in this env (default: the datasets')
    data_root: str | None = None  # Minari root; None: $MINARI_DATASETS_PATH or ~/.minari
    out: str = ""  # the run directory
    method: MethodConfig = field(default_factory=MethodConfig)
    collector: FinetuneCollectorConfig = field(default_factory=FinetuneCollectorConfig)
    eval: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)
    seed: int = 0  # of sampling, initialisation and training (online: and exploration)
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
        if self.task and self.datasets and self.datasets != [dataset_id(self.task)]:
            raise UserError(
                f"task {self.task} and datasets {' '.join(self.datasets)} name different data "
                "(a run is labelled by its task); give one: --task T is short for --datasets "
                f"{dataset_id(self.task)}"
            )
        if not self.out:
            raise UserError("name the run directory with --out DIR")
        check_seed(self.seed, "seed")
        check_precision(self.precision)
        self.collector_config()  # validate the combination now (collector.method among them)

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


@dataclass
class FinetuneConfig(AdaptedRunConfig):
    split: SplitConfig = field(default_factory=SplitConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(warmup_steps=100))
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(
            steps=2000, log_every=50, eval_every=500, save_every=500, eval_at_start=True
        )
    )


def finetune(cfg: FinetuneConfig, progress: bool = True) -> RunSummary:
    """Build the method, measure it at initialisation, train, evaluate, export; see module doc."""
    return run_recipe(FinetuneRun, cfg, progress)


class FinetuneRun(AdaptedRun):
    """One run as a recipe: loading checks every input before the run folder exists; `setup`
    builds the method on calibration batches (EVA collected on the training split), `train`
    runs the loop with evaluations, `save` writes the final agent and summary."""

    def __init__(self, cfg: FinetuneConfig, progress: bool):
        super().__init__(cfg, progress)
        self.traj, self.heldout = self.data.split(cfg.split.heldout, cfg.split.seed)
        # refuses data of other shapes; each rank of a torchrun job draws its own batches
        self.sampler = self.agent.segment_sampler(self.traj, distributed.rank_seed(cfg.seed))
        self.main = distributed.is_main()
        self.evaluator: Evaluator | None = None
        spec = METHODS[cfg.method.name]  # a rank the layers cannot hold fails before the folder
        if not spec.trains_full_model:
            rho = cfg.method.rho if spec.needs_eva_state else None
            check_rank(self.agent.model, cfg.method.rank, cfg.method.target_modules, rho)

    def _batches(self, traj, seed: int, count: int) -> list:
        sampler = self.agent.segment_sampler(traj, seed)
        return [sampler.sample(self.cfg.optim.batch_size) for _ in range(count)]

    def setup(self) -> None:
        """Calibration and held-out batches, the method's adapter, the tuned agent's evaluator."""
        cfg, out = self.cfg, self.out
        set_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        calibration = self._batches(self.traj, cfg.seed + 1, cfg.method.calibration_batches)
        self.heldout_batches = []
        if self.heldout is not None:
            self.heldout_batches = self._batches(self.heldout, cfg.split.seed, cfg.split.batches)
        self.spec = METHODS[cfg.method.name]
        eva = None
        if self.spec.needs_eva_state:
            collector = cfg.collector_config()
            eva = eva_result(self.agent, self.traj, collector, cfg.checkpoint, out, self.progress)
        context = BuildContext(
            calibration=calibration,
            loss=action_loss,
            eva_state=eva and eva["state"],
            steps=cfg.loop.steps,
        )
        self.adapted = build_method(self.agent.model, cfg.method, context)
        if distributed.rank():  # the same adapter everywhere, each rank its own dropout masks
            torch.manual_seed(distributed.rank_seed(cfg.seed))
        self.initial = save_initial_adapter(self.adapted, out) if self.main else None
        self.init = {
            "trainable_parameters": trainable_parameters(self.adapted.model),
            "total_parameters": sum(p.numel() for p in self.agent.model.parameters()),
            "gradient_signal": gradient_signal(self.adapted.model, calibration),
            "collector_seconds": eva["seconds"] if eva else None,
            "ranks": self.adapted.ranks,
        }
        if self.main and not cfg.resume:
            log_setup(out / "tb", self.init)
        targets, envs = self.data.max_returns(), self.data.envs
        if cfg.env is not None:  # one env for all the data: its target is the best return seen
            envs, targets = [cfg.env], {cfg.env: max(targets.values())}
        self.meta = tuned_meta(self.agent.meta, targets, cfg, self.precision)
        if self.main:
            tuned = Agent(self.adapted.model, self.meta)
            eval_cfg = cfg.eval.for_run(str(self.agent.device), self.precision)
            self.evaluator = Evaluator(tuned, envs, eval_cfg, progress=False,
                                       max_episodes=cfg.eval.final_count)  # fmt: skip

    def evaluate(self, step: int) -> EvalPoint:
        """The tuned agent on the evaluation episodes (more at the last step), held-out loss."""
        cfg = self.cfg
        episodes = cfg.eval.final_count if step == cfg.loop.steps else cfg.eval.episodes
        extra = {}
        if self.heldout_batches:
            batches = self.heldout_batches
            extra["heldout_loss"] = heldout_loss(self.adapted.model, batches, self.precision)
        videos = self.out / "videos" / f"step-{step:06d}"
        result = self.evaluator.run(episodes, video_dir=str(videos))
        log_videos(result, self.out / "tb", step)
        return EvalPoint.of(step, result, **extra)

    def write_agent(self, directory: Path) -> None:
        export_adapted(self.adapted, directory, self.cfg.checkpoint, self.initial)
        atomic_write_json(directory / META_FILE, dataclasses.asdict(self.meta))

    def export(self, directory: Path, step: int) -> None:
        self.meta.provenance["steps"] = step
        self.write_agent(directory / "agent")

    def train(self) -> dict[str, Any]:
        """The loop from step 0 or the last checkpoint; returns its history."""
        cfg = self.cfg
        loop_started = time.perf_counter()
        try:
            trainer = Trainer(self.adapted.model, self.sampler, cfg.optim, cfg.loop, self.out,
                              self.export, self.evaluate, resume=cfg.resume,
                              progress=self.progress, hooks=self.adapted.hooks,
                              penalty=self.adapted.penalty, precision=self.precision)  # fmt: skip
            history = trainer.run()
        finally:
            if self.evaluator is not None:
                self.evaluator.close()
        self.meta.provenance["steps"] = cfg.loop.steps
        # wall time of the whole run: this invocation outside the loop, plus every loop segment
        outside = time.perf_counter() - self.started - (time.perf_counter() - loop_started)
        history["wall_seconds"] = outside + history["seconds"]
        return history

    def save(self, history: dict[str, Any]) -> RunSummary:
        """The run's summary; the final agent and summary.json written (rank 0)."""
        cfg, init = self.cfg, self.init
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
            trainable_parameters=init["trainable_parameters"],
            total_parameters=init["total_parameters"],
            gradient_signal=init["gradient_signal"],
            collector_seconds=init["collector_seconds"],
            ranks=self.spec.final_ranks(self.adapted),
            processes=distributed.world_size(),
            effective_batch_size=history["effective_batch_size"],
            train_seconds=history["seconds"],
            wall_seconds=history["wall_seconds"],
            config=to_dict(cfg),
            precision=self.precision,
            machines=history.get("machines", []),
        )
        if self.main:  # summary.json last: it marks the run finished (sweeps, reports)
            atomic_write_dir(self.out / "agent", self.write_agent)
            log_hparams(self.out / "tb", cfg, summary)
            atomic_write_json(self.out / SUMMARY_FILE, summary.to_dict())
        return summary
