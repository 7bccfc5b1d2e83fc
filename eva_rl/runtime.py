"""Where and how numbers are computed: the device, the precision, the cores a run may use.

Precision is bf16 autocast or plain fp32. Under bf16 only the matrix products of the forward
pass run in bfloat16; master weights, gradients, optimizer state, the loss reduction, the
gradient-signal measurement and the collector's statistics stay in fp32/fp64. `auto` picks bf16
where the hardware computes it natively (CUDA devices that support it; CPUs with AVX512-BF16 or
AMX), fp32 elsewhere: emulated bf16 is slower than fp32 (measured: 1.7x slower on a CPU without
AVX512-BF16, benchmarks/README.md).

Cores: commands started side by side (by hand, by a sweep's workers, by Ray) share the machine.
Each computing process takes `share()` cores: an explicit count, else the user's
OMP_NUM_THREADS, else the cores of its affinity mask and cgroup quota that other eva_rl processes
have not claimed (never less than a fair 1/(n+1) of them). Claims are files in a per-user
registry, so a process started a moment after another sees it at once; the load average lags a
minute and counts the whole host inside a container, and sampling /proc/stat sees a neighbour
only while it happens to be busy. Load from other programs is not seen: set `threads` then.
OpenMP threads soon stop spinning when out of work (`quiet_waits`): a spinning pool steals the
cores its neighbours need (measured 9x slower instead of at most 2x beside one other process,
benchmarks/README.md).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from eva_rl.errors import UserError

if TYPE_CHECKING:  # torch loads after `quiet_waits` has set the environment its OpenMP reads
    import torch

Precision = Literal["auto", "bf16", "fp32"]

# OpenMP threads out of work spin briefly, then sleep: GNU OpenMP (libgomp, torch's on Linux)
# 10,000 spins (~0.1 ms; libgomp's default is 300,000, ~3 ms), LLVM/Intel OpenMP 1 ms (not 200)
WAIT_POLICY = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}
WAIT_VARIABLES = ("OMP_WAIT_POLICY", *WAIT_POLICY)


def quiet_waits() -> None:
    """OpenMP threads that soon sleep instead of spinning while they wait for work, unless the
    user set any wait variable (then theirs stand alone). A short spin keeps a step alone about
    as fast as before (no spin at all, OMP_WAIT_POLICY=PASSIVE, measured 1.1-1.5x slower per
    step at 2 threads) and bounds what a waiting thread takes from its neighbours. The OpenMP
    runtime reads these once, when torch loads it: call before `import torch` (the CLI does,
    first thing); processes spawned later (sweep runs, env workers) inherit them."""
    if not any(key in os.environ for key in WAIT_VARIABLES):
        os.environ.update(WAIT_POLICY)


def cpu_count() -> int:
    """Cores this process may run on: its affinity mask, capped by its cgroup's CPU quota (a
    container's --cpus), not the machine's total."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, cgroup_quota() or cores))


def cgroup_quota(root: str = "/sys/fs/cgroup") -> int | None:
    """Whole cores allowed by this process's cgroup v2 `cpu.max` (rounded up); None: no limit."""
    try:
        group = Path("/proc/self/cgroup").read_text().split("0::", 1)[1].splitlines()[0]
        quota, period = (Path(root) / group.lstrip("/") / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, IndexError, ValueError):  # no cgroup v2, no cpu controller
        return None


def share(requested: int = 0) -> int:
    """Cores (threads or worker processes) this process computes on, recorded for the eva_rl
    processes that start after it until it exits: `requested` when > 0, else the user's
    OMP_NUM_THREADS, else the cores no other live eva_rl process claims, or a fair share when
    fewer are free (earlier processes keep theirs; short OpenMP waits keep that
    oversubscription cheap)."""
    if requested < 0:
        raise UserError(f"threads must be >= 0 (0: a share of the free cores), got {requested}")
    folder = registry()
    try:
        with _locked(folder):
            n = requested or _user_threads() or _free_share(_claims(folder))
            _claim(folder, n)
    except OSError:  # no writable runtime folder: choose without the others' claims
        n = requested or _user_threads() or cpu_count()
    return n


def set_threads(requested: int = 0) -> int:
    """Run torch's CPU operations on this process's `share` of the cores; returns the count."""
    import torch

    n = share(requested)
    torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def cores_given_back():
    """A run's cores, given back when it ends: torch's thread count as it was before and this
    process's claim dropped, so a notebook that ran one fine-tune neither keeps the run's
    thread count nor holds cores from later eva_rl processes while it sits idle (a CLI
    process ends with its run anyway)."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)
        atexit.unregister(_release)
        _release(registry() / f"{os.getpid()}.claim")


def registry() -> Path:
    """Where computing processes record their claims: $EVA_RL_RUNTIME_DIR, else a per-user
    folder in the temporary directory."""
    default = Path(tempfile.gettempdir()) / f"eva_rl-{os.getuid()}"
    return Path(os.environ.get("EVA_RL_RUNTIME_DIR") or default) / "cores"


def _free_share(claims: dict[int, int]) -> int:
    cores = cpu_count()
    return max(1, cores - sum(claims.values()), cores // (len(claims) + 1))


def _user_threads() -> int:
    """OMP_NUM_THREADS (its first level), when set to a positive count; else 0."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() else 0


@contextlib.contextmanager
def _locked(folder: Path):
    """Read and write claims one process at a time (runs started together see each other)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _started(pid: int) -> str | None:
    """A process's start time (clock ticks after boot), None once it has ended: a pid reused by
    a later process has another."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _claims(folder: Path) -> dict[int, int]:
    """Cores claimed by the other live processes, by pid; claims of ended processes (killed
    ones leave theirs) are removed."""
    claims = {}
    for entry in folder.glob("*.claim"):
        try:
            pid, (cores, started) = int(entry.stem), entry.read_text().split()
            alive = _started(pid) == started
        except (OSError, ValueError):
            pid, alive = 0, False
        if pid != os.getpid() and alive:
            claims[pid] = int(cores)
        elif pid != os.getpid():
            entry.unlink(missing_ok=True)
    return claims


def _claim(folder: Path, cores: int) -> None:
    entry = folder / f"{os.getpid()}.claim"
    staged = entry.with_suffix(".tmp")
    staged.write_text(f"{cores} {_started(os.getpid())}\n")
    staged.replace(entry)
    atexit.unregister(_release)  # one claim per process: the latest
    atexit.register(_release, entry)


def _release(entry: Path) -> None:
    entry.unlink(missing_ok=True)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU. Under torchrun, `auto`/`cuda` mean this
    process's GPU (LOCAL_RANK)."""
    import torch

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
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def machine(device: torch.device) -> dict[str, object]:
    """Where and on how many threads a run ran, for its summary: fp32 kernels round differently
    across instruction sets (AVX2 vs AVX-512), GPUs and thread counts (sums split differently),
    so a rerun elsewhere, or a resume at another count, can differ at the float level."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    here = {"cpu": cpu, "isa": torch.backends.cpu.get_cpu_capability(), "cores": cpu_count(),
            "threads": torch.get_num_threads(), "torch": str(torch.__version__),
            "native_bf16": bool(native_bf16(device))}  # fmt: skip
    if device.type == "cuda":
        here["gpu"] = torch.cuda.get_device_name(device)
    return here


def note_machine(history: dict, device: torch.device) -> None:
    """Add this machine to a run's `history["machines"]` unless it ran the last segment too (a
    run resumed elsewhere, or at another thread count, lists each in order)."""
    machines, here = history.setdefault("machines", []), machine(device)
    if not machines or machines[-1] != here:
        machines.append(here)


def check_precision(name: str) -> None:
    """Refuse a precision that is not one of `Precision`'s, in one line (every config's check)."""
    if name not in get_args(Precision):
        *first, last = get_args(Precision)
        raise UserError(f"unknown precision {name!r}; use {', '.join(first)} or {last}")


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` -> `bf16` or `fp32` for `device`; an explicit bf16 without hardware support warns."""
    check_precision(name)
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
        import torch

        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's generators a run draws from, for its checkpoint: the CPU one and, on CUDA, the
    device's (native dropout and samples drawn there), so that a resume continues both."""
    import torch

    states = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore `rng_states`; a checkpoint written before CUDA's was kept, or on another kind of
    device, restores the CPU generator only."""
    import torch

    torch.set_rng_state(states["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in states:
        torch.cuda.set_rng_state(states["cuda_rng"], device)
