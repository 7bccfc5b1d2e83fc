"""`eva-rl data record`: a Minari dataset of any gymnasium env from an agent's rollouts.

The agent (any checkpoint, adapter or hub DT) plays seeded episodes through the evaluator, with
optional Gaussian action noise (per-episode seeded) for variety; without a checkpoint the actions
are uniform random in the action space, to bootstrap data for an env nobody has an agent for yet.
Episodes are written with Minari's own `create_dataset_from_buffers` (no jax needed), into a
staging folder first and moved into place in one rename, like `data build`.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from eva_rl.config import check_seed
from eva_rl.data import catalog
from eva_rl.envs import env_dims, make_env, metaworld_task_names
from eva_rl.errors import UserError
from eva_rl.io import check_writable
from eva_rl.results import EVAL_SEED


@dataclass
class RecordConfig:
    env: str = ""  # a gymnasium env id (or a Meta-World v3 task)
    id: str = ""  # the Minari dataset id to write, namespace/name-vN
    episodes: int = 100  # episodes to record
    checkpoint: str | None = None  # the agent that acts; None: uniform random actions
    stats: str | None = None  # eva_rl.json-style stats for a plain transformers checkpoint
    noise: float = 0.0  # agent's Gaussian action noise, as a fraction of each action's range/2
    target_return: float | None = None  # the agent's target; default: its own for this env
    horizon: int | None = None  # episode cut; default: the agent's horizon, else the env's limit
    seed: int = 0  # episode i is reset with seed + i (its noise too)
    root: str | None = None  # Minari root; None: $MINARI_DATASETS_PATH or ~/.minari/datasets
    overwrite: bool = False  # replace an existing dataset of that id
    device: str = "auto"  # of the agent: auto (CUDA when present), cpu, cuda, cuda:N
    precision: str = "auto"  # auto | bf16 | fp32 (checked by the agent's run: no torch here)
    workers: int = 0  # env-stepping processes for the agent's rollouts; 0: auto

    def __post_init__(self):
        if not self.env or not self.id:
            raise UserError("data record needs --env ENV and --id NAMESPACE/NAME-vN")
        if self.episodes < 1:
            raise UserError(f"episodes must be >= 1, got {self.episodes}")
        check_seed(self.seed, "seed")
        if self.noise < 0 or (self.horizon is not None and self.horizon < 1):
            raise UserError("noise must be >= 0 and horizon >= 1")
        if self.checkpoint is None and (self.noise or self.target_return is not None):
            raise UserError("noise and target_return act on an agent: pass --checkpoint DIR")
        if self.seed < EVAL_SEED + 1000 and self.seed + self.episodes > EVAL_SEED:
            last = self.seed + self.episodes - 1
            warnings.warn(f"episodes reset with seeds {self.seed}..{last} include the "
                          f"evaluation's ({EVAL_SEED} on): an agent trained on this data is "
                          f"evaluated on layouts it saw; pass --seed {EVAL_SEED + 1000} or more, "
                          "or fewer episodes", stacklevel=2)  # fmt: skip
        catalog.check_id(self.id)


def record(cfg: RecordConfig, progress: bool = True) -> dict[str, Any]:
    """Roll out, write the dataset, return its summary."""
    root = catalog.datasets_root(cfg.root)
    if catalog.exists(root, cfg.id) and not cfg.overwrite:
        raise UserError(f"dataset {cfg.id} already exists under {root}; pass --overwrite")
    check_writable(root, directory=True)
    started = time.perf_counter()
    if cfg.checkpoint is None:
        horizon = cfg.horizon or _own_limit(cfg.env)
        policy = "uniform random actions"
    else:
        episodes, horizon = _agent_rollouts(cfg, progress)
        policy = f"the agent {cfg.checkpoint} (action noise {cfg.noise:g} of the half-range)"
    env = make_env(cfg.env, horizon, cut=True)  # the dataset's env (its spec names the cut)
    try:
        if cfg.checkpoint is None:
            episodes = _random_rollouts(cfg, env, horizon, progress)
        with catalog.staging(root) as staged:
            return catalog.write_dataset(
                staged,
                root,
                cfg.id,
                episodes,
                env,
                algorithm="eva_rl-record",
                description=(
                    f"{cfg.env}: {len(episodes)} episodes of {policy}, episode i reset with seed "
                    f"{cfg.seed}+i, cut at {horizon} steps; recorded by eva-rl data record."
                ),
                requirements=["gymnasium[mujoco]>=1.0"],
                summary={
                    "env": cfg.env,
                    "policy": policy,
                    "seed": cfg.seed,
                    "horizon": horizon,
                    "seconds": round(time.perf_counter() - started, 2),
                },
                config=cfg,
                overwrite=cfg.overwrite,
            )
    finally:
        env.close()


def _own_limit(name: str) -> int:
    """The env's own episode length, read without building it: a Meta-World task's
    `max_path_length` (500), else its registered time limit (1000 where it has none)."""
    if name in metaworld_task_names():
        import metaworld.env_dict

        return metaworld.env_dict.ALL_V3_ENVIRONMENTS[name].max_path_length
    return _registered_limit(name) or 1000  # an unregistered env: building it says so


def _random_rollouts(cfg: RecordConfig, env: gym.Env, horizon: int, progress: bool) -> list[dict]:
    env_dims(env, cfg.env)  # Box spaces only
    low, high = env.action_space.low, env.action_space.high
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise UserError(f"env {cfg.env} has an unbounded action space: record with an agent")
    episodes = []
    for i in tqdm(range(cfg.episodes), desc="record", unit="ep", disable=not progress):
        rng = np.random.default_rng([cfg.seed + i, 0x72616E64])
        obs, _ = env.reset(seed=cfg.seed + i)
        track = {"observations": [obs], "actions": [], "rewards": [], "terminations": [],
                 "truncations": []}  # fmt: skip
        success = []  # per step, as an agent's recording keeps it (`catalog.success_infos`)
        for t in range(horizon):
            action = rng.uniform(low, high).astype(env.action_space.dtype)
            obs, reward, terminated, truncated, info = env.step(action)
            success.append(float(info.get("success", np.nan)))
            cut = t + 1 == horizon and not (terminated or truncated)
            for key, value in zip(track, (obs, action, reward, terminated, truncated or cut),
                                  strict=True):  # fmt: skip
                track[key].append(value)
            if terminated or truncated:
                break
        episode = {k: np.asarray(v) for k, v in track.items()}
        episodes.append({**episode, "infos": catalog.success_infos(success), "seed": cfg.seed + i})
    return episodes


def _agent_rollouts(cfg: RecordConfig, progress: bool) -> tuple[list[dict], int]:
    from eva_rl.agent import Agent, load_agent
    from eva_rl.evaluation import EvalConfig, Evaluator
    from eva_rl.runtime import resolve_device

    agent = load_agent(cfg.checkpoint, stats=cfg.stats, device=resolve_device(cfg.device))
    if cfg.horizon is not None:  # through Agent's own checks (horizon within max_ep_len)
        agent = Agent(agent.model, dataclasses.replace(agent.meta, horizon=cfg.horizon),
                      agent.source)  # fmt: skip
    targets = {cfg.env: cfg.target_return} if cfg.target_return is not None else {}
    eval_cfg = EvalConfig(
        episodes=cfg.episodes,
        seed=cfg.seed,
        target_returns=targets,
        device=cfg.device,
        precision=cfg.precision,
        workers=cfg.workers,
        noise=cfg.noise,
    )
    with Evaluator(agent, [cfg.env], eval_cfg, progress=progress, record=True) as evaluator:
        result = evaluator.run()
    episodes = [{**e.trajectory, "seed": e.seed} for e in result.envs[cfg.env].episodes]
    # a Gymnasium env keeps its own time limit in the evaluator: the episodes end at the
    # shorter of the two, which the dataset's spec must name (Meta-World's is the horizon)
    own = None if cfg.env in metaworld_task_names() else _registered_limit(cfg.env)
    return episodes, min(agent.meta.horizon, own or agent.meta.horizon)


def _registered_limit(name: str) -> int | None:
    """The time limit a Gymnasium env is registered with; None without one or a registration."""
    try:
        return gym.spec(name).max_episode_steps
    except gym.error.Error:
        return None
