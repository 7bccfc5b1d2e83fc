"""ODT's online loop as an object: `OnlineTrainer`.

Not `eva_rl.training.loop.Trainer`: that loop counts gradient updates and trains an action MSE,
while ODT alternates collection and updates, counts env steps, and trains a likelihood with a
second optimiser for the temperature. It reuses that module's pieces (AdamW, the loss window
with its non-finite check, checkpoint folders written atomically, safe state loading, event
purging on resume).

Per iteration (online-dt's `online_tuning`): collect `rollouts` episodes per env with sampled
actions, add them to the replay buffer (hindsight return-to-go), then `updates` updates on
buffer segments: the policy loss backward, its gradient norm clipped, AdamW step, then the
temperature's Adam step (with `policy: deterministic`, the action MSE and no temperature). With
`td3.enabled` (eva_rl/online/critic.py) a TD3 critic steps on each batch first, the policy loss
adds its actor term, both targets move after the policy step, and `actor_interval - 1`
critic-only steps follow. Evaluations (mean action) run when the env steps cross a multiple of
`eval_every`, and at the start and the end. TensorBoard has two step axes, so two folders:
`tb/` against updates (`train/*`, `eval/*`) and `tb/env_steps/` against env steps (`online/*`),
each purged separately on resume.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from eva_rl.kernels import speed_up
from eva_rl.online import EPISODE_STORE
from eva_rl.online.buffer import TrajectoryBuffer
from eva_rl.online.collect import EpisodeStore
from eva_rl.online.config import OnlineConfig
from eva_rl.online.critic import TD3
from eva_rl.online.policy import ActionMean, GaussianHead, Temperature, odt_losses
from eva_rl.results import EvalPoint
from eva_rl.runtime import autocast, note_machine, rng_states, set_rng_states
from eva_rl.signals import interrupts_held
from eva_rl.training.loop import Window, adamw
from eva_rl.training.losses import action_mse, action_preds
from eva_rl.training.rundir import (
    STATE_FILE,
    check_resumed_precision,
    load_state,
    purge_events,
    save_state,
)

ENV_AXIS = "env_steps"  # tb/ subfolder of the scalars against env steps
COLLECT_SEED = 1 << 20  # collected episode n is reset with seed COLLECT_SEED * (seed + 1) + n
PHASES = ("collect", "update", "critic_warmup", "evaluate")  # where a run's seconds went


def warmup(steps: int) -> Callable[[int], float]:
    """ODT's schedule: linear warm-up to the peak, then constant (online-dt main.py)."""
    return lambda step: min((step + 1) / max(1, steps), 1.0)


class OnlineTrainer:
    """Train `model` and `head` (and the temperature) online into `run_dir`; `run()` returns
    the history. `collect(first_seed)` returns env -> recorded episodes; `evaluate(env_steps,
    updates)` an EvalPoint; `export(directory)` writes the user's agent beside a checkpoint."""

    def __init__(self, model, head: GaussianHead, temperature: Temperature | None,
                 buffer: TrajectoryBuffer, cfg: OnlineConfig, run_dir: Path, *,
                 collect: Callable[[int], dict], evaluate: Callable[[int, int], EvalPoint],
                 export: Callable[[Path], None], adapted=None,
                 precision: str = "fp32", progress: bool = False):  # fmt: skip
        self.model, self.head, self.temperature, self.buffer = model, head, temperature, buffer
        self.cfg, self.run_dir, self.precision = cfg, Path(run_dir), precision
        self.progress = progress
        self.collect_fn, self.evaluate_fn, self.export = collect, evaluate, export
        self.hooks = list(adapted.hooks) if adapted is not None else []
        self.penalty = adapted.penalty if adapted is not None else None
        self.device = next(model.parameters()).device
        speed_up(model)  # the offline Trainer's dropout, attention and cast kernels
        self.stochastic = cfg.stochastic  # else the head only maps mu to the action, untrained
        self.params = [p for p in model.parameters() if p.requires_grad]
        if self.stochastic:
            self.params += list(head.parameters())
        self.optimizer = adamw(self.params, cfg.optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup(cfg.optim.warmup_steps)
        )
        self.temperature_optimizer = None  # the deterministic policy: no entropy term
        if self.stochastic:
            self.temperature_optimizer = torch.optim.Adam(
                temperature.parameters(), lr=cfg.temperature_lr, betas=(0.9, 0.999)
            )
        self.store = EpisodeStore(self.run_dir / EPISODE_STORE)
        self.latest = self.run_dir / "checkpoints" / "latest"
        self.counts = {"env_steps": 0, "updates": 0, "iterations": 0, "episodes": 0,
                       "critic_warmup": 0}  # fmt: skip
        self.history: dict[str, Any] = {
            "eval": [],
            "collected": [],
            "seconds": 0.0,
            "phase_seconds": dict.fromkeys(PHASES, 0.0),
        }
        self.window = Window([], [], 1)
        self.stats: dict[str, torch.Tensor] = {}
        self.lr = 0.0  # the last update's learning rate
        self.td3 = None  # off: no critic, and `_update` is ODT's alone
        if cfg.td3.enabled:
            self.td3 = TD3(model, head, cfg.td3, buffer.state_dim, buffer.return_scale,
                           self.device, stochastic=self.stochastic)  # fmt: skip
        if cfg.resume:
            self._resume()
        self.writers: dict[str, SummaryWriter] = {}

    def _resume(self) -> None:
        state = load_state(self.latest / STATE_FILE)
        check_resumed_precision(state, self.precision, self.latest)
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.stochastic:
            self.temperature.load_state_dict(state["temperature"])
            self.temperature_optimizer.load_state_dict(state["temperature_optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        for hook, hook_state in zip(self.hooks, state["hooks"], strict=True):
            hook.load_state_dict(hook_state)
        if self.td3 is not None:
            self.td3.load_state_dict(state["td3"])
        set_rng_states(state, self.device)
        self.counts, self.history = state["counts"], state["history"]
        self.counts.setdefault("critic_warmup", self.cfg.td3.warmup)  # before: saved after it
        self.history.setdefault("phase_seconds", dict.fromkeys(PHASES, 0.0))  # before 6cfacb7
        self.window = Window.from_state(state["window"], self.device)
        self.store.truncate(self.counts["episodes"])  # collected after the checkpoint: again

    def run(self) -> dict[str, Any]:
        """Collect and update until `env_steps`, evaluating and saving on their periods."""
        started, before = time.perf_counter(), self.history["seconds"]
        self._clock = (started, before)
        note_machine(self.history, self.device)
        tb = self.run_dir / "tb"
        if self.cfg.resume:
            purge_events(tb, self.counts["updates"])
            purge_events(tb / ENV_AXIS, self.counts["env_steps"])
        with interrupts_held():  # see eva_rl.signals: a writer stopped mid-call hangs
            self.writers = {"updates": SummaryWriter(tb), ENV_AXIS: SummaryWriter(tb / ENV_AXIS)}
        bar = tqdm(total=self.cfg.env_steps, initial=min(self.counts["env_steps"],
                   self.cfg.env_steps), desc="online", unit="env-step",
                   disable=not self.progress)  # fmt: skip
        try:
            if not self.history["eval"]:
                self._evaluate()
            if self.td3 is not None and self.counts["critic_warmup"] < self.cfg.td3.warmup:
                with self._timed("critic_warmup"):
                    self._warm_critic()
            while self.counts["env_steps"] < self.cfg.env_steps:
                before_steps = self.counts["env_steps"]
                self._iteration()
                bar.update(min(self.counts["env_steps"], self.cfg.env_steps) - before_steps)
                last = self.history["eval"][-1]
                bar.set_postfix(
                    updates=self.counts["updates"],
                    score=f"{last['score']:.3g}",
                    collected=f"{self.history['collected'][-1]['return']:.3g}",
                )
        finally:
            bar.close()
            with interrupts_held():
                for writer in self.writers.values():
                    writer.close()
        self.history["seconds"] = before + time.perf_counter() - started
        return self.history

    def _iteration(self) -> None:
        cfg, counts = self.cfg, self.counts
        last_eval = counts["env_steps"] // cfg.eval_every
        with self._timed("collect"):
            self._collect()
        self.model.train()
        with self._timed("update"):
            for _ in range(cfg.updates):
                self._update()
                if counts["updates"] % cfg.log_every == 0:
                    self._log()
        counts["iterations"] += 1
        done = counts["env_steps"] >= cfg.env_steps
        if done or counts["env_steps"] // cfg.eval_every > last_eval:
            self._log()
            self._evaluate()
        if done or counts["iterations"] % cfg.save_every == 0:
            self.window.check(self.latest, self.history.get("saved_step"))
            self.save()

    @contextlib.contextmanager
    def _timed(self, phase: str):
        """Add the block's seconds to `phase`: env-steps/s and updates/s are each measured on
        their own phase, not diluted by the other (the summary's `throughput`)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.history["phase_seconds"][phase] += time.perf_counter() - started

    def _collect(self) -> None:
        """One iteration's episodes: on disk, in the buffer, counted and logged."""
        counts = self.counts
        first = COLLECT_SEED * (self.cfg.seed + 1) + counts["episodes"]
        played = self.collect_fn(first)
        returns, successes, steps = [], [], 0
        for env, episodes in played.items():
            for episode in episodes:
                record = {**episode.trajectory, "seed": episode.seed}
                self.store.add(counts["episodes"], record, env)
                self.buffer.add(record, env)
                counts["episodes"] += 1
                steps += episode.length
                returns.append(episode.ret)
                if episode.success_final is not None:
                    successes.append(episode.success_final)
        counts["env_steps"] += steps
        row = {"env_steps": counts["env_steps"], "return": sum(returns) / len(returns)}
        if successes:
            row["success_final"] = sum(successes) / len(successes)
        self.history["collected"].append(row)
        self._env_scalar("online/collect_return", row["return"])
        if successes:
            self._env_scalar("online/collect_success", row["success_final"])

    def _update(self) -> None:
        """One policy step on a buffer batch, then the temperature's step (ODT's order)."""
        if self.td3 is None:
            batch = self.buffer.sample(self.cfg.optim.batch_size)
        else:  # the same draws, with terminal flags; the critic steps first (reference's order)
            batch = self.buffer.sample_with_ends(self.cfg.optim.batch_size)
            self._critic_step(batch)
        with autocast(self.device, self.precision), ActionMean(self.model) as mu:
            preds = action_preds(self.model, batch)
        if self.stochastic:
            dist = self.head(mu.value)
            losses = odt_losses(dist, batch["actions"], batch["attention_mask"],
                                self.temperature, self.cfg.target_entropy)  # fmt: skip
            supervised, mean = losses.policy, dist.mean
        else:  # the reference's `mse_loss_fn`: the offline fine-tuning loss
            supervised, mean = action_mse(preds, batch), preds.float()
        policy = supervised
        if self.td3 is not None:  # + coef * mean(-Q1(s, mean action))
            rl = self.td3.actor_loss(batch["states"], mean, batch["attention_mask"])
            policy = policy + rl
        if self.penalty is not None:
            policy = policy + self.penalty(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        policy.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        for hook in self.hooks:
            hook.after_step(self.counts["updates"])
        self.lr = self.scheduler.get_last_lr()[0]  # this update's, logged (the next one's after)
        self.scheduler.step()
        if self.stochastic:
            self.temperature_optimizer.zero_grad(set_to_none=True)
            losses.temperature.backward()
            self.temperature_optimizer.step()
            self.window.penalties.append(losses.entropy.float())
        self.counts["updates"] += 1
        self.window.losses.append(supervised.detach().float())
        self.window.grad_norms.append(grad_norm.detach().float())
        self.stats = {**self.stats, "grad_norm": grad_norm.detach()}
        if self.td3 is not None:
            self.stats["rl_loss"] = rl.detach()
            self.td3.update_targets(self.model, self.head)
            for _ in range(self.cfg.td3.actor_interval - 1):  # delayed actor: critic-only steps
                self._critic_step(self.buffer.sample_with_ends(self.cfg.optim.batch_size))

    def _warm_critic(self) -> None:
        """`td3.warmup` critic-only steps on the seeded buffer; the critic's target moves every
        `actor_interval` steps, as it does after each policy step in the reference. A long
        warm-up (the reference's 10,000 steps take minutes) shows its progress and is saved
        every `updates * save_every` steps, the iterations' period in gradient steps, so a
        killed run resumes inside it."""
        cfg, counts = self.cfg, self.counts
        period = cfg.updates * cfg.save_every
        bar = tqdm(total=cfg.td3.warmup, initial=counts["critic_warmup"], desc="critic warm-up",
                   unit="step", disable=not self.progress)  # fmt: skip
        with bar:
            while counts["critic_warmup"] < cfg.td3.warmup:
                self._critic_step(self.buffer.sample_with_ends(cfg.optim.batch_size))
                counts["critic_warmup"] += 1
                if counts["critic_warmup"] % cfg.td3.actor_interval == 0:
                    self.td3.update_critic_target()
                bar.update()
                if self.progress and counts["critic_warmup"] % 100 == 0:
                    bar.set_postfix(critic_loss=f"{self.stats['critic_loss'].item():.3g}")
                if period and counts["critic_warmup"] % period == 0:
                    self.save()

    def _critic_step(self, batch: dict[str, torch.Tensor]) -> None:
        """One TD3 critic step on `batch`, the target policy's actions from its own forward."""
        with autocast(self.device, self.precision):
            target_mu = self.td3.target_mu(self.model, batch)
        self.stats.update(self.td3.critic_step(batch, target_mu))

    def _log(self) -> None:
        """The window's mean policy loss and entropy, lr, temperature, log-std (vs updates)."""
        if not self.window.losses:
            return
        self.window.check(self.latest, self.history.get("saved_step"))
        loss = torch.stack(self.window.losses).mean().item()
        scalars = {
            "train/loss": loss,
            "train/lr": self.lr,
            "train/grad_norm": self.stats["grad_norm"].item(),
        }
        if self.stochastic:
            scalars |= {
                "train/entropy": torch.stack(self.window.penalties).mean().item(),
                "train/temperature": self.temperature.value.item(),
                "train/log_std": self.head.log_std.mean().item(),
            }
        if self.td3 is not None:
            for key in ("critic_loss", "q", "rl_loss"):
                scalars[f"train/{key}"] = self.stats[key].item()
        for tag, value in scalars.items():
            self._scalar(tag, value)
        self.history["loss"] = loss
        self.window = Window([], [], self.counts["updates"] + 1)

    def _scalar(self, tag: str, value: float, updates: int | None = None) -> None:
        """A scalar against updates (`updates`, default now)."""
        updates = self.counts["updates"] if updates is None else updates
        with interrupts_held():
            self.writers["updates"].add_scalar(tag, value, updates)

    def _env_scalar(self, tag: str, value: float) -> None:
        with interrupts_held():
            self.writers[ENV_AXIS].add_scalar(tag, value, self.counts["env_steps"])

    def _evaluate(self) -> None:
        env_steps, updates = self.counts["env_steps"], self.counts["updates"]
        with self._timed("evaluate"):
            point = self.evaluate_fn(env_steps, updates)
        self.history["eval"].append(point.to_dict())
        for key, value in point.metrics.items():
            if key != "updates":
                self._scalar(f"eval/{key}", value, updates)
                self._env_scalar(f"online/{key}", value)
        self._env_scalar("online/updates", updates)
        self._env_scalar("online/updates_per_env_step", updates / max(1, env_steps))

    def save(self) -> None:
        """`checkpoints/latest` atomically: the user's export plus everything a resume needs."""
        started, before = self._clock
        self.history["seconds"] = before + time.perf_counter() - started
        self.history["saved_step"] = self.counts["updates"]  # in the checkpoint too
        state = {
            "model": self.model.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "buffer": self.buffer.state_dict(),
            "hooks": [hook.state_dict() for hook in self.hooks],
            **rng_states(self.device),
            "counts": dict(self.counts),
            "precision": self.precision,
            "history": self.history,
            "window": self.window.state_dict(),
        }
        if self.stochastic:
            state["temperature"] = self.temperature.state_dict()
            state["temperature_optimizer"] = self.temperature_optimizer.state_dict()
        if self.td3 is not None:
            state["td3"] = self.td3.state_dict()
        save_state(self.latest, state, self.export)
