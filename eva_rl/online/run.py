"""`eva-rl online`: offline-to-online fine-tuning (ODT) of an adapted Decision Transformer.

The method is built as `eva-rl finetune` builds it (EVA collected on the offline data), or a
finished fine-tuning run's adapter is loaded (`from_run`); the Gaussian head and the
temperature are the only new modules (`eva_rl.online.policy`). A replay buffer seeded with the
offline data's best trajectories (`eva_rl.online.buffer`) then takes the episodes the policy
collects, and `OnlineTrainer` alternates collection and updates.

A run directory holds what a finetune run's does (config.yaml, tb/, eva/, agent/ with the head
beside the adapter, summary.json) plus `tb/env_steps/` (curves against env steps),
`episodes/` (every collected episode, .npz), `minari/` (them as a Minari dataset) and, with
`eval.video`, `videos/env-steps-N/` (MP4s, also in TensorBoard against env steps).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path

import torch

from eva_rl.adapters.export import export_adapted, save_initial_adapter
from eva_rl.adapters.methods import METHODS, BuildContext, build_method, trainable_parameters
from eva_rl.agent import META_FILE, Agent
from eva_rl.config import to_dict
from eva_rl.errors import UserError
from eva_rl.evaluation import EvalConfig, Evaluator, scaled_target
from eva_rl.io import atomic_write_dir, atomic_write_json
from eva_rl.online.buffer import TrajectoryBuffer, write_online_dataset
from eva_rl.online.collect import Collector
from eva_rl.online.config import OnlineConfig
from eva_rl.online.head import save_head
from eva_rl.online.policy import GaussianHead, Temperature
from eva_rl.online.start import from_finetune_run
from eva_rl.results import SUMMARY_FILE, EvalPoint, RunSummary
from eva_rl.runtime import set_threads
from eva_rl.stats import curve_auc
from eva_rl.training.adapted import (
    AdaptedRun,
    eva_result,
    log_hparams,
    log_setup,
    run_recipe,
    tuned_meta,
)
from eva_rl.training.losses import action_loss, gradient_signal
from eva_rl.video import log_videos

MINARI_DIR = "minari"  # the run's own Minari root for the collected episodes


def online(cfg: OnlineConfig, progress: bool = True) -> dict:
    """Run online fine-tuning (see the module doc); returns summary.json's content."""
    return run_recipe(OnlineRun, cfg, progress)


class OnlineRun(AdaptedRun):
    """One run as a recipe: loading checks every input before the run folder exists; `setup`
    builds the method, head and buffer; `train` runs `OnlineTrainer`; `save` writes the agent,
    the collected dataset and the summary."""

    def __init__(self, cfg: OnlineConfig, progress: bool):
        super().__init__(cfg, progress)
        self.agent.check_dims(self.data.state_dim, self.data.act_dim, "the offline data")
        self.start = from_finetune_run(cfg, self.agent) if cfg.from_run else None
        if cfg.env is not None and len(self.data.envs) > 1:
            raise UserError("--env plays one env: name datasets of that env only")
        self.envs = [cfg.env] if cfg.env is not None else list(self.data.envs)
        best = self.data.max_returns()
        self.best = {env: best.get(env, max(best.values())) for env in self.envs}

    def setup(self) -> None:
        """The adapted model (built, or loaded from the finetune run), head, buffer, envs."""
        cfg, out = self.cfg, self.out
        set_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        sampler = self.agent.segment_sampler(self.data, cfg.seed + 1)
        calibration = [sampler.sample(cfg.optim.batch_size)
                       for _ in range(cfg.method.calibration_batches)]  # fmt: skip
        eva = None
        if self.start is not None:
            self.adapted = self.start.adapted
        else:
            if METHODS[cfg.method.name].needs_eva_state:
                collector = cfg.collector_config()
                eva = eva_result(self.agent, self.data, collector, cfg.checkpoint, out,
                                 self.progress)  # fmt: skip
            per_iteration = self.agent.meta.horizon * cfg.rollouts * len(self.envs)
            steps = math.ceil(cfg.env_steps / per_iteration) * max(1, cfg.updates)
            context = BuildContext(calibration=calibration, loss=action_loss,
                                   eva_state=eva and eva["state"], steps=steps)  # fmt: skip
            self.adapted = build_method(self.agent.model, cfg.method, context)
        self.initial = save_initial_adapter(self.adapted, out)
        model = self.adapted.model
        self.head = GaussianHead.for_model(model).to(self.agent.device)
        # the deterministic policy keeps the head as its action map (tanh or not) and has no
        # entropy term, so no temperature
        self.temperature = (Temperature(cfg.init_temperature).to(self.agent.device)
                            if cfg.stochastic else None)  # fmt: skip
        if self.start is not None and self.start.head is not None and cfg.stochastic:
            self._continue_head(*self.start.head)
        self.init = {
            "trainable_parameters": trainable_parameters(model)
            + (trainable_parameters(self.head) if cfg.stochastic else 0),
            "total_parameters": sum(p.numel() for p in self.agent.model.parameters()),
            "gradient_signal": gradient_signal(model, calibration),
            "collector_seconds": eva["seconds"] if eva else None,
            "ranks": self.adapted.ranks,
        }
        if not cfg.resume:
            log_setup(out / "tb", self.init)
        self.buffer = TrajectoryBuffer.for_agent(self.agent, self.data, cfg.capacity, cfg.seed)
        self._open_envs()

    def _continue_head(self, head: GaussianHead, temperature: Temperature) -> None:
        """An online start's exploration (log-std, temperature) goes on where it stopped."""
        with torch.no_grad():
            self.head.raw_log_std.copy_(head.raw_log_std)
            self.temperature.log_temperature.copy_(temperature.log_temperature)

    def _open_envs(self) -> None:
        """The evaluator (mean action, target eval_target_scale times the best offline return)
        and the collector (sampled actions, rtg_scale times it; `scaled_target`)."""
        cfg = self.cfg
        self.meta = tuned_meta(self.agent.meta, self.best, cfg, self.precision)
        tuned = Agent(self.adapted.model, self.meta)
        device = str(self.agent.device)
        eval_cfg = cfg.eval.for_run(device, self.precision)
        eval_cfg = dataclasses.replace(eval_cfg, target_scale=cfg.eval_target_scale)
        self.evaluator = Evaluator(tuned, self.envs, eval_cfg, progress=False,
                                   max_episodes=cfg.eval.final_count)  # fmt: skip
        explore = {env: scaled_target(ret, cfg.rtg_scale) for env, ret in self.best.items()}
        collect_cfg = EvalConfig(episodes=cfg.rollouts, target_returns=explore, device=device,
                                 precision=self.precision, max_envs=cfg.eval.max_envs,
                                 workers=cfg.eval.workers)  # fmt: skip
        noise = None if cfg.stochastic else cfg.expl_noise
        self.collector = Collector(tuned, self.envs, collect_cfg, self.head, noise)

    def evaluate(self, env_steps: int, updates: int) -> EvalPoint:
        """The mean action (ODT's `use_mean`) on the evaluation episodes, more at the end."""
        final = env_steps >= self.cfg.env_steps
        episodes = self.cfg.eval.final_count if final else self.cfg.eval.episodes
        videos = self.out / "videos" / f"env-steps-{env_steps:08d}"  # with eval.video only
        result = self.evaluator.run(episodes, video_dir=str(videos))
        log_videos(result, self.out / "tb" / "env_steps", env_steps)
        return EvalPoint.of(env_steps, result, updates=float(updates))

    def collect(self, first_seed: int) -> dict:
        return self.collector.collect(first_seed)

    def write_agent(self, directory: Path) -> None:
        export_adapted(self.adapted, directory, self.cfg.checkpoint, self.initial)
        if self.cfg.stochastic:  # the deterministic policy is the DT alone
            save_head(directory, self.head, self.temperature)
        atomic_write_json(directory / META_FILE, dataclasses.asdict(self.meta))

    def export(self, directory: Path) -> None:
        self.write_agent(directory / "agent")

    def train(self) -> dict:
        from eva_rl.online.trainer import OnlineTrainer

        loop_started = time.perf_counter()
        try:
            self.trainer = OnlineTrainer(
                self.adapted.model, self.head, self.temperature, self.buffer, self.cfg,
                self.out, collect=self.collect, evaluate=self.evaluate, export=self.export,
                adapted=self.adapted, precision=self.precision, progress=self.progress)  # fmt: skip
            history = self.trainer.run()
        finally:
            self.evaluator.close()
            self.collector.close()
        outside = time.perf_counter() - self.started - (time.perf_counter() - loop_started)
        history["wall_seconds"] = outside + history["seconds"]
        return history

    def save(self, history: dict) -> dict:
        """The final agent, the collected episodes as a Minari dataset, summary.json."""
        cfg, counts = self.cfg, self.trainer.counts
        self.meta.provenance.update(steps=counts["updates"], env_steps=counts["env_steps"])
        points = [EvalPoint.from_dict(p) for p in history["eval"]]
        summary = RunSummary(
            method=cfg.method.name, task=cfg.task or None, datasets=cfg.dataset_ids,
            rank=cfg.method.rank, rho=cfg.method.rho, seed=cfg.seed, steps=counts["updates"],
            eval=points, final_loss=history.get("loss"), **self.init_fields(),
            processes=1, effective_batch_size=cfg.optim.batch_size,
            train_seconds=history["seconds"], wall_seconds=history["wall_seconds"],
            config=to_dict(cfg), precision=self.precision,
            step_unit="env_steps", machines=history.get("machines", []),
        )  # fmt: skip
        dataset = self._write_dataset(counts["episodes"])
        out = summary.to_dict() | {
            "env_steps": counts["env_steps"],
            "updates": counts["updates"],
            "iterations": counts["iterations"],
            "episodes_collected": counts["episodes"],
            "auc_env_steps": curve_auc([(p.step, p.metrics["score"]) for p in points]),
            "collected": history["collected"],
            "throughput": throughput(history["phase_seconds"], counts),
            "dataset": dataset,
        }
        atomic_write_dir(self.out / "agent", self.write_agent)
        log_hparams(self.out / "tb", cfg, summary, counts["updates"])
        atomic_write_json(self.out / SUMMARY_FILE, out)  # last: it marks the run finished
        return out

    def init_fields(self) -> dict:
        init = self.init
        return {"trainable_parameters": init["trainable_parameters"],
                "total_parameters": init["total_parameters"],
                "gradient_signal": init["gradient_signal"],
                "collector_seconds": init["collector_seconds"],
                "ranks": METHODS[self.adapted.method].final_ranks(self.adapted)}  # fmt: skip

    def _write_dataset(self, count: int) -> dict:
        """Every collected episode, per env, as `eva_rl/online-<env>-v0` under the run's
        `minari/` (replaced on a rerun of `save`)."""
        written = {}
        episodes = self.trainer.store.load(count)
        for env in self.envs:
            records = [record for record, name in episodes if name == env]
            if not records:
                continue
            name = f"eva_rl/online-{re.sub(r'[^A-Za-z0-9]+', '-', env).strip('-')}-v0"
            written[name] = write_online_dataset(
                records, name, env, self.meta.horizon, self.cfg, root=self.out / MINARI_DIR,
                overwrite=True)  # fmt: skip
            written[name] = {"root": str(self.out / MINARI_DIR), "episodes": len(records)}
        return written


def throughput(phase_seconds: dict[str, float], counts: dict[str, int]) -> dict:
    """Env-steps/s while collecting and updates/s while updating, each over its own phase's
    seconds (so neither is diluted by the other or by evaluations), with the seconds."""
    collect, update = phase_seconds["collect"], phase_seconds["update"]
    return {
        "env_steps_per_s": round(counts["env_steps"] / collect, 2) if collect else None,
        "updates_per_s": round(counts["updates"] / update, 2) if update else None,
        "phase_seconds": {k: round(v, 4) for k, v in phase_seconds.items()},
    }
