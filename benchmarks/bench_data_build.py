"""Dataset build throughput: recording overhead and parallel speed-up, as ratios in one process.

    python benchmarks/bench_data_build.py [--episodes 20] [--task push-v3]

1. raw: the env and the scripted policy stepped with the same seeds and noise, nothing kept;
2. recorded: `rollout_episode` (the builder's own loop) plus writing the Minari dataset;
3. workers: `build()` of two tasks with 1 worker vs one per core.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
import zlib

import numpy as np

from eva_rl.data import catalog
from eva_rl.data.build import DataBuildConfig, build, rollout_episode
from eva_rl.envs import load_suite, make_task_env

warnings.filterwarnings("ignore")


def raw_steps(task: str, episodes: int, seed: int, noise) -> int:
    from metaworld.policies import ENV_POLICY_MAP

    env, policy = make_task_env(task), ENV_POLICY_MAP[task]()
    weights = np.asarray(noise.weights) / np.sum(noise.weights)
    steps = 0
    for index in range(episodes):
        rng = np.random.default_rng([seed, zlib.crc32(task.encode()), index])
        env_seed = int(rng.integers(2**31 - 1))
        std = float(rng.choice(noise.levels, p=weights))
        obs, _ = env.reset(seed=env_seed)
        done = False
        while not done:
            action = np.clip(policy.get_action(obs) + std * rng.standard_normal(4), -1, 1)
            obs, _, terminated, truncated, _ = env.step(action.astype(np.float32))
            done, steps = terminated or truncated, steps + 1
    return steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="push-v3")
    ap.add_argument("--episodes", type=int, default=20)
    args = ap.parse_args()
    suite = load_suite("cw10")
    noise = suite.dataset.noise

    raw_steps(args.task, 1, 0, noise)  # warm-up: env construction, imports
    rollout_episode(args.task, 200, 0, 0, noise)
    t0 = time.perf_counter()
    steps = raw_steps(args.task, args.episodes, 0, noise)
    raw = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cfg = DataBuildConfig(
            tasks=[args.task],
            episodes=args.episodes,
            workers=1,
            chunk_episodes=args.episodes,
            root=tmp,
        )
        build(cfg)
        recorded_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(args.episodes):
            rollout_episode(args.task, 200, 0, i, noise)
        recorded_inproc = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in catalog.datasets_root(tmp).rglob("*") if p.is_file())

    tasks = [args.task, "hammer-v3"]
    timings = {}
    for workers in (1, os.cpu_count() or 1):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            build(DataBuildConfig(tasks=tasks, episodes=args.episodes, workers=workers, root=tmp))
            timings[workers] = time.perf_counter() - t0

    print(f"\n{args.task}, {args.episodes} episodes ({steps} steps), {os.cpu_count()} cores")
    print(f"raw env+policy stepping        {steps / raw:8.0f} steps/s   1.00x")
    print(
        f"recorded rollout (in process)  {steps / recorded_inproc:8.0f} steps/s   "
        f"overhead {recorded_inproc / raw - 1:+.1%}"
    )
    print(
        f"full build, 1 worker (spawn, write, summarise)  {steps / recorded_build:8.0f} steps/s"
        f"   overhead {recorded_build / raw - 1:+.1%}  ({size / 1e6:.1f} MB on disk)"
    )
    many = max(timings)
    print(
        f"2 tasks x {args.episodes} episodes: 1 worker {timings[1]:.1f} s, {many} workers "
        f"{timings[many]:.1f} s, speed-up {timings[1] / timings[many]:.2f}x"
    )


if __name__ == "__main__":
    main()
