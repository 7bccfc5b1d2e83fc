"""Step time and peak memory of adapters vs full fine-tuning, in fp32 and bf16 autocast.

    python benchmarks/bench_finetune.py [--methods fft lora eva] [--variants fp32 bf16 ...]
                                        [--steps 30] [--rounds 3]

Each (method, variant, round) runs in a fresh process: load the shipped agent, build the method
(EVA's collection is not timed), warm-up updates (compilation included for `+compile`), then
`--steps` timed updates (forward, masked MSE, backward, clip, AdamW) on one fixed batch, the
way `eva_rl.training.loop.Trainer` does them (its dropout/attention kernels and fused AdamW).
Variants: `fp32`, `bf16` (autocast around forward and loss), `+plain` (torch's own dropout and
attention and unfused AdamW, as before 2026-12-06), `+compile` (torch.compile of the loss
function; its compile time is printed). `benchmarks/bench_step.py` compares whole finetune
runs against an older commit. Memory is the growth of the process's peak resident
set over the set after the warm-up updates (CPU: /proc peak RSS, reset before timing; CUDA:
torch.cuda.max_memory_allocated), i.e. activations and gradients: AdamW's state exists by then
and is not counted. Figures
are medians over rounds; ratios are against fft in fp32 and against the same method in fp32;
rounds interleave to spread machine noise. Needs the dataset: eva-rl data build --tasks hammer-v3
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


def child(method: str, variant: str, task: str, steps: int, batch_size: int, rank: int) -> dict:
    from eva_rl.adapters.methods import (
        BuildContext,
        MethodConfig,
        build_method,
        trainable_parameters,
    )
    from eva_rl.agent import Agent
    from eva_rl.data.catalog import dataset_id
    from eva_rl.data.segments import load_trajectories
    from eva_rl.eva.collector import CollectorConfig, collect_on_datasets
    from eva_rl.kernels import speed_up
    from eva_rl.runtime import autocast, resolve_device
    from eva_rl.training.loop import OptimConfig, adamw
    from eva_rl.training.losses import action_loss

    device = resolve_device("auto")
    agent = Agent.load(ROOT / "results/pretrained/mt40-cpu/agent", device=device)
    ids = [dataset_id(task)]
    eva_state = None
    if method.startswith("eva"):
        result = collect_on_datasets(agent, ids, CollectorConfig(rank=rank), progress=False)
        eva_state = {name: layer.components for name, layer in result.layers.items()}
    context = BuildContext(eva_state=eva_state)
    adapted = build_method(agent.model, MethodConfig(name=method, rank=rank), context)
    model = adapted.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    parts = variant.split("+")
    if "plain" in parts:  # torch's own dropout and attention, unfused AdamW
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    else:  # what the Trainer runs
        speed_up(model)
        opt = adamw(params, OptimConfig(lr=1e-4, weight_decay=0.01))
    batch = agent.segment_sampler(load_trajectories(ids), seed=0).sample(batch_size)
    loss_fn = torch.compile(action_loss) if "compile" in parts else action_loss
    del agent

    def update() -> None:
        with autocast(device, parts[0]):
            loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        opt.step()

    t0 = time.perf_counter()
    for _ in range(3):
        update()
    warmup = time.perf_counter() - t0
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
        "warmup_s": warmup,
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
    ap.add_argument("--variants", nargs="+", default=["fp32", "bf16", "bf16+plain"])
    ap.add_argument("--task", default="hammer-v3")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, variant = args.child
        print(json.dumps(child(method, variant, args.task, args.steps, args.batch, args.rank)))
        return
    if "fft" not in args.methods:
        args.methods.insert(0, "fft")
    if "fp32" not in args.variants:
        args.variants.insert(0, "fp32")
    combos = [(m, v) for m in args.methods for v in args.variants]
    runs: dict[tuple, list[dict]] = {c: [] for c in combos}
    for _ in range(args.rounds):
        for method, variant in combos:
            cmd = [sys.executable, __file__, "--child", method, variant, "--task", args.task]
            cmd += ["--steps", str(args.steps), "--batch", str(args.batch)]
            cmd += ["--rank", str(args.rank)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[(method, variant)].append(json.loads(out.strip().splitlines()[-1]))
    keys = ("step_ms", "memory_mb", "warmup_s")
    med = {c: {k: statistics.median(r[k] for r in rs) for k in keys} for c, rs in runs.items()}
    base = med[("fft", "fp32")]
    print(
        f"\nshipped DT 3x128, context 20, batch {args.batch}, rank {args.rank}, "
        f"{args.steps} steps x {args.rounds} rounds, device {runs[combos[0]][0]['device']}, "
        f"{torch.get_num_threads()} threads"
    )
    header = ("method", "variant", "trainable", "step", "vs fft", "vs fp32", "memory", "warm-up")
    print("{:8s} {:18s} {:>10s} {:>10s} {:>7s} {:>7s} {:>9s} {:>8s}".format(*header))
    for (m, v), r in med.items():
        own = med[(m, "fp32")]["step_ms"]
        print(
            f"{m:8s} {v:18s} {runs[(m, v)][0]['trainable']:>10,d} {r['step_ms']:8.1f}ms "
            f"{r['step_ms'] / base['step_ms']:6.2f}x {r['step_ms'] / own:6.2f}x "
            f"{r['memory_mb']:7.1f}MB {r['warmup_s']:7.1f}s"
        )


if __name__ == "__main__":
    main()
