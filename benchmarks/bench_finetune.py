"""Step time and peak memory of adapters vs full fine-tuning, at the same batch.

    python benchmarks/bench_finetune.py [--methods fft lora eva] [--steps 30] [--rounds 3]

Each (method, round) runs in a fresh process: load the shipped agent, build the method (EVA's
collection is not timed), 3 warm-up updates, then `--steps` timed updates (forward, masked MSE,
backward, clip, AdamW) on one fixed batch. Memory is the growth of the process's peak resident
set over the set before the first update (CPU: /proc peak RSS, reset before timing; CUDA:
torch.cuda.max_memory_allocated), i.e. gradients, optimizer state and activations. Figures are
medians over rounds, with fft as the baseline; rounds interleave methods to spread machine noise.
Needs the dataset: eva-rl data build --tasks hammer-v3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def child(method: str, task: str, steps: int, batch_size: int, rank: int) -> dict:
    from eva_rl.agent import Agent
    from eva_rl.runtime import resolve_device
    from eva_rl.collector import CollectorConfig, collect_on_datasets
    from eva_rl.data.build import dataset_id
    from eva_rl.data.segments import load_trajectories
    from eva_rl.methods import MethodConfig, build_method, trainable_parameters
    from eva_rl.train import action_loss

    device = resolve_device("auto")
    agent = Agent.load(ROOT / "results/pretrained/mt40-cpu/agent", device=device)
    ids = [dataset_id(task)]
    eva_state = None
    if method.startswith("eva"):
        result = collect_on_datasets(agent, ids, CollectorConfig(rank=rank), progress=False)
        eva_state = {name: layer.components for name, layer in result.layers.items()}
    adapted = build_method(agent.model, MethodConfig(name=method, rank=rank), eva_state=eva_state)
    model = adapted.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    batch = agent.segment_sampler(load_trajectories(ids), seed=0).sample(batch_size)
    del agent

    def update() -> None:
        loss = action_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        opt.step()

    for _ in range(3):
        update()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    t0 = time.perf_counter()
    for _ in range(steps):
        update()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss("VmHWM")
    seconds = (time.perf_counter() - t0) / steps
    return {
        "step_ms": seconds * 1e3,
        "memory_mb": (peak - before) / 2**20,
        "trainable": trainable_parameters(model),
        "device": str(device),
    }


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["fft", "lora", "eva"])
    ap.add_argument("--task", default="hammer-v3")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.task, args.steps, args.batch, args.rank)))
        return
    if "fft" not in args.methods:
        args.methods.insert(0, "fft")
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    for _ in range(args.rounds):
        for method in args.methods:
            cmd = [sys.executable, __file__, "--child", method, "--task", args.task]
            cmd += ["--steps", str(args.steps), "--batch", str(args.batch)]
            cmd += ["--rank", str(args.rank)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[method].append(json.loads(out.strip().splitlines()[-1]))
    med = {
        m: {k: statistics.median(r[k] for r in rs) for k in ("step_ms", "memory_mb")}
        for m, rs in runs.items()
    }
    base = med["fft"]
    print(
        f"\nshipped DT 3x128, context 20, batch {args.batch}, rank {args.rank}, "
        f"{args.steps} steps x {args.rounds} rounds, device {runs['fft'][0]['device']}"
    )
    header = ("method", "trainable", "step", "ratio", "memory", "ratio")
    print("{:10s} {:>10s} {:>10s} {:>7s} {:>10s} {:>7s}".format(*header))
    for m, r in med.items():
        print(
            f"{m:10s} {runs[m][0]['trainable']:>10,d} {r['step_ms']:8.1f}ms "
            f"{r['step_ms'] / base['step_ms']:6.2f}x {r['memory_mb']:8.1f}MB "
            f"{r['memory_mb'] / base['memory_mb']:6.2f}x"
        )


if __name__ == "__main__":
    main()
