"""Collector speed and agreement: ours vs PEFT's get_eva_state_dict, and vs a plain forward pass.

    python benchmarks/bench_collector.py --checkpoint results/pretrained/mt40-cpu/agent \
        [--dataset metaworld/push-back-v3/scripted-v0] [--rank 8] [--rho 2] [--tau 0.99]

The same pre-sampled batches feed every side, in one process, with the same rank, rho and tau,
in rounds (each side once per round; ratios within a round, medians over rounds):
1. forward: the plain model over the batches the collector consumed (no hooks), in the
   collector's precision (`precision: auto`: bf16 autocast on CPUs with AVX512-BF16/AMX);
2. ours (covariance, the default) and ours (incremental-svd): `collect` end to end;
3. PEFT: `get_eva_state_dict` end to end on the same batch list.
Agreement: the ranks per layer, and |cos| per allocated component (ours vs PEFT).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from eva_rl.agent import Agent
from eva_rl.data.segments import load_trajectories
from eva_rl.eva.collector import CollectorConfig, collect, token_mask
from eva_rl.runtime import autocast, resolve_precision

warnings.filterwarnings("ignore")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="results/pretrained/mt40-cpu/agent")
    ap.add_argument("--dataset", default="metaworld/push-back-v3/scripted-v0")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--rho", type=float, default=2.0)
    ap.add_argument("--tau", type=float, default=0.99)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-batches", type=int, default=60)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument(
        "--precision", default="auto", help="the collector's and the forward's (PEFT runs fp32)"
    )
    return ap.parse_args()


def main() -> None:
    """Rounds of (forward, ours covariance, ours incremental-svd, PEFT), each side once per
    round: ratios are taken within a round (the load of a shared machine drifts between rounds)
    and reported as medians over rounds."""
    args = parse_args()
    from peft import EvaConfig, LoraConfig
    from peft.tuners.lora.eva import get_eva_state_dict

    agent = Agent.load(args.checkpoint, device=args.device)
    sampler = agent.segment_sampler(load_trajectories([args.dataset]), seed=0)
    batches = [sampler.sample(args.batch_size) for _ in range(args.max_batches)]
    model = agent.model.eval()
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)  # the collector's

    def forward(n):
        with torch.no_grad(), autocast(device, precision):
            for b in batches[:n]:
                model(**b)

    def ours(method):
        cfg = CollectorConfig(
            rank=args.rank,
            rho=args.rho,
            tau=args.tau,
            method=method,
            max_batches=args.max_batches,
            batch_size=args.batch_size,
            precision=args.precision,
        )
        return collect(model, iter(batches), cfg, progress=False)

    peft_cfg = LoraConfig(
        r=args.rank,
        target_modules=["c_attn", "c_proj", "c_fc"],
        init_lora_weights="eva",
        eva_config=EvaConfig(rho=args.rho, tau=args.tau),
    )

    def peft():
        return get_eva_state_dict(
            model,
            batches,
            peft_config=peft_cfg,
            show_progress_bar=False,
            prepare_model_inputs_fn=lambda inputs, _: token_mask(
                inputs["attention_mask"]
            ).nonzero(),
        )

    methods = ("covariance", "incremental-svd")
    results = {m: ours(m) for m in methods}  # also the warm-up: kernels, linalg libraries
    theirs = peft()
    sides = {"peft": peft} | {m: lambda m=m: ours(m) for m in methods}
    sides |= {f"forward {m}": lambda m=m: forward(results[m].batches) for m in methods}
    rounds = [
        {name: timed(fn, args.device) for name, fn in sides.items()} for _ in range(args.repeats)
    ]
    report(args, precision, rounds, results, theirs)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def report(args, precision, rounds, results, theirs) -> None:
    def median(f):
        return float(np.median([f(r) for r in rounds]))

    print(
        f"\n{args.checkpoint} on {args.dataset}, {args.device} {precision}, "
        f"{torch.get_num_threads()} threads; r={args.rank} rho={args.rho} tau={args.tau}, "
        f"batch {args.batch_size}; medians of {len(rounds)} rounds"
    )
    print(f"PEFT get_eva_state_dict   {median(lambda r: r['peft']):7.2f} s   1.00x")
    for method, res in results.items():
        secs = median(lambda r, m=method: r[m])
        fwd = median(lambda r, m=method: r[f"forward {m}"])
        vs_peft = median(lambda r, m=method: r["peft"] / r[m])
        vs_fwd = median(lambda r, m=method: r[m] / r[f"forward {m}"])
        same = all(len(theirs[n]) == layer.rank for n, layer in res.layers.items())
        cos = torch.cat(
            [
                torch.nn.functional.cosine_similarity(
                    layer.components.double(), theirs[n].double().cpu(), dim=1
                ).abs()
                for n, layer in res.layers.items()
                if layer.rank and len(theirs[n]) == layer.rank
            ]
        )
        print(
            f"ours ({method:15s}) {secs:7.2f} s   {vs_peft:5.1f}x faster than PEFT; "
            f"{res.batches} batches, converged {res.converged}; per batch "
            f"{secs / res.batches * 1e3:6.1f} ms = {vs_fwd:4.2f}x a plain forward "
            f"({fwd / res.batches * 1e3:5.1f} ms); same ranks as PEFT: {same}; |cos| vs "
            f"PEFT min {cos.min():.4f} median {cos.median():.4f}"
        )


if __name__ == "__main__":
    main()
