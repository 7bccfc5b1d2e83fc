"""Env-steps/s and updates/s of whole `eva-rl online` runs: ODT's recipe against the options.

    python benchmarks/bench_online.py [--task shelf-place-v3] [--env-steps 1000] [--rounds 2]
                                      [--variants odt deterministic deterministic+td3]
                                      [--threads N] [--before COMMIT]

Each (variant, round) is a fresh `eva-rl online` process from the shipped agent with LoRA rank 8
at the defaults a user gets (one episode collected then 300 updates per iteration, batch 64,
`precision: auto`), `--threads` threads (default: all cores, what `threads: 0` gives on an
idle machine; given explicitly because a paused or running eva_rl process elsewhere would
claim cores from `threads: 0`), evaluated on 5 episodes at the start and the end only.
The figures are the run's own `summary.json` `throughput`: env-steps/s over its collection
phase (sampled actions, one env slot as ODT collects) and updates/s over its update phase;
TD3's critic warm-up is its own phase and not in either. Ratios are against the first
variant (`odt`, the default recipe) from the same rounds, which interleave to spread machine
noise; medians over rounds. `--before COMMIT` adds each variant run by that commit's code
(checked out into a temporary worktree; its summary needs `throughput`, 6cfacb7 or later).
Needs the task's dataset: eva-rl data build --tasks shelf-place-v3
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

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "odt": [],
    "deterministic": ["--policy", "deterministic"],
    "deterministic+td3": ["--policy", "deterministic", "--td3", "td3.warmup=300"],
    "odt+td3": ["--td3", "td3.warmup=300"],
}


def run(variant: str, args: argparse.Namespace, out: Path, code: Path = ROOT) -> dict:
    command = [sys.executable, "-m", "eva_rl.cli", "online", "--task", args.task, "--method",
               "lora", "--rank", "8", "--env-steps", str(args.env_steps), "--eval-every",
               str(10 * args.env_steps), "--out", str(out), *VARIANTS[variant],
               "eval.episodes=5", f"threads={args.threads}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(code)}
    subprocess.run(command, check=True, cwd=code, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    return summary["throughput"] | {"precision": summary["precision"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="shelf-place-v3")
    parser.add_argument("--env-steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["odt", "deterministic",
                                                          "deterministic+td3"])  # fmt: skip
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--before", help="a commit to run beside this tree")
    args = parser.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    codes = {"": ROOT}
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.before:
            codes[f"@{args.before}"] = Path(tmp) / "before"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                            str(codes[f"@{args.before}"]), args.before], check=True)  # fmt: skip
        try:
            for r in range(args.rounds):
                for variant in args.variants:
                    for tag, code in codes.items():
                        out = Path(tmp) / f"{variant}{tag}-{r}"
                        got = run(variant, args, out, code)
                        results.setdefault(variant + tag, []).append(got)
                        print(f"round {r} {variant}{tag}: {got['env_steps_per_s']} env-steps/s, "
                              f"{got['updates_per_s']} updates/s, {got['phase_seconds']}",
                              flush=True)  # fmt: skip
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(codes[f"@{args.before}"])], check=False)  # fmt: skip
    base = {k: statistics.median(x[k] for x in results[args.variants[0]])
            for k in ("env_steps_per_s", "updates_per_s")}  # fmt: skip
    print(
        f"\n{args.task}, {args.env_steps} env steps, LoRA r8, {args.threads} threads, "
        f"precision {results[args.variants[0]][0]['precision']}, medians of {args.rounds}"
    )
    print(f"{'variant':26s} {'env-steps/s':>12s} {'ratio':>6s} {'updates/s':>10s} {'ratio':>6s}")
    for variant, rows in results.items():
        steps = statistics.median(x["env_steps_per_s"] for x in rows)
        updates = statistics.median(x["updates_per_s"] for x in rows)
        print(
            f"{variant:26s} {steps:12.1f} {steps / base['env_steps_per_s']:6.2f} "
            f"{updates:10.2f} {updates / base['updates_per_s']:6.2f}"
        )


if __name__ == "__main__":
    main()
