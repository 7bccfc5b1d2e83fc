"""Commands side by side: k real `eva-rl` commands at once, the base commit's code against this
tree's, in one run (issue 29: two commands on 2 cores must not run 14x slower, a fair share of
the cores is k x slower at most).

    python benchmarks/bench_sharing.py [--ks 1 2 3] [--steps 300] [--base e76e1dc]

1. k copies of a small `eva-rl pretrain` (DT 2 layers x 64, `--steps` updates, one evaluation
   episode at the end) started together: each one's wall time against k = 1 of the same code;
2. the same pretrain beside an `eva-rl evaluate` of the shipped agent, then beside a busy
   single-threaded program (each started first, stopped when the pretrain ends): the
   pretrain's wall time against running alone;
3. a training step alone (DT 2 x 64 and the shipped 3 x 128, torch's default threads, bf16
   where native) with OpenMP's default waits, passive ones (no spinning) and eva_rl's.
`old` runs the base commit's eva_rl (exported with `git archive`) with no OpenMP variables set;
`new` runs this tree's. Needs metaworld/shelf-place-v3/scripted-v0
(eva-rl data build --suite cw10 --tasks shelf-place-v3).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from eva_rl import runtime

ROOT = Path(__file__).resolve().parents[1]
DATASET = "metaworld/shelf-place-v3/scripted-v0"
AGENT = ROOT / "results" / "pretrained" / "mt40-cpu" / "agent"
CORES = len(os.sched_getaffinity(0))
BUSY = [sys.executable, "-c", "while True: pass"]  # load from a program that is not eva_rl
CLEARED = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
STEP = """
import sys, time, torch
from eva_rl.agent import ModelConfig, build_model
from eva_rl.data.segments import SegmentSampler, load_trajectories
from eva_rl.runtime import autocast, resolve_precision
from eva_rl.training.loop import action_loss
hidden, layers, heads, steps = map(int, sys.argv[1:5])
cfg = ModelConfig(hidden_size=hidden, n_layer=layers, n_head=heads, context_length=20)
traj = load_trajectories([sys.argv[5]])
batch = SegmentSampler(traj, 20, 1000.0, *traj.state_stats(), seed=0).sample(64)
torch.manual_seed(0)
model = build_model(cfg, traj.state_dim, traj.act_dim).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
cpu = torch.device("cpu")
precision = resolve_precision("auto", cpu)
def step():
    with autocast(cpu, precision):
        loss = action_loss(model, batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(10):
    step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
print((time.perf_counter() - t0) / steps)
"""


def export_base(commit: str, into: Path) -> Path:
    """The base commit's eva_rl package, unpacked under `into` (no git worktree to clean up)."""
    archive = into / "base.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "archive", commit, "eva_rl"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "base", filter="data")
    return into / "base"


def environment(code: Path, runtime_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without OpenMP settings, running `code`'s eva_rl."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return {**env, "PYTHONPATH": str(code), "EVA_RL_RUNTIME_DIR": str(runtime_dir), **extra}


def pretrain_cmd(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "eva_rl.cli", "pretrain", "--datasets", DATASET,
            "--out", str(out), "model.n_layer=2", "model.hidden_size=64", "model.n_head=1",
            f"loop.steps={steps}", f"loop.save_every={steps}", f"loop.log_every={steps}",
            "eval.episodes=1"]  # fmt: skip


def evaluate_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "eva_rl.cli", "evaluate", "--checkpoint", str(AGENT),
            "--envs", "button-press-v3", "--episodes", "100", "--out", str(out)]  # fmt: skip


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used since boot by the whole machine, and by this script and its children
    that have ended: their difference over a measurement is load from other programs."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4] - ticks[7]  # all but idle, iowait, steal
    ours = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return busy / os.sysconf("SC_CLK_TCK"), sum(r.ru_utime + r.ru_stime for r in ours)


def together(
    k: int, env: dict[str, str], tmp: Path, steps: int, limit: float = math.inf
) -> tuple[list[float], float]:
    """Wall seconds of each of k pretrains started at once (inf: stopped at `limit` seconds),
    and the share of the cores other programs used meanwhile."""
    tmp.mkdir(parents=True, exist_ok=True)
    (busy, ours), began = cpu_seconds(), time.perf_counter()
    procs = [start(pretrain_cmd(tmp / f"p{k}-{i}", steps), env, tmp / f"p{k}-{i}.log")
             for i in range(k)]  # fmt: skip
    walls: dict[int, float] = {}
    try:
        while len(walls) < k:
            for i, p in enumerate(procs):
                if i not in walls and p.poll() is not None:
                    if p.returncode != 0:
                        sys.exit(f"pretrain failed: see {tmp / f'p{k}-{i}.log'}")
                    walls[i] = time.perf_counter() - began
            if time.perf_counter() - began > limit:
                walls.update({i: math.inf for i in range(k) if i not in walls})
            time.sleep(0.05)
    finally:  # stopped at the limit, or the benchmark was interrupted
        for p in procs:
            p.terminate()
            p.wait()
    (busy2, ours2), wall = cpu_seconds(), time.perf_counter() - began
    return list(walls.values()), ((busy2 - busy) - (ours2 - ours)) / (wall * CORES)


def beside(
    other: list[str], env: dict[str, str], tmp: Path, steps: int, limit: float
) -> tuple[float, float]:
    """Wall seconds of one pretrain started while `other` runs (stopped when the pretrain ends;
    inf: the pretrain was stopped at `limit` seconds), and the share of the cores programs
    other than these two used meanwhile."""
    tmp.mkdir(parents=True, exist_ok=True)
    (busy, ours), began = cpu_seconds(), time.perf_counter()
    neighbour = start(other, env, tmp / "other.log")
    time.sleep(8)  # past its imports: computing
    try:
        if neighbour.poll() is not None:
            sys.exit(f"{other[:4]} ended early: see {tmp / 'other.log'}")
        walls, _ = together(1, env, tmp / "beside", steps, limit)
        if neighbour.poll() is not None:
            sys.exit(f"{other[:4]} ended before the pretrain: use fewer --steps")
    finally:
        neighbour.terminate()
        neighbour.wait()
    (busy2, ours2), wall = cpu_seconds(), time.perf_counter() - began
    return walls[0], ((busy2 - busy) - (ours2 - ours)) / (wall * CORES)


def step_time(env: dict[str, str], shape: tuple[int, int, int], steps: int) -> float:
    cmd = [sys.executable, "-c", STEP, *map(str, shape), str(steps), DATASET]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def table(header: str, rows: list[list[str]]) -> None:
    print(f"\n| {header} |\n" + "|---" * (header.count("|") + 1) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--base", default="e76e1dc")
    ap.add_argument("--skip", nargs="*", default=[], choices=["together", "beside", "step"])
    ap.add_argument("--new-env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="run `new` with these set too (e.g. GOMP_SPINCOUNT=10000)")  # fmt: skip
    ap.add_argument("--modes", nargs="+", default=["old", "new"], choices=["old", "new"])
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # rows as they are measured
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # (timeout) stop commands, clean up
    extra = dict(item.split("=", 1) for item in args.new_env)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        os.chdir(tmp)  # `python -m` puts the working directory first on the path: not ROOT
        codes = {"old": export_base(args.base, tmp), "new": ROOT}
        codes = {m: codes[m] for m in args.modes}
        envs = {m: environment(code, tmp / m / "runtime", extra if m == "new" else {})
                for m, code in codes.items()}  # fmt: skip
        for m, env in envs.items():
            where = subprocess.run(
                [sys.executable, "-c", "import eva_rl; print(eva_rl.__file__)"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            print(f"{m}: {where.strip()} {extra if m == 'new' else ''}")  # fmt: skip
        print(f"{CORES} cores; pretrain DT 2x64, {args.steps} updates; base {args.base}")
        if "together" not in args.skip:  # rows as they are measured
            cols = " | ".join(f"{m}: wall per run | vs k=1 | other load" for m in codes)
            table(f"k at once | fair share | {cols}", [])
            alone = {}
            for k in args.ks:
                row = [f"{k}", f"<= {k:.1f}x"]
                for m in codes:  # a run past twice its fair share is stopped there
                    limit = 2 * k * alone[m] if m in alone else math.inf
                    walls, other = together(k, envs[m], tmp / m, args.steps, limit)
                    mean = statistics.mean(walls)
                    alone.setdefault(m, mean)
                    ratio = f"{mean / alone[m]:.2f}x" if mean < math.inf else f"> {2 * k:.1f}x"
                    row += [f"{mean:.1f} s" if mean < math.inf else f"> {limit:.0f} s (stopped)",
                            ratio, f"{other:.0%}"]  # fmt: skip
                print("| " + " | ".join(row) + " |")
        if "beside" not in args.skip:  # a pretrain past twice its fair share is stopped there
            rows = []
            alone = {m: together(1, envs[m], tmp / m / "alone", args.steps) for m in codes}
            rows.append(["alone", *(f"{alone[m][0][0]:.1f} s ({alone[m][1]:.0%})" for m in codes)])
            others = {"an `eva-rl evaluate` (100 episodes)": evaluate_cmd,
                      "a busy single-threaded program": lambda out: BUSY}  # fmt: skip
            for n, (what, cmd) in enumerate(others.items()):
                row = [f"beside {what}: fair share <= 2.0x"]
                for m in codes:
                    limit = 4 * alone[m][0][0]
                    wall, other = beside(cmd(tmp / f"{m}{n}.json"), envs[m], tmp / m / f"b{n}",
                                         args.steps, limit)  # fmt: skip
                    ratio = f"{wall / alone[m][0][0]:.2f}x" if wall < math.inf else "> 4x, stopped"
                    row.append(f"{min(wall, limit):.1f} s = {ratio} ({other:.0%})")
                rows.append(row)
            table("pretrain (other load) | " + " | ".join(codes), rows)
        if "step" not in args.skip:
            # as `new` runs: the CLI sets its wait policy unless a wait variable is set already
            ours = extra if set(extra) & set(runtime.WAIT_VARIABLES) else runtime.WAIT_POLICY
            waits = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "new": ours}
            rows = []
            for shape, steps in (((64, 2, 1), 100), ((128, 3, 4), 30)):
                times = {w: [] for w in waits}
                for _ in range(3):  # interleaved: machine noise spreads over all
                    for w, setting in waits.items():
                        env = environment(ROOT, tmp / "step", setting)
                        times[w].append(step_time(env, shape, steps))
                best = {w: min(t) for w, t in times.items()}
                rows.append([f"DT {shape[1]}x{shape[0]}", *(f"{best[w] * 1e3:.1f} ms = "
                             f"{best[w] / best['default']:.3f}x" for w in waits)])  # fmt: skip
            table("training step alone, torch's default threads | " + " | ".join(waits), rows)
        os.chdir(ROOT)


if __name__ == "__main__":
    main()
