"""Evaluation throughput: env-steps/s of `evaluate` in several layouts, measured in one process.

    python benchmarks/bench_evaluate.py [--task button-press-v3] [--episodes 100]
                                        [--layouts 100:1 20:1 20:2] [--threads N]

A layout is `slots:workers`: env instances alive at once (each built once, then reused by later
episodes) and env-stepping processes (1 = this process). `100:1` with 100 episodes is the
evaluator before env reuse (one env per episode, all at once). For each layout the script prints
env-steps/s, the share of time in the DT forward, and whether every episode equals the first
layout's; beside them, the bare env-stepping rate of the task (one env, random actions, no
model) and the cost of building one env. The shipped agent, fp32 (`--precision` to change).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from eva_rl.agent import Agent
from eva_rl.envs import make_env
from eva_rl.evaluation import EvalConfig, evaluate

warnings.filterwarnings("ignore")


def bare_rate(task: str, steps: int = 2000) -> tuple[float, float]:
    t0 = time.perf_counter()
    env = make_env(task, 200)
    build = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    t0 = time.perf_counter()
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        if terminated or truncated:
            env.reset(seed=i)
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate, build


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="button-press-v3")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--layouts", nargs="+", default=["100:1", "20:1", "20:2"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--checkpoint", default="results/pretrained/mt40-cpu/agent")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    agent = Agent.load(args.checkpoint)
    target = {args.task: agent.meta.target_returns.get(args.task, 4500.0)}
    forward = [0.0]
    predict = agent.predict

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = predict(*a, **k)
        forward[0] += time.perf_counter() - t0
        return out

    agent.predict = timed
    warm = EvalConfig(episodes=2, device="cpu", target_returns=target, workers=1)
    evaluate(agent, [args.task], warm, progress=False)  # imports, kernels
    rate, build = bare_rate(args.task)
    print(
        f"task {args.task}, {args.episodes} episodes x 200 steps, torch threads "
        f"{torch.get_num_threads()}, {args.precision}; bare env {rate:.0f} steps/s on one core, "
        f"building one env {build * 1e3:.0f} ms"
    )
    first = None
    for layout in args.layouts:
        slots, workers = (int(x) for x in layout.split(":"))
        cfg = EvalConfig(
            episodes=args.episodes,
            seed=1000,
            device="cpu",
            precision=args.precision,
            target_returns=target,
            max_envs=slots,
            workers=workers,
        )
        forward[0] = 0.0
        t0 = time.perf_counter()
        result = evaluate(agent, [args.task], cfg, progress=False)
        seconds = time.perf_counter() - t0
        episodes = [e.to_dict() for e in result.envs[args.task].episodes]
        first = first or episodes
        steps = sum(e["length"] for e in episodes)
        share = forward[0] / seconds
        print(
            f"slots {slots:3d} workers {workers}: {seconds:6.1f} s {steps / seconds:7.0f} "
            f"env-steps/s  forward {share:4.0%}  same episodes as the first: {episodes == first}"
        )


if __name__ == "__main__":
    main()
