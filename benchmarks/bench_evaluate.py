"""Evaluation throughput: this checkout's evaluator against the base commit's, in the same run.

    python benchmarks/bench_evaluate.py [--base e76e1dc] [--precisions auto fp32]
                                        [--layouts 20:1 20:2] [--base-layout 20:1]
                                        [--episodes 100] [--cli]

The base commit's `eva_rl` is exported (`git archive`) into a temporary folder; every
measurement runs in a fresh subprocess with PYTHONPATH on one side or the other, the sides
interleaved, so both see the same machine state. A layout is `slots:workers` (env instances
alive at once : env-stepping processes, 1 = this process); the base runs in its default on 2
cores (`--base-layout`: with workers its 2-thread forward stalls beside them). Each run plays
the shipped agent on `--episodes` seeded episodes of button-press-v3 and prints env-steps/s,
the ratio to the base run of the same precision, where the time goes (the DT forward; env
steps in this process, or the wait for the worker processes' env steps; the rest: histories,
bookkeeping, resets, building envs) and whether its episodes equal the base run's. `--cli`
also times the whole `eva-rl evaluate` command once per side (imports, loading, report and
TensorBoard included) at the default precision and layout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "results/pretrained/mt40-cpu/agent"


def _timer(owner, name: str, clock: dict, key: str) -> None:
    """Wrap `owner.name` so the seconds spent in it add up in `clock[key]`."""
    inner = getattr(owner, name)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            clock[key] += time.perf_counter() - t0

    setattr(owner, name, timed)


def child(args) -> None:
    """One measured evaluation in this process (whichever `eva_rl` PYTHONPATH names)."""
    warnings.filterwarnings("ignore")
    import gymnasium as gym

    from eva_rl import evaluation
    from eva_rl.agent import Agent
    from eva_rl.envs import EnvSlots
    from eva_rl.evaluation import EvalConfig, evaluate

    clock = {"forward": 0.0, "env": 0.0}
    if hasattr(evaluation, "Rollouts"):  # this checkout: the last-token forward on kept windows
        from eva_rl.windows import ContextWindows

        _timer(ContextWindows, "actions", clock, "forward")
    else:  # the base commit: the full forward on gathered windows (an editable install of
        _timer(Agent, "predict", clock, "forward")  # eva_rl can still offer newer modules)
    _timer(EnvSlots, "step", clock, "env")  # env steps in this process
    _timer(gym.vector.AsyncVectorEnv, "step_wait", clock, "env")  # waiting for the workers
    agent = Agent.load(args.checkpoint)
    slots, workers = (int(x) for x in args.layout.split(":"))
    target = {args.task: agent.meta.target_returns[args.task]}
    warm = EvalConfig(episodes=1, device="cpu", precision=args.precision, workers=1)
    evaluate(agent, [args.task], warm, progress=False)  # imports, kernels
    cfg = EvalConfig(episodes=args.episodes, seed=args.seed, device="cpu",
                     precision=args.precision, target_returns=target, max_envs=slots,
                     workers=workers)  # fmt: skip
    clock.update(forward=0.0, env=0.0)
    t0 = time.perf_counter()
    result = evaluate(agent, [args.task], cfg, progress=False)
    seconds = time.perf_counter() - t0
    episodes = [e.to_dict() for e in result.envs[args.task].episodes]
    print(json.dumps({"seconds": seconds, "episodes": episodes, **clock}))


def run_child(pythonpath: Path, args, precision: str, layout: str) -> dict:
    command = [sys.executable, __file__, "--child", "--precision", precision, "--layout", layout,
               "--episodes", str(args.episodes), "--seed", str(args.seed), "--task", args.task,
               "--checkpoint", str(args.checkpoint)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def time_cli(pythonpath: Path, args, out: Path) -> float:
    command = [sys.executable, "-m", "eva_rl.cli", "evaluate", "--checkpoint",
               str(args.checkpoint), "--envs", args.task, "--episodes", str(args.episodes),
               "--out", str(out), "--overwrite"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    t0 = time.perf_counter()
    subprocess.run(command, env=env, capture_output=True, check=True, cwd=out.parent)
    return time.perf_counter() - t0


def line(side: str, precision: str, layout: str, run: dict, base: dict | None) -> str:
    steps = sum(e["length"] for e in run["episodes"])
    seconds = run["seconds"]
    rest = seconds - run["forward"] - run["env"]
    ratio = f"{base['seconds'] / seconds:5.2f}x" if base else "  1.00x"
    same = run["episodes"] == base["episodes"] if base else True
    return (f"{side:5s} {precision:4s} {layout:6s} {seconds:6.1f} s {steps / seconds:6.0f} "
            f"env-steps/s {ratio}  forward {run['forward'] / seconds:4.0%}  env "
            f"{run['env'] / seconds:4.0%}  rest {rest / seconds:4.0%}  episodes equal to "
            f"base: {same}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="e76e1dc", help="the commit to compare with")
    ap.add_argument("--precisions", nargs="+", default=["auto", "fp32"])
    ap.add_argument("--layouts", nargs="+", default=["20:1", "20:2"], help="ours")
    ap.add_argument("--base-layout", default="20:1", help="the base commit's default on 2 cores")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", default="button-press-v3")
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    ap.add_argument("--cli", action="store_true", help="also time the whole CLI command")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--layout", default="20:1", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    found = sorted({f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()})
    flags = " ".join(found) or "no avx512_bf16/amx_bf16"
    print(f"{args.task}, {args.episodes} episodes, seed {args.seed}, base {args.base}, "
          f"{os.cpu_count()} cores, CPU flags: {flags}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        base_tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base, "eva_rl", "envs"],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive, check=True)
        for precision in args.precisions:
            base = run_child(base_tree, args, precision, args.base_layout)
            print(line("base", precision, args.base_layout, base, None), flush=True)
            for layout in args.layouts:
                ours = run_child(ROOT, args, precision, layout)
                print(line("ours", precision, layout, ours, base), flush=True)
        if args.cli:
            for side, tree in (("base", base_tree), ("ours", ROOT)):
                out = Path(tmp) / f"{side}.json"
                seconds = time_cli(tree, args, out)
                report = json.loads(out.read_text())["envs"][args.task]["episodes"]
                steps = sum(e["length"] for e in report)
                print(f"{side}: whole `eva-rl evaluate` {seconds:.1f} s, "
                      f"{steps / seconds:.0f} env-steps/s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
