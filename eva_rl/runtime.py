"""Where and how numbers are computed: the device, the precision, the cores a run may use.

Precision is bf16 autocast or plain fp32. Under bf16 only the matrix products of the forward
pass run in bfloat16; master weights, gradients, optimizer state, the loss reduction, the
gradient-signal measurement and the collector's statistics stay in fp32/fp64. `auto` picks bf16
where the hardware computes it natively (CUDA devices that support it; CPUs with AVX512-BF16 or
AMX), fp32 elsewhere: emulated bf16 is slower than fp32 (measured: 1.7x slower on a CPU without
AVX512-BF16, benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Literal

import torch

from eva_rl.errors import UserError

Precision = Literal["auto", "bf16", "fp32"]


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU. Under torchrun, `auto`/`cuda` mean this
    process's GPU (LOCAL_RANK)."""
    from eva_rl import distributed

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use device=auto")
    if device.type == "cuda" and device.index is None and distributed.launched():
        local, count = distributed.local_device_index(), torch.cuda.device_count()
        if local >= count:
            raise UserError(
                f"process LOCAL_RANK={local} has no GPU of its own ({count} visible); start at "
                f"most {count} processes per node (torchrun --nproc-per-node {count}) or use "
                "device=cpu"
            )
        device = torch.device("cuda", local)
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matrix products in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` -> `bf16` or `fp32` for `device`; an explicit bf16 without hardware support warns."""
    if name not in ("auto", "bf16", "fp32"):
        raise UserError(f"unknown precision {name!r}; use auto, bf16 or fp32")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "bf16" and not native_bf16(device):
        warnings.warn(
            f"precision=bf16 on {device}, which has no native bfloat16 (no AVX512-BF16/AMX or "
            "bf16-capable GPU): it is emulated and slower than fp32; use precision=auto",
            stacklevel=2,
        )
    return name


def autocast(device: torch.device, precision: str):
    """The forward-pass context for `precision` (already resolved): bf16 autocast or nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
