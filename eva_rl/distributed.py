"""Data parallelism across the processes `torchrun` starts (torch.distributed).

`torchrun --nproc-per-node N -m eva_rl.cli pretrain|finetune|collect ...` runs N copies of a
command; `init()` joins them into one process group (gloo for CPU tensors, NCCL for CUDA ones,
each process on GPU `LOCAL_RANK`). Without torchrun (WORLD_SIZE unset or 1) every helper here is
a no-op, so single-process code paths stay exactly as they were.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from eva_rl.errors import UserError

DISTRIBUTED_COMMANDS = ("pretrain", "finetune", "collect")


def launched() -> bool:
    """Started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(command: str) -> None:
    """Join the process group described by torchrun's environment variables."""
    if dist.is_initialized():
        return
    if command not in DISTRIBUTED_COMMANDS:
        raise UserError(
            f"`eva-rl {command}` runs as one process; only {', '.join(DISTRIBUTED_COMMANDS)} "
            "run under torchrun (launch it without torchrun)"
        )
    backend = "gloo"
    if torch.cuda.is_available():  # the same on every rank; NCCL starts at the first CUDA tensor
        backend = "cpu:gloo,cuda:nccl"
        if local_device_index() < torch.cuda.device_count():  # else CPU only: resolve_device
            torch.cuda.set_device(local_device_index())
    # evaluation runs on rank 0 only while the others wait in the next gradient all-reduce
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """The process that logs, evaluates and writes files."""
    return rank() == 0


def local_device_index() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_seed(seed: int, rank_: int | None = None) -> int:
    """This rank's data seed: `seed` itself on rank 0 (a one-process run is unchanged), an
    independent stream derived from (seed, rank) on the others."""
    r = rank() if rank_ is None else rank_
    return seed if r == 0 else int(np.random.SeedSequence([seed, r]).generate_state(1)[0])


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (no-op in one process); returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    if active():
        dist.broadcast(tensor, src)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` as rank `src` has it, on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
