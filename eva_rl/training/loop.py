"""The training loop shared by pretraining and fine-tuning, as an object: `Trainer`.

AdamW (fused where torch has the kernel), linear warm-up then cosine decay, gradient clipping,
masked action MSE (`eva_rl.training.losses`). A run directory holds TensorBoard events, the
resolved config and `checkpoints/latest/` (written atomically): `state.pt` (model, optimizer,
scheduler, step, the open logging window, every process's torch and sampler RNG) plus whatever
`export(directory, step)` writes for users. Resuming restores all of it, so on CPU an
interrupted-then-resumed run equals an uninterrupted one, logged losses included.

The step never waits for the device: losses stay tensors until a logging, evaluation or
checkpoint step reads them, and that is where a non-finite loss is caught (naming the first
step that produced one) before anything is saved.

Under torchrun the model is wrapped in DistributedDataParallel: every process draws its own
batches (its sampler is seeded per rank), gradients are averaged, so the effective batch is
`batch_size x processes`; only rank 0 evaluates, logs and writes checkpoints.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from eva_rl import distributed
from eva_rl.data.segments import MAX_BATCH, SegmentSampler
from eva_rl.errors import RunError, UserError
from eva_rl.kernels import speed_up
from eva_rl.results import EvalPoint
from eva_rl.runtime import autocast, note_machine, rng_states, set_rng_states
from eva_rl.signals import interrupts_held
from eva_rl.training.losses import action_loss
from eva_rl.training.rundir import (
    STATE_FILE,
    check_resumed_precision,
    load_state,
    purge_events,
    save_state,
)


@dataclass
class OptimConfig:
    lr: float = 1e-4  # AdamW's peak learning rate
    weight_decay: float = 0.01  # AdamW's decoupled weight decay
    warmup_steps: int = 1000  # linear warm-up, then cosine decay, at the floor after the last step
    grad_clip: float = 0.25  # gradient norm clip
    batch_size: int = 64  # segments per update (per process under torchrun)
    # the cosine's floor as a fraction of lr: 0 ends at lr 0, where an evaluation at the last
    # step sees updates that have stopped moving; > 0 keeps the last updates learning
    final_lr_ratio: float = 0.0

    def __post_init__(self):
        if not (0 < self.lr < math.inf and 0 < self.grad_clip < math.inf):
            raise UserError(
                f"optim.lr and optim.grad_clip must be finite and > 0, got lr={self.lr}, "
                f"grad_clip={self.grad_clip}"
            )
        if not 0 <= self.weight_decay < math.inf:
            raise UserError(f"optim.weight_decay must be finite and >= 0, got {self.weight_decay}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise UserError(
                f"optim.batch_size must be in [1, {MAX_BATCH}] (segments per update, per "
                f"process), got {self.batch_size}"
            )
        if self.warmup_steps < 0:
            raise UserError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.final_lr_ratio <= 1:
            raise UserError(f"optim.final_lr_ratio must be in [0, 1], not {self.final_lr_ratio}")


@dataclass
class LoopConfig:
    steps: int = 1000  # gradient updates
    log_every: int = 50  # training-loss logging period
    eval_every: int = 1000  # evaluation period; 0: evaluate only at the end
    save_every: int = 500  # checkpoint period (what a resume restarts from)
    eval_at_start: bool = False  # also evaluate before the first update (step 0)
    eval_at: list[int] = field(default_factory=list)  # further evaluation steps (1K, 2.5K, ...)

    def __post_init__(self):
        if self.steps < 1 or self.log_every < 1 or self.save_every < 1 or self.eval_every < 0:
            raise UserError("steps, log_every, save_every must be >= 1 and eval_every >= 0")
        outside = [s for s in self.eval_at if not 1 <= s <= self.steps]
        if outside:
            raise UserError(f"loop.eval_at: steps {outside} are outside 1..{self.steps}")

    def evaluates_at(self, step: int) -> bool:
        """Whether the loop evaluates after update `step` (the last one always)."""
        periodic = self.eval_every and step % self.eval_every == 0
        return step == self.steps or bool(periodic) or step in self.eval_at


def lr_lambda(warmup: int, total: int, floor: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up to 1, then cosine decay to `floor` at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return f


def adamw(params: list[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where torch has one for the parameters (CPU and
    CUDA floats): the same update in fewer passes (benchmarks/README.md, "Training step")."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(
        params, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused or None
    )


class StepHook(Protocol):
    """Something a method runs after every optimizer step, with state saved in checkpoints."""

    def after_step(self, step: int) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Window:
    """The training losses since the last log line, kept as tensors until they are read, and
    the updates' gradient norms: a finite loss can still give non-finite gradients (a penalty,
    an overflow in the backward), which would reach the weights and the next checkpoint."""

    losses: list[torch.Tensor]
    penalties: list[torch.Tensor]
    first_step: int  # the step the window's first loss belongs to (1-based)
    grad_norms: list[torch.Tensor] = field(default_factory=list)  # before clipping

    def check(self, latest: Path, saved_step: int | None) -> None:
        """Raise `RunError` naming the first step whose loss or gradient was not finite."""
        first = {}  # what -> (index of its first non-finite value, the value)
        for what, series in (("loss", self.losses), ("gradient norm", self.grad_norms)):
            values = torch.stack(series) if series else None
            if values is not None and not bool(torch.isfinite(values).all()):
                bad = int((~torch.isfinite(values)).nonzero()[0, 0])
                first[what] = (bad, values[bad].item())
        if not first:
            return
        what, (bad, value) = min(first.items(), key=lambda item: item[1][0])
        if saved_step is not None:
            where = (
                f"the last good checkpoint (step {saved_step}) is kept in {latest}; a resume "
                "would repeat the same updates, so start a new run"
            )
        else:
            where = "nothing was kept; run again"
        raise RunError(
            f"{what} became {value} at step {self.first_step + bad}; {where} with a "
            "lower optim.lr or more optim.warmup_steps"
        )

    def state_dict(self) -> dict:
        return {
            "losses": [x.item() for x in self.losses],
            "penalties": [x.item() for x in self.penalties],
            "first_step": self.first_step,
            "grad_norms": [x.item() for x in self.grad_norms],
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> Window:
        """On the training device, where the next losses join them (a checkpoint written
        before gradient norms were kept has none)."""
        losses, penalties, norms = (
            [torch.tensor(x, dtype=torch.float32, device=device) for x in state.get(key, [])]
            for key in ("losses", "penalties", "grad_norms")
        )
        return cls(losses, penalties, state["first_step"], norms)


class Trainer:
    """Train `model` on `sampler` batches into `run_dir`; `run()` returns the run's history.

    `export(directory, step)` writes what users get beside each checkpoint; `evaluate(step)` is
    called at the evaluation steps; `hooks` run after every optimizer step (0-based index);
    `penalty(model)` is added to the action loss (logged as train/penalty). `precision`
    (resolved: bf16 or fp32) is the forward pass's; penalty, backward and optimizer stay fp32.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sampler: SegmentSampler,
        optim: OptimConfig,
        loop: LoopConfig,
        run_dir: Path,
        export: Callable[[Path, int], None],
        evaluate: Callable[[int], EvalPoint] | None = None,
        *,
        resume: bool = False,
        progress: bool = True,
        hooks: Sequence[StepHook] = (),
        penalty: Callable[[torch.nn.Module], torch.Tensor] | None = None,
        precision: str = "fp32",
    ):
        self.model, self.sampler, self.optim, self.loop = model, sampler, optim, loop
        self.run_dir, self.export, self.evaluate = Path(run_dir), export, evaluate
        self.hooks, self.penalty, self.precision = list(hooks), penalty, precision
        self.main, self.processes = distributed.is_main(), distributed.world_size()
        self.device = next(model.parameters()).device
        self.forward = _data_parallel(speed_up(model))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = adamw(self.params, optim)
        if optim.warmup_steps >= loop.steps:
            warnings.warn(
                f"optim.warmup_steps {optim.warmup_steps} >= loop.steps {loop.steps}: the "
                f"learning rate rises to {loop.steps / optim.warmup_steps:.0%} of optim.lr and "
                "never decays; lower optim.warmup_steps",
                stacklevel=2,
            )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(optim.warmup_steps, loop.steps, optim.final_lr_ratio)
        )
        self.latest = self.run_dir / "checkpoints" / "latest"
        self.step, self.lr = 0, 0.0  # updates made, the last one's learning rate
        self.history: dict[str, Any] = {"eval": []}
        self.window = Window([], [], 1)
        self.progress = progress
        self._clock = (time.perf_counter(), 0.0)  # (started, seconds of earlier segments)
        if resume:
            self._resume()
        self.history["effective_batch_size"] = optim.batch_size * self.processes
        self.writer = None
        if self.main:
            if resume:
                purge_events(self.run_dir / "tb", self.step)
            with interrupts_held():  # see eva_rl.signals: a writer stopped mid-call hangs
                self.writer = SummaryWriter(self.run_dir / "tb")
            if not resume:
                self._scalar("train/effective_batch_size", self.history["effective_batch_size"])

    def _resume(self) -> None:
        state = load_state(self.latest / STATE_FILE)
        if "processes" not in state:
            raise UserError(f"{self.latest} was written by an older eva_rl; start this run again")
        if len(state["processes"]) != self.processes:
            saved = len(state["processes"])
            raise UserError(
                f"{self.latest} was written by {saved} process(es); resume it with as many "
                f"(torchrun --nproc-per-node {saved}), not {self.processes}"
            )
        check_resumed_precision(state, self.precision, self.latest)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        mine = state["processes"][distributed.rank()]
        self.sampler.load_state_dict(mine["sampler"])
        set_rng_states(mine, self.device)
        for hook, hook_state in zip(self.hooks, state.get("hooks", []), strict=True):
            hook.load_state_dict(hook_state)
        self.step, self.history = state["step"], state["history"]
        if "window" in state:  # checkpoints before the window was saved resume a fresh one
            self.window = Window.from_state(state["window"], self.device)
        else:
            self.window = Window([], [], self.step + 1)

    def run(self) -> dict[str, Any]:
        """Train to `loop.steps`, logging, evaluating and saving on the configured periods."""
        started, seconds_before = time.perf_counter(), self.history.get("seconds", 0.0)
        self._clock = (started, seconds_before)
        note_machine(self.history, self.device)
        bar = tqdm(total=self.loop.steps, initial=self.step, desc="train", unit="step",
                   disable=not (self.progress and self.main))  # fmt: skip
        self.model.train()
        try:
            if self.evaluate is not None and self.loop.eval_at_start and self.step == 0:
                self._evaluate()
            while self.step < self.loop.steps:
                self._update()
                bar.update(1)
                self._after_update(bar)
        finally:
            bar.close()
            if self.writer is not None:
                with interrupts_held():
                    self.writer.close()
        self.history["seconds"] = seconds_before + time.perf_counter() - started
        return self.history

    def _update(self) -> None:
        """One optimizer step on a fresh batch; its loss joins the window unread."""
        batch = self.sampler.sample(self.optim.batch_size)
        with autocast(self.device, self.precision):
            loss = action_loss(self.forward, batch)
        extra = self.penalty(self.model) if self.penalty is not None else None
        self.optimizer.zero_grad(set_to_none=True)
        (loss if extra is None else loss + extra).backward()
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.optim.grad_clip)
        self.optimizer.step()
        for hook in self.hooks:
            hook.after_step(self.step)
        self.lr = self.scheduler.get_last_lr()[0]  # this update's, logged (the next one's after)
        self.scheduler.step()
        self.step += 1
        self.window.losses.append(loss.detach().float())
        self.window.grad_norms.append(self.grad_norm.detach().float())
        self.window.penalties.append(
            torch.zeros((), device=loss.device) if extra is None else extra.detach().float()
        )

    def _after_update(self, bar: tqdm) -> None:
        loop, step, last = self.loop, self.step, self.step == self.loop.steps
        if step % loop.log_every == 0 or last:
            self._log(bar)
        if self.evaluate is not None and loop.evaluates_at(step):
            self._check()
            self._evaluate()
        if step % loop.save_every == 0 or last:
            self._check()
            self.save()

    def _check(self) -> None:
        self.window.check(self.latest, self.history.get("saved_step"))

    def _log(self, bar: tqdm) -> None:
        self._check()
        n = len(self.window.losses)
        loss = _mean_over_processes(torch.stack(self.window.losses).sum().item()) / n
        self._scalar("train/loss", loss)
        self._scalar("train/lr", self.lr)
        self._scalar("train/grad_norm", self.grad_norm.item())
        if self.penalty is not None:
            self._scalar("train/penalty", torch.stack(self.window.penalties).sum().item() / n)
        bar.set_postfix(loss=f"{loss:.4f}")
        self.history["loss"] = loss
        self.window = Window([], [], self.step + 1)

    def _scalar(self, tag: str, value: float) -> None:
        if self.writer is not None:
            with interrupts_held():
                self.writer.add_scalar(tag, value, self.step)

    def _evaluate(self) -> None:
        if not self.main:  # the others wait for rank 0 in the next gradient all-reduce
            return
        self.model.eval()
        point = self.evaluate(self.step)
        self.model.train()
        self.history["eval"].append(point.to_dict())
        for key, value in point.metrics.items():
            self._scalar(f"eval/{key}", value)

    def save(self) -> None:
        """Write `checkpoints/latest` atomically: the user's export plus `state.pt`."""
        rngs = distributed.gather_objects(
            {"sampler": self.sampler.state_dict(), **rng_states(self.device)}
        )
        if not self.main:
            return
        started, seconds_before = self._clock
        self.history["seconds"] = seconds_before + time.perf_counter() - started
        self.history["saved_step"] = self.step  # in the checkpoint too: a resume names it
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "processes": rngs,  # per rank: sampler and torch RNG states (CPU, CUDA)
            "hooks": [hook.state_dict() for hook in self.hooks],
            "step": self.step,
            "precision": self.precision,
            "history": self.history,
            "window": self.window.state_dict(),
        }
        save_state(self.latest, state, lambda directory: self.export(directory, self.step))


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
