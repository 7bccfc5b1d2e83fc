"""Updates per second of a fine-tuning step on one GPU: eager, CUDA graphs, runs packed.

    python benchmarks/bench_gpu.py [--steps 300] [--packed 1 2 4 8] [--task shelf-place-v3]
    python benchmarks/bench_gpu.py --check     # on a CPU machine: correctness only, no timing

A 0.7M-parameter Decision Transformer step is kernel-launch bound on a GPU (one H200 fine-tuning
run made 52 updates/s, issue 29). Each configuration runs the real step of `eva-rl finetune`
(shipped agent, LoRA r8 through PEFT, the task's data, batch 64, masked action MSE, fused AdamW,
gradient clipping) in fresh processes:
- eager: the step as the Trainer runs it (`precision: auto`, so bf16 autocast where native);
- graphs: the model's forward (and with it the backward) through
  `torch.compile(mode="reduce-overhead")`, which captures CUDA graphs and replays them;
- packed k: k such runs at once on the one GPU (what fractional `gpus` in a sweep does).
It prints updates/s per run and per GPU for each, against the H200 figure, and the GPU's name.
`--check` (any machine): the compiled model's loss equals eager's in eval mode (no dropout) and a
compiled training step runs; on CPU that is what can be checked (compilation, not CUDA graphs).
Needs the dataset: eva-rl data build --suite cw10 --tasks shelf-place-v3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

H200_UPDATES_PER_S = 52.0  # one fine-tuning run on an H200 before this work (issue 29)


def setup(task: str, device: str):
    """The shipped agent with a LoRA adapter, its sampler and optimizer, as finetune builds them."""
    import torch

    from eva_rl.adapters.methods import BuildContext, MethodConfig, build_method
    from eva_rl.agent import Agent
    from eva_rl.assets import SHIPPED
    from eva_rl.data.catalog import dataset_id
    from eva_rl.data.segments import load_trajectories
    from eva_rl.kernels import speed_up
    from eva_rl.training.loop import OptimConfig, adamw
    from eva_rl.training.losses import action_loss

    torch.manual_seed(0)
    agent = Agent.load(SHIPPED, device=device)
    traj = load_trajectories([dataset_id(task)])
    sampler = agent.segment_sampler(traj, 0)
    context = BuildContext(calibration=[sampler.sample(16)], loss=action_loss, eva_state=None,
                           steps=1000)  # fmt: skip
    model = build_method(agent.model, MethodConfig(name="lora", rank=8), context).model
    speed_up(model)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, sampler, params, adamw(params, OptimConfig(lr=1e-3))


def measure(task: str, device: str, graphs: bool, steps: int) -> dict:
    """Updates/s of `steps` training steps after a warm-up (compilation and capture)."""
    import torch

    from eva_rl.runtime import autocast, resolve_precision
    from eva_rl.training.losses import action_loss

    model, sampler, params, optimizer = setup(task, device)
    forward = torch.compile(model, mode="reduce-overhead") if graphs else model
    model.train()
    where = torch.device(device)
    precision = resolve_precision("auto", where)  # the Trainer's default: bf16 on a recent GPU

    def step():
        with autocast(where, precision):
            loss = action_loss(forward, sampler.sample(64))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        optimizer.step()
        return loss

    for _ in range(10):  # warm-up: compile, capture, allocator
        step()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - started
    return {"updates_per_s": steps / seconds, "loss": loss.item(), "precision": precision}


def check(task: str) -> None:
    """The compiled model computes eager's loss (eval mode: no dropout) and trains."""
    import torch

    from eva_rl.training.losses import action_loss

    model, sampler, *_ = setup(task, "cpu")
    batch = sampler.sample(64)
    model.eval()
    with torch.no_grad():
        eager = float(action_loss(model, batch))
        compiled = float(action_loss(torch.compile(model), batch))
    assert abs(eager - compiled) <= 1e-4 * max(1.0, abs(eager)), (eager, compiled)
    result = measure(task, "cpu", graphs=False, steps=3)
    print(f"check: compiled loss {compiled:.6f} = eager {eager:.6f}; train step ok "
          f"(loss {result['loss']:.4f}); CUDA graphs need a GPU: not measured here")  # fmt: skip


def spawn(task: str, graphs: bool, steps: int, k: int) -> list[dict]:
    """k runs at once on the GPU, each its own process; their results."""
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); from bench_gpu import measure; "
            "print(json.dumps(measure(*json.loads(sys.argv[1]))))")  # fmt: skip
    args = json.dumps([task, "cuda", graphs, steps])
    procs = [subprocess.Popen([sys.executable, "-c", code, args], stdout=subprocess.PIPE,
                              text=True) for _ in range(k)]  # fmt: skip
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="shelf-place-v3")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--packed", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--check", action="store_true", help="CPU: correctness only")
    args = parser.parse_args()
    if args.check:
        check(args.task)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: run with --check on a CPU machine", file=sys.stderr)
        return 2
    print(f"GPU: {torch.cuda.get_device_name()}; H200 before: {H200_UPDATES_PER_S} updates/s")
    print("| step | runs on the GPU | updates/s per run | updates/s per GPU | x H200 run |")
    print("|---|---|---|---|---|")
    for graphs in (False, True):
        for k in args.packed:
            rates = [r["updates_per_s"] for r in spawn(args.task, graphs, args.steps, k)]
            per_run, total = sum(rates) / k, sum(rates)
            name = "CUDA graphs" if graphs else "eager"
            print(f"| {name} | {k} | {per_run:.1f} | {total:.1f} | "
                  f"{per_run / H200_UPDATES_PER_S:.2f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
