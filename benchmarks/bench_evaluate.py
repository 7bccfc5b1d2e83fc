"""Evaluation throughput: `evaluate` with every episode batched vs one episode at a time.

    python benchmarks/bench_evaluate.py [--episodes 10] [--task push-v3] [--threads N]

Same model (the default DT: hidden 128, 3 layers, K=20), same seeds, same horizon (200). The
sequential side calls `evaluate` with one episode per call, so it does exactly the same per-step
work (one forward per env step) at batch 1. Both sides build the same number of envs; that time
is included and also printed. Rates are env steps per second, measured in this one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings

import torch

from eva_rl.agent import Agent, AgentMeta, ModelConfig, build_model
from eva_rl.evaluate import EvalConfig, evaluate, make_eval_env

warnings.filterwarnings("ignore")


def steps_of(result: dict, task: str) -> list[dict]:
    return result["envs"][task]["episodes"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="push-v3")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--horizon", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=128, n_layer=3, n_head=1, context_length=20), 39, 4)
    meta = AgentMeta(
        state_mean=[0.0] * 39,
        state_std=[1.0] * 39,
        return_scale=1000.0,
        context_length=20,
        horizon=args.horizon,
        target_returns={args.task: 4500.0},
    )
    agent = Agent(model, meta)
    warm = Agent(model, dataclasses.replace(meta, horizon=25))  # imports, env class, kernels
    evaluate(warm, [args.task], EvalConfig(episodes=2, device="cpu"), progress=False)

    t0 = time.perf_counter()
    for _ in range(args.episodes):
        make_eval_env(args.task, args.horizon).close()
    build_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    cfg = EvalConfig(episodes=args.episodes, seed=0, device="cpu")
    batched = steps_of(evaluate(agent, [args.task], cfg, progress=False), args.task)
    batched_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    sequential = []
    for i in range(args.episodes):
        cfg = EvalConfig(episodes=1, seed=i, device="cpu")
        sequential += steps_of(evaluate(agent, [args.task], cfg, progress=False), args.task)
    sequential_s = time.perf_counter() - t0

    steps = sum(e["length"] for e in batched)
    assert steps == sum(e["length"] for e in sequential)
    rate_b, rate_s = steps / batched_s, steps / sequential_s
    print(
        f"task {args.task}, {args.episodes} episodes, horizon {args.horizon}, {steps} env steps, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"env construction ({args.episodes} envs, in both timings): {build_s:.2f} s")
    print(f"batched:    {batched_s:7.2f} s  {rate_b:8.1f} env-steps/s")
    print(f"sequential: {sequential_s:7.2f} s  {rate_s:8.1f} env-steps/s")
    print(f"batched / sequential: {rate_b / rate_s:.2f}x")
    print(f"episodes identical batched vs sequential: {batched == sequential}")


if __name__ == "__main__":
    main()
