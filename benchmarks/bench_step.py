"""Training-step speed of `eva-rl finetune` against an older commit, side by side in one run.

    python benchmarks/bench_step.py [--old e76e1dc] [--methods lora eva fft] [--steps 80]
                                    [--rounds 3] [--task shelf-place-v3] [--precision auto]

The old commit is checked out into a temporary git worktree; every (round, method, side) is a
fresh process running the real `eva_rl.finetune` of that tree (shipped agent, the task's
scripted-expert data, batch 64, rank 8, threads and precision as a user gets them unless given)
with the same seed. A step's time is read from the run's own TensorBoard: the wall time between
the first and the last `train/loss` point over the updates between them, so the collector, the
evaluations and the checkpoint are outside it and sampling, the schedule, logging and the update
itself are inside. Old and new alternate within each round, so machine noise falls on both.
Prints the median per method and side, the speed-up, and the CPU's bf16 flags.
Needs the dataset: eva-rl data build --suite cw10 --tasks shelf-place-v3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DRIVER = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from eva_rl.config import load_config
from eva_rl.training.finetune import FinetuneConfig, finetune
args = json.loads(sys.argv[1])
names = [f"task={args['task']}", f"out={args['out']}"]
cfg = load_config(FinetuneConfig, None, names + args["overrides"])
finetune(cfg, progress=False)
acc = EventAccumulator(args["out"] + "/tb"); acc.Reload()
points = acc.Scalars("train/loss")
first, last = points[0], points[-1]
print(json.dumps({"ms": 1e3 * (last.wall_time - first.wall_time) / (last.step - first.step)}))
"""


def cpu_flags() -> str:
    flags = Path("/proc/cpuinfo").read_text().split()
    found = sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile")})
    return ", ".join(found) or "no AVX512-BF16/AMX"


def old_tree(commit: str) -> Path:
    """A worktree of `commit` (made once, reused by later runs of this script)."""
    path = Path(tempfile.gettempdir()) / f"eva_rl-bench-{commit}"
    if not (path / "eva_rl").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit],
                       check=True, capture_output=True)  # fmt: skip
    return path


def step_ms(tree: Path, method: str, args: argparse.Namespace, out: Path) -> float:
    overrides = [
        f"method.name={method}", "method.rank=8", f"loop.steps={args.steps}", "loop.log_every=10",
        "loop.eval_at_start=false", "loop.eval_every=0", f"loop.save_every={args.steps}",
        "eval.episodes=1", "optim.batch_size=64", f"precision={args.precision}", "seed=0",
    ]  # fmt: skip
    if args.threads:
        overrides.append(f"threads={args.threads}")
    payload = json.dumps({"task": args.task, "out": str(out), "overrides": overrides})
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", DRIVER, payload], env=env, cwd=tree,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"{tree} {method} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["ms"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default="e76e1dc", help="the commit to compare against")
    ap.add_argument("--methods", nargs="+", default=["lora", "eva", "fft"])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--task", default="shelf-place-v3")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="0: as a user gets them")
    args = ap.parse_args()
    trees = {"old": old_tree(args.old), "new": REPO}
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for method in args.methods:
                for side, tree in trees.items():
                    out = Path(tmp) / f"{side}-{method}-{r}"
                    ms = step_ms(tree, method, args, out)
                    times.setdefault((method, side), []).append(ms)
                    print(f"round {r + 1} {method:5s} {side}: {ms:7.1f} ms/step", flush=True)
    print(f"\n{args.task}, batch 64, rank 8, precision {args.precision}, threads "
          f"{args.threads or 'default'}; CPU: {cpu_flags()}; old = {args.old}")  # fmt: skip
    print("| method | old ms/step | new ms/step | speed-up |\n|---|---|---|---|")
    for method in args.methods:
        old, new = (statistics.median(times[(method, s)]) for s in ("old", "new"))
        print(f"| {method} | {old:.1f} | {new:.1f} | {old / new:.2f}x |")


if __name__ == "__main__":
    main()
