"""The distributed collector: communication per batch, and 2 processes vs 1 on the same data.

    python benchmarks/bench_collector_dist.py [--task stick-pull-v3] [--batches 30] [--batch 64]

Shipped agent, its 12 target layers. Each process records `--batch` segments per step; the
collector's convergence test is switched off (tau = 1) so every run does exactly `--batches`
steps. Three runs in this one invocation, all on the same segments:

- 2 processes (gloo, 1 thread each), rank r drawing its shard with `rank_seed(0, r)`;
- 1 process with 1 thread on the union (each step the two shards' batches side by side);
- 1 process with 2 threads on the union (same cores as the pair).

Communication: bytes the collector hands to all-reduce per step (counted while it runs, summed
over layers), against what PEFT-style gathering would move: every rank's layer inputs on valid
tokens, float32, all-gathered. Both are also timed as bare collectives on tensors of those sizes
between the 2 processes. Needs the dataset: eva-rl data build --tasks stick-pull-v3
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "results/pretrained/mt40-cpu/agent"


def shards(task: str, batch: int):
    """An endless iterator of each rank's batches (rank r seeded with rank_seed(0, r))."""
    from eva_rl.agent import Agent
    from eva_rl.data.catalog import dataset_id
    from eva_rl.data.segments import load_trajectories
    from eva_rl.distributed import rank_seed

    agent = Agent.load(AGENT)
    traj = load_trajectories([dataset_id(task)])
    samplers = [agent.segment_sampler(traj, rank_seed(0, r)) for r in (0, 1)]
    return agent, lambda r: iter(lambda: samplers[r].sample(batch), None)


def config(batches: int):
    from eva_rl.eva.collector import CollectorConfig

    return CollectorConfig(rank=8, tau=1.0, max_batches=batches)


def worker(rank: int, port: int, args, queue) -> None:
    import warnings

    from eva_rl import distributed
    from eva_rl.eva.collector import collect, target_layers, token_mask

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    agent, batches = shards(args.task, args.batch)
    sent = []
    real = distributed.all_reduce_sum_

    def counting(tensor):
        sent.append(tensor.numel() * tensor.element_size())
        return real(tensor)

    distributed.all_reduce_sum_ = counting
    warnings.simplefilter("ignore")  # tau = 1 never converges, by design
    dist.barrier()
    started = time.perf_counter()
    collect(agent.model, batches(rank), config(args.batches), progress=False)
    seconds = time.perf_counter() - started
    distributed.all_reduce_sum_ = real

    # what gathering the raw inputs would move: one batch's valid-token inputs of every layer
    batch = next(batches(rank))
    inputs = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, a: inputs.append(a[0][mask].float()))
        for m in target_layers(agent.model, config(2).target_modules).values()
    ]
    mask = token_mask(batch["attention_mask"])
    with torch.no_grad():
        agent.model(**batch, return_dict=True)
    for h in hooks:
        h.remove()
    gather_bytes = sum(x.numel() * x.element_size() for x in inputs)
    rows = torch.tensor([inputs[0].shape[0]])
    dist.all_reduce(rows, op=dist.ReduceOp.MAX)  # all_gather needs equal shapes: pad to the max
    inputs = [torch.nn.functional.pad(x, (0, 0, 0, int(rows) - x.shape[0])) for x in inputs]
    reduce_bytes = max(sent)  # a full step: every layer still recording
    timings = {"all_reduce": [], "all_gather": []}
    ours = torch.zeros(reduce_bytes // 8, dtype=torch.float64)
    for _ in range(10):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(ours)
        timings["all_reduce"].append(time.perf_counter() - t)
        dist.barrier()
        t = time.perf_counter()
        for x in inputs:
            dist.all_gather([torch.empty_like(x) for _ in range(2)], x)
        timings["all_gather"].append(time.perf_counter() - t)
    if rank == 0:
        queue.put(
            {
                "seconds": seconds,
                "reduce_bytes": reduce_bytes,
                "gather_bytes": gather_bytes,
                "tokens": int(mask.sum()),
                **{k: statistics.median(v) for k, v in timings.items()},
            }
        )
    dist.destroy_process_group()


def single(args, threads: int) -> float:
    import warnings

    from eva_rl.eva.collector import collect

    torch.set_num_threads(threads)
    agent, batches = shards(args.task, args.batch)
    a, b = batches(0), batches(1)
    union = ({k: torch.cat([x[k], y[k]]) for k in x} for x, y in zip(a, b, strict=False))
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    collect(agent.model, union, config(args.batches), progress=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="stick-pull-v3")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64, help="segments per process per step")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(worker, (port, args, queue), nprocs=2, start_method="spawn")
    pair = queue.get()
    one, two = single(args, 1), single(args, 2)
    mib = 2**20
    print(f"{args.batches} steps of {args.batch} segments per process ({pair['tokens']} tokens)")
    print(
        f"communication per step and process: ours {pair['reduce_bytes'] / mib:.2f} MiB "
        f"(all-reduce of count, sum, upper triangle of X^T X; independent of tokens) vs "
        f"all-gather of inputs {pair['gather_bytes'] / mib:.2f} MiB sent, "
        f"{pair['gather_bytes'] / mib:.2f} MiB received per other process "
        f"({pair['gather_bytes'] / pair['reduce_bytes']:.2f}x ours)"
    )
    print(
        f"bare collectives: our all-reduce {pair['all_reduce'] * 1e3:.1f} ms, "
        f"all-gather {pair['all_gather'] * 1e3:.1f} ms "
        f"({pair['all_gather'] / pair['all_reduce']:.2f}x)"
    )
    print(
        f"wall: 1 process 1 thread {one:.2f} s (baseline); 1 process 2 threads {two:.2f} s "
        f"(speed-up {one / two:.2f}x); 2 processes x 1 thread {pair['seconds']:.2f} s "
        f"(speed-up {one / pair['seconds']:.2f}x)"
    )


if __name__ == "__main__":
    main()
