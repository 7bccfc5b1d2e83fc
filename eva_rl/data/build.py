"""`eva-rl data build`: offline Minari datasets from Meta-World's scripted experts.

Each episode draws one Gaussian action-noise std from the suite's mixture (see `envs/*.yaml`),
so a dataset spans expert to poor behaviour; a Decision Transformer needs that spread of returns
to learn what return-to-go means. Episodes are split into chunks that run in worker processes
(every core by default); a task's dataset is written once all its chunks are in. Episode `i` of
task `t` depends only on (seed, t, i), never on chunking or worker count.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from eva_rl.config import check_seed
from eva_rl.data import catalog
from eva_rl.data.catalog import dataset_id
from eva_rl.envs import NoiseMixture, Suite, load_suite, make_task_env, unknown_name_message
from eva_rl.errors import UserError
from eva_rl.io import check_writable
from eva_rl.runtime import share

ALGORITHM = "metaworld-scripted-expert+gaussian-action-noise"


@dataclass
class DataBuildConfig:
    suite: str = "cw10"  # a suite name (cw10, mt40, mt50) or a suite YAML file
    tasks: list[str] = field(default_factory=list)  # empty: every task of the suite
    episodes: int | None = None  # per task; None: the suite's recipe
    seed: int | None = None  # None: the suite's recipe
    workers: int = 0  # 0: one per free core (eva_rl.runtime.share)
    chunk_episodes: int = 5  # episodes per worker job
    overwrite: bool = False  # replace existing datasets
    # keep datasets that exist (of the suite's horizon, and the --seed and --episodes given)
    skip_existing: bool = False
    root: str | None = None  # Minari root; None: $MINARI_DATASETS_PATH or ~/.minari/datasets

    def __post_init__(self):
        if self.episodes is not None and self.episodes < 1:
            raise UserError(f"episodes must be >= 1, got {self.episodes}")
        if self.seed is not None:
            check_seed(self.seed, "seed")
        if self.chunk_episodes < 1:
            raise UserError(f"chunk_episodes must be >= 1, got {self.chunk_episodes}")
        if self.workers < 0:
            raise UserError(f"workers must be >= 0 (0 = one per core), got {self.workers}")
        if self.overwrite and self.skip_existing:
            raise UserError("--overwrite and --skip-existing contradict each other; pick one")


@dataclass
class Plan:
    """What a build will do, resolved from the config and the suite."""

    suite: Suite
    tasks: list[str]
    episodes: int
    seed: int
    root: Path
    skipped: list[str]


def plan(cfg: DataBuildConfig) -> Plan:
    suite = load_suite(cfg.suite)
    if suite.family != "metaworld":
        raise UserError(
            f"suite {suite.name} has no scripted experts to build data from; record datasets "
            "for its envs with `eva-rl data record` (the suite names them under datasets)"
        )
    tasks = cfg.tasks or list(suite.tasks)
    for task in tasks:
        if task not in suite.tasks:
            raise UserError(unknown_name_message(f"task for suite {suite.name}", task, suite.tasks))
    root = catalog.datasets_root(cfg.root)
    check_writable(root, directory=True)
    existing = [t for t in tasks if catalog.exists(root, dataset_id(t))]
    if existing and not (cfg.overwrite or cfg.skip_existing):
        raise UserError(
            f"dataset {dataset_id(existing[0])} already exists under {root} "
            f"({len(existing)} of {len(tasks)} exist); pass --overwrite or --skip-existing"
        )
    skipped = existing if cfg.skip_existing else []
    return Plan(
        suite=suite,
        tasks=[t for t in tasks if t not in skipped],
        episodes=cfg.episodes or suite.dataset.episodes_per_task,
        seed=suite.dataset.seed if cfg.seed is None else cfg.seed,
        root=root,
        skipped=skipped,
    )


def build(cfg: DataBuildConfig) -> list[dict[str, Any]]:
    """Build every planned dataset; returns one summary per task (skipped ones included)."""
    p = plan(cfg)
    chunks = [
        list(range(start, min(start + cfg.chunk_episodes, p.episodes)))
        for start in range(0, p.episodes, cfg.chunk_episodes)
    ]
    jobs = [
        (task, p.suite.horizon, p.seed, chunk, p.suite.dataset.noise)
        for task in p.tasks
        for chunk in chunks
    ]
    workers = min(share(cfg.workers), max(len(jobs), 1))
    pending = {task: [] for task in p.tasks}
    chunks_left = dict.fromkeys(p.tasks, len(chunks))
    started = time.perf_counter()
    summaries = [{"task": t, **catalog.read_summary(dataset_id(t), p.root)} for t in p.skipped]
    for summary in summaries:  # kept only if it is what was asked for (defaults: any)
        asked = {"horizon": p.suite.horizon}
        asked |= {"seed": p.seed} if cfg.seed is not None else {}
        asked |= {"episodes": p.episodes} if cfg.episodes else {}
        differ = {k: v for k, v in asked.items() if k in summary and summary[k] != v}
        if differ:
            was = ", ".join(f"{k} {summary[k]}" for k in differ)
            now = ", ".join(f"{k} {v}" for k, v in differ.items())
            raise UserError(f"dataset {dataset_id(summary['task'])} exists with {was}; this build "
                            f"asks for {now}: pass --overwrite to rebuild it, or build with its "
                            "settings")  # fmt: skip
    with (
        catalog.staging(p.root) as staged,
        tqdm(
            total=len(p.tasks) * p.episodes, unit="ep", desc="data build", disable=not jobs
        ) as bar,
        mp.get_context("spawn").Pool(workers, initializer=_quiet_policies) as pool,
    ):
        for task, episodes in pool.imap_unordered(_rollout_chunk, jobs):
            pending[task].extend(episodes)
            chunks_left[task] -= 1
            bar.update(len(episodes))
            if chunks_left[task] == 0:
                episodes = sorted(pending.pop(task), key=lambda e: e["index"])
                summary = _write(staged, p, task, episodes, cfg, time.perf_counter() - started)
                bar.write(catalog.format_summary(summary))
                summaries.append(summary)
    order = {t: i for i, t in enumerate(p.suite.tasks)}
    return sorted(summaries, key=lambda s: order.get(s["task"], len(order)))


def _quiet_policies() -> None:
    """Meta-World's scripted policies warn on every call that their gains may be too high."""
    warnings.filterwarnings("ignore", message="Constant.* may be too high")


def _rollout_chunk(job) -> tuple[str, list[dict[str, Any]]]:
    task, horizon, seed, indices, noise = job
    return task, [rollout_episode(task, horizon, seed, i, noise) for i in indices]


_ENV_CACHE: dict[tuple[str, int], Any] = {}


def rollout_episode(task: str, horizon: int, seed: int, index: int, noise: NoiseMixture):
    """One scripted-expert episode with this episode's noise std; returns numpy arrays."""
    from metaworld.policies import ENV_POLICY_MAP

    key = (task, horizon)
    if key not in _ENV_CACHE:  # building a MuJoCo env costs ~0.5 s: once per worker and task
        _ENV_CACHE[key] = (make_task_env(task, horizon), ENV_POLICY_MAP[task]())
    env, policy = _ENV_CACHE[key]
    rng = np.random.default_rng([seed, zlib.crc32(task.encode()), index])
    env_seed = int(rng.integers(2**31 - 1))
    weights = np.asarray(noise.weights) / np.sum(noise.weights)
    std = float(rng.choice(noise.levels, p=weights))
    obs, info = env.reset(seed=env_seed)
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    infos = {k: [v] for k, v in info.items()}
    done = False
    while not done:
        action = policy.get_action(obs) + std * rng.standard_normal(env.action_space.shape)
        action = np.clip(action, -1.0, 1.0).astype(env.action_space.dtype)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        terminations.append(terminated)
        truncations.append(truncated)
        for k, v in info.items():
            infos[k].append(v)
        done = terminated or truncated
    return {
        "index": index,
        "seed": env_seed,
        "noise_std": std,
        "observations": np.asarray(observations),
        "actions": np.asarray(actions),
        "rewards": np.asarray(rewards, dtype=np.float64),
        "terminations": np.asarray(terminations),
        "truncations": np.asarray(truncations),
        "infos": {k: np.asarray(v) for k, v in infos.items()},
    }


def _write(staged: Path, p: Plan, task: str, episodes, cfg: DataBuildConfig, seconds: float):
    """Write one task's dataset into the staging root and move it into place."""
    mixture = p.suite.dataset.noise
    env = make_task_env(task, p.suite.horizon)
    try:
        return catalog.write_dataset(
            staged,
            p.root,
            dataset_id(task),
            episodes,
            env,
            algorithm=ALGORITHM,
            description=(
                f"Meta-World {task}: scripted expert plus per-episode Gaussian action noise, std "
                f"drawn from {mixture.levels} with weights {mixture.weights}; random object and "
                f"goal every reset; horizon {p.suite.horizon}; seed {p.seed}."
            ),
            requirements=["metaworld>=3.0", "mujoco>=3.0"],
            summary={
                "task": task,
                "noise_std_per_episode": [e["noise_std"] for e in episodes],
                "seed": p.seed,
                "suite": p.suite.name,
                "horizon": p.suite.horizon,
                "seconds": round(seconds, 2),
            },
            config=cfg,
            overwrite=cfg.overwrite,
        )
    finally:
        env.close()
