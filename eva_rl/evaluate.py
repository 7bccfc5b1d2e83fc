"""Seeded, batched evaluation of a DT agent on Meta-World tasks or any Box gymnasium env.

Episodes run together, up to `max_envs` at once, and each env step is ONE forward pass for all
live episodes instead of one per episode (measured on 2 CPU cores: 1.8x faster than one episode
at a time at 10 episodes, where the forward is compute-bound; far more on a GPU). Each env
instance plays exactly one episode (no autoreset), so short episodes are never over-counted, and
episode i is reset with seed `cfg.seed + i`, so a run is reproducible and episode i of a batch
equals the same episode played alone (or in another chunk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from eva_rl.agent import Agent, resolve_device
from eva_rl.envs import make_task_env, metaworld_task_names
from eva_rl.errors import UserError
from eva_rl.io import atomic_write_json

METRICS = ("success_any", "success_final", "return")  # what TensorBoard gets, per env and mean


def make_eval_env(name: str, horizon: int, render_mode: str | None = None) -> gym.Env:
    """A Meta-World v3 task (truncated at `horizon`) or, for any other name, `gymnasium.make`.

    Generic envs keep their own time limit; `evaluate` also stops every episode at `horizon`.
    """
    if name in metaworld_task_names():
        return make_task_env(name, horizon, render_mode=render_mode)
    try:
        return gym.make(name, render_mode=render_mode)
    except gym.error.Error as e:
        raise UserError(
            f"cannot make env {name!r}: not a Meta-World v3 task and gymnasium says: {e}"
        ) from None


@dataclass
class EvalConfig:
    episodes: int = 10  # per env
    seed: int = 0  # episode i is reset with seed + i
    target_returns: dict[str, float] = field(default_factory=dict)  # env -> target, overrides
    target_scale: float = 1.0  # multiplies the target (e.g. 1.2 to ask for more than the best)
    device: str = "auto"
    max_envs: int = 100  # episodes (MuJoCo envs) alive at once, ~25 MB each; 0: all at once

    def __post_init__(self):
        if self.max_envs < 0:
            raise UserError(f"max_envs must be >= 0 (0 = all at once), got {self.max_envs}")
        if self.episodes < 1:
            raise UserError(f"eval episodes must be >= 1, got {self.episodes}")
        if not math.isfinite(self.target_scale):
            raise UserError(f"target_scale must be finite, got {self.target_scale}")


def target_return(agent: Agent, name: str, cfg: EvalConfig) -> float:
    """The override for `name`, else the checkpoint's target, times `cfg.target_scale`."""
    if name in cfg.target_returns:
        base = cfg.target_returns[name]
    elif name in agent.meta.target_returns:
        base = agent.meta.target_returns[name]
    else:
        known = ", ".join(sorted(agent.meta.target_returns)) or "none"
        raise UserError(
            f"no target return for env {name!r} (the checkpoint has targets for: {known}); "
            f"pass --target-return {name}=VALUE"
        )
    return float(base) * cfg.target_scale


def _env_dims(env: gym.Env, name: str) -> tuple[int, int]:
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, gym.spaces.Box) or not isinstance(act, gym.spaces.Box):
        raise UserError(
            f"env {name} has observation space {obs} and action space {act}; "
            "a Decision Transformer needs Box observations and a 1-D Box action space"
        )
    if len(act.shape) != 1:
        raise UserError(f"env {name} has action shape {act.shape}; only 1-D actions are supported")
    return int(np.prod(obs.shape)), int(act.shape[0])


def evaluate(agent: Agent, envs: list[str], cfg: EvalConfig, progress: bool = True) -> dict:
    """Play `cfg.episodes` seeded episodes per env, all batched; return per-env and mean metrics.

    The result holds, per env and averaged over envs: return_mean/std, length_mean, success_any,
    success_final (None where the env reports no `success`); per env also the episode list.
    The model's device and train/eval mode are restored afterwards (safe inside a training loop).
    """
    if not envs:
        raise UserError("no envs to evaluate")
    if len(set(envs)) != len(envs):
        raise UserError(f"env names must be unique, got {envs}")
    targets = {name: target_return(agent, name, cfg) for name in envs}
    device = resolve_device(cfg.device)
    horizon = agent.meta.horizon
    for name in envs:  # refuse a mismatch before any rollout
        env = make_eval_env(name, horizon)
        try:
            agent.check_dims(*_env_dims(env, name), f"env {name}")
        finally:
            env.close()
    jobs = [(name, cfg.seed + i) for name in envs for i in range(cfg.episodes)]
    step = cfg.max_envs or len(jobs)
    episodes: list[dict] = []
    model, was_training, old_device = agent.model, agent.model.training, agent.device
    model.to(device).eval()
    try:
        for start in range(0, len(jobs), step):  # at most max_envs MuJoCo envs alive at once
            chunk = jobs[start : start + step]
            instances = [make_eval_env(name, horizon) for name, _ in chunk]
            try:
                episodes += _rollout(
                    agent,
                    instances,
                    [seed for _, seed in chunk],
                    np.asarray([targets[name] for name, _ in chunk]),
                    progress,
                    ",".join(dict.fromkeys(name for name, _ in chunk)),
                )
            finally:
                for env in instances:
                    env.close()
                instances.clear()  # free this chunk's envs before the next is built
    finally:
        model.to(old_device).train(was_training)
    per_env = {}
    for k, name in enumerate(envs):
        eps = episodes[k * cfg.episodes : (k + 1) * cfg.episodes]
        per_env[name] = {"target_return": targets[name], **_summary(eps), "episodes": eps}
    result: dict[str, Any] = {
        "config": {
            "episodes": cfg.episodes,
            "seed": cfg.seed,
            "target_scale": cfg.target_scale,
            "horizon": horizon,
            "context_length": agent.meta.context_length,
        },
        "envs": per_env,
    }
    for key in ("return_mean", "return_std", "length_mean", "success_any", "success_final"):
        result[key] = _mean([r[key] for r in per_env.values()])
    return result


@torch.inference_mode()
def _rollout(agent, envs, seeds, targets, progress, desc) -> list[dict]:
    """Step all `envs` together; one `agent.predict` per step over the live episodes.

    Histories sit in preallocated (B, K-1+H, ...) buffers whose first K-1 slots are zero padding,
    so step t's model input is the slice [t, t+K): the sampler's training layout (left padding,
    mask 1 on the real steps at the right end), with a zero action at the current position.
    """
    meta, dev = agent.meta, agent.device
    n, horizon, k = len(envs), meta.horizon, meta.context_length
    pad = k - 1
    states = torch.zeros(n, pad + horizon, agent.state_dim, device=dev)  # raw
    actions = torch.zeros(n, pad + horizon, agent.act_dim, device=dev)
    rtg = torch.zeros(n, pad + horizon, 1, device=dev)  # scaled by return_scale
    timesteps = torch.zeros(n, pad + horizon, dtype=torch.long, device=dev)
    last = agent.model.config.max_ep_len - 1  # the timestep embedding has max_ep_len rows
    timesteps[:, pad:] = torch.arange(horizon, device=dev).clamp(max=last)
    rtg[:, pad, 0] = torch.as_tensor(targets / meta.return_scale, dtype=torch.float32)
    low = np.stack([env.action_space.low for env in envs]).astype(np.float32)
    high = np.stack([env.action_space.high for env in envs]).astype(np.float32)
    obs = [_flat(env.reset(seed=s)[0]) for env, s in zip(envs, seeds, strict=True)]
    states[:, pad] = torch.as_tensor(np.stack(obs), device=dev)
    episodes = [
        {"seed": s, "return": 0.0, "length": 0, "success_any": None, "success_final": None}
        for s in seeds
    ]
    live = list(range(n))
    bar = tqdm(total=n * horizon, unit="step", desc=f"eval {desc}", disable=not progress)
    positions = torch.arange(k, device=dev)
    for t in range(horizon):
        rows = torch.as_tensor(live, device=dev)
        window = slice(t, t + k)
        mask = (positions >= pad - t).long().expand(len(live), k)
        pred = agent.predict(
            agent.normalize(states[rows, window]) * mask[..., None],
            actions[rows, window],
            rtg[rows, window],
            timesteps[rows, window],
            mask,
        )
        act = np.clip(pred.float().cpu().numpy(), low[live], high[live])
        actions[rows, pad + t] = torch.as_tensor(act, device=dev)
        still, next_obs, rewards = [], [], []
        for j, b in enumerate(live):
            o, r, terminated, truncated, info = envs[b].step(act[j])
            ep = episodes[b]
            ep["return"] += float(r)
            ep["length"] += 1
            if "success" in info:
                success = float(info["success"])
                ep["success_final"] = success
                ep["success_any"] = max(ep["success_any"] or 0.0, success)
            if not (terminated or truncated):
                still.append(b)
                next_obs.append(_flat(o))
                rewards.append(float(r))
        bar.update(len(live))
        live = still
        if not live or t + 1 == horizon:
            break
        nxt = torch.as_tensor(live, device=dev)
        states[nxt, pad + t + 1] = torch.as_tensor(np.stack(next_obs), device=dev)
        scaled = torch.as_tensor(rewards, dtype=torch.float32, device=dev) / meta.return_scale
        rtg[nxt, pad + t + 1, 0] = rtg[nxt, pad + t, 0] - scaled
    bar.total = bar.n
    bar.close()
    return episodes


def _flat(obs) -> np.ndarray:
    return np.asarray(obs, np.float32).reshape(-1)


def _summary(episodes: list[dict]) -> dict:
    returns = np.array([e["return"] for e in episodes], dtype=np.float64)
    return {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "length_mean": float(np.mean([e["length"] for e in episodes])),
        "success_any": _mean([e["success_any"] for e in episodes]),
        "success_final": _mean([e["success_final"] for e in episodes]),
    }


def _mean(values: list[float | None]) -> float | None:
    """Mean of the values that exist; None when none does (an env without success info)."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def write_report(result: dict, path) -> None:
    """The full result (config, per-env metrics, every episode) as JSON, written atomically."""
    atomic_write_json(path, result)


def log_to_tensorboard(result: dict, writer, step: int, prefix: str = "eval") -> None:
    """<prefix>/<env>/{success_any,success_final,return} and the means <prefix>/{...}."""

    def log(tag: str, summary: dict) -> None:
        for metric in METRICS:
            value = summary["return_mean" if metric == "return" else metric]
            if value is not None:
                writer.add_scalar(f"{tag}/{metric}", value, step)

    for name, summary in result["envs"].items():
        log(f"{prefix}/{name}", summary)
    log(prefix, result)
