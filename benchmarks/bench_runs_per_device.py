"""Training throughput of k fine-tuning runs sharing one device: the question behind a sweep's
`gpus: 0.25` (four runs per GPU in configs/sweeps/cw10-study-gpu.yaml), whose cost estimate
assumes the runs do not slow each other down.

    python benchmarks/bench_runs_per_device.py [--runs 1 2 4 8] [--method eva] [--batch 128]
                                               [--seconds 30] [--task stick-pull-v3]

For each k, k processes start together. Each loads the shipped agent, builds the method on the
task's data (EVA's collection included, as a run does), makes a few warm-up updates, reports
ready, and once every process is ready the parent starts one shared window of `--seconds`: each
counts the updates it completes inside it. An update is a run's (a fresh segment batch from the
sampler, forward in the resolved precision, masked action MSE, backward, clip 0.25, AdamW at the
paper's lr 1e-4). Prints updates/s per run and in total, as ratios against k = 1 measured in the
same invocation. Evaluation rollouts are not included (they run on the CPU, see
bench_evaluate.py). On CPU each process gets `--threads` threads. Needs the task's dataset
(eva-rl data build --tasks TASK).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args) -> None:
    """One run's process: set up, say `ready`, wait for `go`, count updates for the window."""
    import torch

    from eva_rl.adapters.methods import METHODS, BuildContext, MethodConfig, build_method
    from eva_rl.agent import Agent
    from eva_rl.data.catalog import dataset_id
    from eva_rl.data.segments import load_trajectories
    from eva_rl.eva.collector import CollectorConfig, collect_on_trajectories
    from eva_rl.runtime import autocast, resolve_device, resolve_precision
    from eva_rl.training.losses import action_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.index)
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    agent = Agent.load(ROOT / "results/pretrained/mt40-cpu/agent", device=device)
    traj = load_trajectories([dataset_id(args.task)])
    sampler = agent.segment_sampler(traj, args.index)
    cfg = MethodConfig(name=args.method, rank=args.rank)
    eva_state = None
    if METHODS[args.method].needs_eva_state:
        result = collect_on_trajectories(agent, traj, CollectorConfig(rank=args.rank), False)
        eva_state = {name: layer.components for name, layer in result.layers.items()}
    context = BuildContext(calibration=[sampler.sample(args.batch)], loss=action_loss,
                           eva_state=eva_state)  # fmt: skip
    model = build_method(agent.model, cfg, context).model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

    def update() -> None:
        batch = sampler.sample(args.batch)
        with autocast(device, precision):
            loss = action_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(5):
        update()
    sync()
    print("ready", flush=True)
    sys.stdin.readline()  # the parent's go, once every process is ready
    updates, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        update()
        updates += 1
        if updates % 10 == 0:
            sync()  # the window counts finished work, not queued kernels
    sync()
    seconds = time.perf_counter() - start
    print(json.dumps({"updates": updates, "seconds": seconds, "device": str(device),
                      "precision": precision}), flush=True)  # fmt: skip


def together(k: int, args) -> list[dict]:
    """k child processes, one shared timing window; their results."""
    cmd = [sys.executable, __file__, "--child", "--method", args.method, "--task", args.task,
           "--batch", str(args.batch), "--rank", str(args.rank), "--seconds", str(args.seconds),
           "--threads", str(args.threads)]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*cmd, "--index", str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )  # fmt: skip
        for i in range(k)
    ]
    for p in procs:
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"a run process failed before the window (said {line!r})")
    for p in procs:  # go
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("a run process failed inside the window (its traceback is above)")
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--method", default="eva")
    ap.add_argument("--task", default="stick-pull-v3")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if 1 not in args.runs:
        args.runs.insert(0, 1)
    rows = {k: together(k, args) for k in args.runs}
    first = rows[1][0]
    print(f"\n{args.method} r{args.rank} on {args.task}, batch {args.batch}, shipped DT 3x128, "
          f"{first['device']} {first['precision']}, {args.threads} thread(s) per run, "
          f"{args.seconds:g} s window")  # fmt: skip
    print(f"{'runs':>4s} {'updates/s per run (median, min)':>32s} {'total':>9s} {'vs 1 run':>9s}")
    alone = rows[1][0]["updates"] / rows[1][0]["seconds"]
    for k, results in rows.items():
        rates = [r["updates"] / r["seconds"] for r in results]
        total = sum(rates)
        print(f"{k:4d} {statistics.median(rates):21.1f} ({min(rates):6.1f}) "
              f"{total:9.1f} {total / alone:8.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
