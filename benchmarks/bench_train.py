"""Trainer overhead and sampler cost, as ratios measured in one process.

    python benchmarks/bench_train.py [--steps 40] [--task push-v3]

1. bare: a plain PyTorch loop (forward, masked MSE, backward, clip, AdamW) on one fixed batch,
   with the Trainer's kernels and optimiser (`speed_up`, fused AdamW), so the ratio is the loop's;
2. eva_rl: `Trainer.run` on the same model size and batch size (sampling, schedule, logging,
   one checkpoint at the end included);
3. sampler: `SegmentSampler.sample` alone, as a share of a training step.
Needs the dataset: eva-rl data build --tasks push-v3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from eva_rl.agent import ModelConfig, build_model
from eva_rl.data.catalog import dataset_id
from eva_rl.data.segments import SegmentSampler, load_trajectories
from eva_rl.kernels import speed_up
from eva_rl.training.loop import LoopConfig, OptimConfig, Trainer, adamw
from eva_rl.training.losses import action_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="push-v3")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    cfg = ModelConfig(hidden_size=128, n_layer=3, n_head=4, context_length=20)
    traj = load_trajectories([dataset_id(args.task)])
    sampler = SegmentSampler(traj, cfg.context_length, 1000.0, *traj.state_stats(), seed=0)
    optim = OptimConfig(lr=1e-4, warmup_steps=10, batch_size=args.batch)

    torch.manual_seed(0)
    model = speed_up(build_model(cfg, traj.state_dim, traj.act_dim).train())
    opt = adamw([p for p in model.parameters() if p.requires_grad], optim)
    batch = sampler.sample(args.batch)

    def bare(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            loss = action_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
        return (time.perf_counter() - t0) / n

    def ours(n: int) -> float:
        torch.manual_seed(0)
        m = build_model(cfg, traj.state_dim, traj.act_dim)
        with tempfile.TemporaryDirectory() as tmp:
            loop = LoopConfig(steps=n, log_every=10, save_every=n, eval_every=0)
            t0 = time.perf_counter()
            Trainer(m, sampler, optim, loop, Path(tmp), lambda d, s: None, progress=False).run()
            return (time.perf_counter() - t0) / n

    bare(5)  # warm-up
    timings = {"bare": [], "ours": []}
    for _ in range(2):  # interleave to spread machine noise over both
        timings["bare"].append(bare(args.steps))
        timings["ours"].append(ours(args.steps))
    t0 = time.perf_counter()
    for _ in range(args.steps):
        sampler.sample(args.batch)
    sample = (time.perf_counter() - t0) / args.steps
    b, o = min(timings["bare"]), min(timings["ours"])
    print(
        f"\nDT 3x128, context 20, batch {args.batch}, {args.steps} steps, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"bare PyTorch step    {b * 1e3:7.1f} ms   1.00x")
    print(f"eva_rl Trainer      {o * 1e3:7.1f} ms   {o / b:.2f}x  (overhead {o / b - 1:+.1%})")
    print(f"sampler.sample       {sample * 1e3:7.2f} ms   {sample / b:.1%} of a bare step")


if __name__ == "__main__":
    main()
