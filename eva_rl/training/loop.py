"""The training loop shared by pretraining and fine-tuning.

AdamW, linear warm-up then cosine decay, gradient clipping, masked action MSE. A run directory
holds TensorBoard events, the resolved config and `checkpoints/latest/` (written atomically):
`state.pt` (model, optimizer, scheduler, step, every process's torch and sampler RNG) plus
whatever `export(directory, step)` writes for users. Resuming restores all of it, so on CPU an
interrupted-then-resumed run equals an uninterrupted one.

Under torchrun the model is wrapped in DistributedDataParallel: every process draws its own
batches (its sampler is seeded per rank), gradients are averaged, so the effective batch is
`batch_size x processes`; only rank 0 evaluates, logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from eva_rl import distributed
from eva_rl.config import to_dict
from eva_rl.data.segments import SegmentSampler
from eva_rl.errors import RunError, UserError
from eva_rl.io import atomic_write_text, check_writable, save_checkpoint_dir
from eva_rl.results import EvalPoint
from eva_rl.runtime import autocast

STATE_FILE = "state.pt"


@dataclass
class OptimConfig:
    lr: float = 1e-4  # AdamW's peak learning rate
    weight_decay: float = 0.01
    warmup_steps: int = 1000  # linear warm-up, then cosine decay to 0 at the last step
    grad_clip: float = 0.25  # gradient norm clip
    batch_size: int = 64  # segments per update (per process under torchrun)

    def __post_init__(self):
        if self.lr <= 0 or self.batch_size < 1 or self.warmup_steps < 0 or self.grad_clip <= 0:
            raise UserError("optim: lr and grad_clip must be > 0, batch_size >= 1, warmup >= 0")


@dataclass
class LoopConfig:
    steps: int = 1000  # gradient updates
    log_every: int = 50  # training-loss logging period
    eval_every: int = 1000  # evaluation period; 0: evaluate only at the end
    save_every: int = 500  # checkpoint period (what a resume restarts from)
    eval_at_start: bool = False  # also evaluate before the first update (step 0)

    def __post_init__(self):
        if self.steps < 1 or self.log_every < 1 or self.save_every < 1 or self.eval_every < 0:
            raise UserError("steps, log_every, save_every must be >= 1 and eval_every >= 0")


def provenance(cfg, datasets: list[str], precision: str, **extra) -> dict[str, Any]:
    """What a saved agent records about the run that made it (pretraining or fine-tuning)."""
    return {
        **extra,
        "config": to_dict(cfg),
        "datasets": datasets,
        "seed": cfg.seed,
        "precision": precision,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


RUN_FILES = {"config.yaml", "tb", "eva", "initial_adapter", "checkpoints"}  # what a run writes
# Settings a resume may change: where and how fast it runs, never what it computes.
RESUME_MAY_CHANGE = ("resume", "threads", "device", "data_root", "eval.workers", "eval.max_envs")


def _stopped_before_checkpoint(out: Path) -> bool:
    """A run folder that holds only what a run writes before its first checkpoint (killed
    with -9, or from an older eva_rl that did not clean up)."""
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    has_state = (out / "checkpoints" / "latest" / STATE_FILE).is_file()
    return "config.yaml" in names and names <= RUN_FILES and not has_state


def prepare_run_dir(out: Path, cfg: Any, resume: bool) -> None:
    """Refuse to clobber a run; `resume` needs a checkpoint and the same config (up to
    `RESUME_MAY_CHANGE`). A folder left by a run that stopped before its first checkpoint is
    replaced, so the same command simply runs again. Under torchrun every rank checks before
    rank 0 writes, so all of them fail (or go on) together. Writes `config.yaml` for a new run;
    a resumed run keeps its own (one an earlier eva_rl wrote is read with today's defaults)."""
    from eva_rl.config import as_current, changed_keys, read_yaml, to_dict

    latest = out / "checkpoints" / "latest" / STATE_FILE
    if resume and not latest.is_file():
        why = "it stopped before its first checkpoint" if out.is_dir() else "it does not exist"
        raise UserError(f"nothing to resume in {out} ({why}); run the command without resume")
    if resume:
        saved = as_current(type(cfg), read_yaml(out / "config.yaml"))
        changes = changed_keys(saved, to_dict(cfg), ignore=RESUME_MAY_CHANGE)
        if changes:
            listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes)
            raise UserError(
                f"resuming {out} with a different config ({listed}); a resume continues the "
                "same run: drop those changes, or start a new run with another out"
            )
    stale = not resume and out.is_dir() and _stopped_before_checkpoint(out)
    if not resume and out.exists() and any(out.iterdir()) and not stale:
        raise UserError(f"output directory {out} exists; pass resume=true or choose another out=")
    check_writable(out, directory=True)
    distributed.barrier()
    if distributed.is_main():
        if stale:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    distributed.barrier()


@contextlib.contextmanager
def discard_on_failure(out: Path, resume: bool) -> Iterator[None]:
    """A new run that fails or is interrupted before its first checkpoint leaves nothing: its
    folder is removed, so the same command can simply be run again."""
    try:
        yield
    except BaseException:
        if not resume and distributed.is_main() and out.is_dir():
            if not (out / "checkpoints" / "latest" / STATE_FILE).is_file():
                shutil.rmtree(out, ignore_errors=True)
        raise


def load_state(path: Path) -> dict[str, Any]:
    """A training state, unpickling nothing but tensors and plain containers (a checkpoint
    someone else wrote cannot run code here)."""
    import pickle

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path} holds objects other than tensors and plain data (eva_rl never writes "
            "those); refusing to load it: it could run code"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path} is not a readable checkpoint ({e}); start the run again") from None


def purge_events(log_dir: Path, step: int) -> None:
    """Drop every TensorBoard event after `step` (those a resumed run will log again), rewriting
    each event file atomically; TensorBoard then shows one point per step."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        records = list(RawEventFileLoader(str(path)).Load())
        keep = [r for r in records if Event.FromString(r).step <= step]
        if len(keep) == len(records):
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for record in keep:
                writer.write(record)
            writer.flush()
        os.replace(tmp, path)


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine decay to 0 at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return f


def action_preds(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The DT's predicted action at every step of a segment batch: (B, K, act_dim)."""
    return model(
        states=batch["states"],
        actions=batch["actions"],
        returns_to_go=batch["returns_to_go"],
        timesteps=batch["timesteps"],
        attention_mask=batch["attention_mask"],
        return_dict=True,
    ).action_preds


def action_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """MSE between predicted and dataset actions on real (unpadded) steps only, reduced in fp32
    whatever precision the forward ran in."""
    preds = action_preds(model, batch).float()
    mask = batch["attention_mask"].unsqueeze(-1).to(preds.dtype)
    sq = (preds - batch["actions"]) ** 2 * mask
    return sq.sum() / (mask.sum() * batch["actions"].shape[-1])


@torch.enable_grad()
def gradient_signal(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    """Mean over `batches` of the norm of the action-loss gradient with respect to the trainable
    parameters, in eval mode (no dropout). Gradients are cleared afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    norms = []
    for batch in batches:
        grads = torch.autograd.grad(action_loss(model, batch), params, allow_unused=True)
        norms.append(
            torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None])
            )
        )
    model.train(was_training)
    return torch.stack(norms).mean().item()


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], precision: str = "fp32"
) -> float:
    """Mean action loss over fixed held-out batches, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with autocast(device, precision):
        losses = [action_loss(model, batch) for batch in batches]
    model.train(was_training)
    return torch.stack(losses).mean().item()


class StepHook(Protocol):
    """Something a method runs after every optimizer step, with state saved in checkpoints."""

    def after_step(self, step: int) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def train_loop(
    model: torch.nn.Module,
    sampler: SegmentSampler,
    optim: OptimConfig,
    loop: LoopConfig,
    run_dir: Path,
    export: Callable[[Path, int], None],
    evaluate: Callable[[int], EvalPoint] | None = None,
    resume: bool = False,
    progress: bool = True,
    hooks: Sequence[StepHook] = (),
    penalty: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Train `model` on `sampler` batches; returns final metrics. See the module docstring.

    `hooks` run after every optimizer step (with the 0-based step index); `penalty(model)` is
    added to the action loss (logged separately as train/penalty). `precision` (resolved: bf16
    or fp32) is the forward pass's; the penalty, backward and optimizer stay in fp32."""
    main, processes = distributed.is_main(), distributed.world_size()
    device = next(model.parameters()).device
    forward = _data_parallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(optim.warmup_steps, loop.steps)
    )
    latest = run_dir / "checkpoints" / "latest"
    step = 0
    history: dict[str, Any] = {"eval": []}
    if resume:
        state = load_state(latest / STATE_FILE)
        if "processes" not in state:
            raise UserError(f"{latest} was written by an older eva_rl; start this run again")
        if len(state["processes"]) != processes:
            raise UserError(
                f"{latest} was written by {len(state['processes'])} process(es); resume it with "
                f"as many (torchrun --nproc-per-node {len(state['processes'])}), not {processes}"
            )
        saved = state.get("precision", "fp32")  # checkpoints before precision existed: fp32
        if saved != precision:
            raise UserError(
                f"{latest} was trained in {saved}; resume it with precision={saved}, "
                f"not {precision}"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        mine = state["processes"][distributed.rank()]
        sampler.load_state_dict(mine["sampler"])
        torch.set_rng_state(mine["torch_rng"])
        for hook, hook_state in zip(hooks, state.get("hooks", []), strict=True):
            hook.load_state_dict(hook_state)
        step, history = state["step"], state["history"]

    def save() -> None:
        rngs = distributed.gather_objects(
            {"sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state()}
        )
        if not main:
            return

        def write(directory: Path) -> None:
            export(directory, step)
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "processes": rngs,  # per rank: sampler and torch RNG states
                    "hooks": [hook.state_dict() for hook in hooks],
                    "step": step,
                    "precision": precision,
                    "history": history,
                },
                directory / STATE_FILE,
            )

        history["seconds"] = seconds_before + time.perf_counter() - started
        save_checkpoint_dir(latest, write)
        history["saved_step"] = step

    if resume and main:
        purge_events(run_dir / "tb", step)
    writer = SummaryWriter(run_dir / "tb") if main else None

    def scalar(tag: str, value: float) -> None:
        if writer is not None:
            writer.add_scalar(tag, value, step)

    def run_eval() -> None:
        if not main:  # the others wait for rank 0 in the next gradient all-reduce
            return
        model.eval()
        point = evaluate(step)
        model.train()
        history["eval"].append(point.to_dict())
        for key, value in point.metrics.items():
            scalar(f"eval/{key}", value)

    history["effective_batch_size"] = optim.batch_size * processes
    if not resume:
        scalar("train/effective_batch_size", history["effective_batch_size"])
    model.train()
    started, seen_loss, seen_penalty, window = time.perf_counter(), 0.0, 0.0, 0
    seconds_before = history.get("seconds", 0.0)
    bar = tqdm(
        total=loop.steps, initial=step, desc="train", unit="step", disable=not (progress and main)
    )
    try:
        if evaluate is not None and loop.eval_at_start and step == 0:
            run_eval()
        while step < loop.steps:
            batch = sampler.sample(optim.batch_size)
            with autocast(device, precision):
                loss = action_loss(forward, batch)
            extra = penalty(model) if penalty is not None else None
            if not torch.isfinite(loss):
                if "saved_step" in history:
                    where = (
                        f"the last good checkpoint (step {history['saved_step']}) is kept in "
                        f"{latest}; a resume would repeat the same updates, so start a new run"
                    )
                else:
                    where = "nothing was kept; run again"
                raise RunError(
                    f"loss became {loss.item()} at step {step + 1}; {where} with a lower "
                    "optim.lr or more optim.warmup_steps"
                )
            optimizer.zero_grad(set_to_none=True)
            (loss if extra is None else loss + extra).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
            optimizer.step()
            for hook in hooks:
                hook.after_step(step)
            scheduler.step()
            step += 1
            seen_loss, window = seen_loss + loss.item(), window + 1
            seen_penalty += 0.0 if extra is None else extra.item()
            bar.update(1)
            if step % loop.log_every == 0 or step == loop.steps:
                seen_loss = _mean_over_processes(seen_loss)
                scalar("train/loss", seen_loss / window)
                scalar("train/lr", scheduler.get_last_lr()[0])
                scalar("train/grad_norm", grad_norm.item())
                if penalty is not None:
                    scalar("train/penalty", seen_penalty / window)
                bar.set_postfix(loss=f"{seen_loss / window:.4f}")
                history["loss"] = seen_loss / window
                seen_loss, seen_penalty, window = 0.0, 0.0, 0
            if evaluate is not None and (
                step == loop.steps or (loop.eval_every and step % loop.eval_every == 0)
            ):
                run_eval()
            if step % loop.save_every == 0 or step == loop.steps:
                save()
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    history["seconds"] = seconds_before + time.perf_counter() - started
    return history


def _data_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """The module to run forward passes through: DDP under torchrun, else `model` itself.
    Unused parameters are allowed: the DT's state and return heads get no action-loss gradient."""
    if not distributed.active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def _mean_over_processes(value: float) -> float:
    """A logged training statistic averaged over the processes' batches."""
    if not distributed.active():
        return value
    return distributed.all_reduce_sum_(torch.tensor([value])).item() / distributed.world_size()
