"""`eva-rl pretrain`: train a Decision Transformer from scratch on a suite's datasets (MT40).
Data parallel under torchrun (see `eva_rl.training.loop`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eva_rl import distributed
from eva_rl.agent import Agent, AgentMeta, ModelConfig, build_model, horizon_message
from eva_rl.config import check_seed
from eva_rl.data.catalog import suite_datasets
from eva_rl.data.checks import check_timesteps
from eva_rl.data.segments import SegmentSampler, load_trajectories
from eva_rl.distributed import is_main
from eva_rl.envs import load_suite
from eva_rl.errors import UserError
from eva_rl.results import EvalPoint
from eva_rl.runtime import (
    Precision,
    check_precision,
    cores_given_back,
    resolve_device,
    resolve_precision,
    set_threads,
)
from eva_rl.training.loop import LoopConfig, OptimConfig, Trainer
from eva_rl.training.rundir import provenance, run_dir


@dataclass
class PretrainEvalConfig:
    episodes: int = 3  # per env
    envs: list[str] = field(default_factory=list)  # empty: every env of the data
    seed: int = 1000  # episode i is reset with seed + i

    def __post_init__(self):
        check_seed(self.seed, "eval.seed")


DEFAULT_SUITE = "mt40"


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain"  # the run directory
    datasets: list[str] = field(default_factory=list)  # Minari ids; empty: the suite's datasets
    suite: str = DEFAULT_SUITE  # the datasets, horizon and references when `datasets` is empty
    data_root: str | None = None  # Minari root; None: $MINARI_DATASETS_PATH or ~/.minari
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    eval: PretrainEvalConfig = field(default_factory=PretrainEvalConfig)
    return_scale: float = 1000.0  # returns-to-go are divided by this
    # episode length at evaluation; None: the suite's, else the longest time limit of the
    # datasets' envs (else their longest episode)
    horizon: int | None = None
    seed: int = 0  # of initialisation and sampling
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    precision: Precision = "auto"  # auto (bf16 where the hardware has it natively) | bf16 | fp32
    threads: int = 0  # torch CPU threads; 0: a share of the free cores (eva_rl.runtime)
    resume: bool = False  # continue from checkpoints/latest (same config)

    def __post_init__(self):
        check_seed(self.seed, "seed")
        check_precision(self.precision)
        if self.return_scale <= 0:
            raise UserError(f"return_scale must be > 0, got {self.return_scale}")
        if self.horizon is not None and not 1 <= self.horizon <= self.model.max_ep_len:
            raise UserError(horizon_message(self.horizon, self.model.max_ep_len))
        suite = load_suite(self.suite)  # an unknown one is refused even where datasets are set
        # A suite named beside datasets would be ignored (its horizon and references too);
        # the default cannot be told from one written out, so only other suites are compared.
        if self.datasets and self.suite != DEFAULT_SUITE and self.datasets != suite_datasets(suite):
            raise UserError(
                f"suite {self.suite} and datasets {' '.join(self.datasets)} name different data "
                "(datasets, when given, replace the suite's); give one: --suite S, or --datasets "
                "ID [ID ...] alone"
            )


def pretrain(cfg: PretrainConfig, progress: bool = True) -> dict[str, Any]:
    out = Path(cfg.out)
    suite = None if cfg.datasets else load_suite(cfg.suite)
    ids = cfg.datasets or suite_datasets(suite)
    traj = load_trajectories(ids, cfg.data_root)  # before touching `out`: bad ids fail first
    horizon = cfg.horizon or (suite.horizon if suite else traj.horizon())
    if horizon > cfg.model.max_ep_len:
        raise UserError(horizon_message(horizon, cfg.model.max_ep_len) + "; set horizon=")
    check_timesteps(traj, cfg.model.max_ep_len)
    with run_dir(out, cfg, cfg.resume), cores_given_back():
        return _train(cfg, suite, traj, ids, horizon, progress)


def _train(cfg: PretrainConfig, suite, traj, ids, horizon: int, progress: bool) -> dict[str, Any]:
    from eva_rl.evaluation import EvalConfig, Evaluator

    out = Path(cfg.out)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, traj.state_dim, traj.act_dim).to(device)
    if distributed.rank():  # the same weights everywhere, each rank its own dropout masks
        torch.manual_seed(distributed.rank_seed(cfg.seed))
    mean, std = traj.state_stats()
    meta = AgentMeta(
        state_mean=mean.tolist(),
        state_std=std.tolist(),
        return_scale=cfg.return_scale,
        context_length=cfg.model.context_length,
        horizon=horizon,
        target_returns=traj.max_returns(),
        reference_returns=dict(suite.reference_returns) if suite else {},
        suite=suite.name if suite else None,
        provenance=provenance(cfg, ids, precision),
    )
    agent = Agent(model, meta)
    sampler = SegmentSampler(
        traj,
        cfg.model.context_length,
        cfg.return_scale,
        mean,
        std,
        distributed.rank_seed(cfg.seed),  # each rank of a torchrun job draws its own batches
        device,
    )
    eval_envs = cfg.eval.envs or traj.envs
    eval_cfg = EvalConfig(
        episodes=cfg.eval.episodes, seed=cfg.eval.seed, device=str(device), precision=precision
    )
    evaluator = Evaluator(agent, eval_envs, eval_cfg, progress=False) if is_main() else None

    def run_eval(step: int) -> EvalPoint:
        return EvalPoint.of(step, evaluator.run())

    def export(directory: Path, step: int) -> None:
        agent.meta.provenance["steps"] = step
        agent.save(directory / "agent")

    try:
        trainer = Trainer(model, sampler, cfg.optim, cfg.loop, out, export, run_eval,
                          resume=cfg.resume, progress=progress, precision=precision)  # fmt: skip
        history = trainer.run()
    finally:
        if evaluator is not None:
            evaluator.close()
    agent.meta.provenance["steps"] = cfg.loop.steps
    if distributed.is_main():
        agent.save(out / "agent")  # its eva_rl.json's provenance holds the run's config
    return {**history, "agent": str(out / "agent"), "meta": dataclasses.asdict(meta)}
