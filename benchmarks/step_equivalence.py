"""Does a change of random stream change a seed's distribution? Paired runs old vs new.

    python benchmarks/step_equivalence.py NEW_RUNS OLD_RUNS [--out results/step-equivalence-cpu]

NEW_RUNS: the runs of configs/sweeps/step-equivalence-cpu.yaml (this tree); OLD_RUNS: the runs of
a committed study that ran the same config with the code before the change
(results/cw10-study-cpu/runs).
Runs are paired by (task, method, rank, seed): same data, same held-out split, same evaluation
episodes, so each pair differs only in the code's random stream and kernels. For final-step
success, the mean success over the evaluations after update 0 (the learning curve; not the
report's AUC, which starts from the sweep's baseline evaluation that only one side ran) and the
final training loss it prints the mean paired difference, the two-sided
sign-flip test and the interval that inverts it, beside the seed-to-seed spread of the old runs
(what "within seed noise" is measured against). With --out it writes the table and the pairs.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

from eva_rl.io import atomic_write_text
from eva_rl.reports.runs import collect_runs
from eva_rl.stats import sign_flip_interval, sign_flip_test

METRICS = ("success_final", "curve_mean", "final_loss")


def pairs(new_dir: Path, old_dir: Path) -> list[tuple[tuple, dict, dict]]:
    """(key, new run, old run) for every new run that has an old run of the same key."""

    def metrics(row) -> dict:
        curve = [m["score"] for step, m in row.curve if step > 0 and "score" in m]
        return {"success_final": row.success_final, "final_loss": row.final_loss,
                "curve_mean": float(np.mean(curve)), "run": row.run}  # fmt: skip

    key = lambda r: (r.task, r.method, r.rank, r.seed)  # noqa: E731
    old = {key(r): metrics(r) for r in collect_runs(old_dir)}
    found = [(key(r), metrics(r), old[key(r)]) for r in collect_runs(new_dir) if key(r) in old]
    return sorted(found, key=lambda item: item[0])


def table(matched) -> list[str]:
    lines = [
        "| metric | pairs | old mean | new mean | new - old [95% CI] | sign-flip p | "
        "old seed-to-seed sd | largest |diff| |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for metric in METRICS:
        new = np.array([n[metric] for _, n, _ in matched], dtype=float)
        old = np.array([o[metric] for _, _, o in matched], dtype=float)
        diffs = new - old
        p, _ = sign_flip_test(diffs)
        low, high = sign_flip_interval(diffs)
        lines.append(
            f"| {metric} | {len(diffs)} | {old.mean():.4f} | {new.mean():.4f} | "
            f"{diffs.mean():+.4f} [{low:+.4f}, {high:+.4f}] | {p:.3g} | {old.std(ddof=1):.4f} | "
            f"{np.abs(diffs).max():.4f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new", type=Path)
    parser.add_argument("old", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    matched = pairs(args.new, args.old)
    if len(matched) < 6:
        print(f"only {len(matched)} pairs: the test needs 6 or more to reach 5%", file=sys.stderr)
        return 2
    lines = table(matched)
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()  # fmt: skip
        command = " ".join(["python", *sys.argv])
        readme = [f"Made by `{command}` at commit {commit}.", "", *lines, ""]
        atomic_write_text(args.out / "table.md", "\n".join(readme))
        rows = [["task", "method", "rank", "seed", *[f"{m}_{side}" for m in METRICS
                 for side in ("old", "new")], "new_run", "old_run"]]  # fmt: skip
        for (task, method, rank, seed), n, o in matched:
            values = [v for m in METRICS for v in (o[m], n[m])]
            rows.append([task, method, rank, seed, *values, n["run"], o["run"]])
        with open(args.out / "pairs.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
