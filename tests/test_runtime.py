"""Sharing the cores: how many threads a process takes (affinity, quota, explicit counts, the
claims of other live eva_rl processes) and the OpenMP wait policy the CLI hands to torch and to
the processes it spawns."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from eva_rl import runtime
from eva_rl.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def registry(tmp_path, monkeypatch):
    """A private claims registry and no OMP_NUM_THREADS of the caller's."""
    monkeypatch.setenv("EVA_RL_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return tmp_path / "runtime" / "cores"


@pytest.fixture
def six_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setattr(runtime, "cgroup_quota", lambda: None)


def env_for_children() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def claimer(cores: int) -> subprocess.Popen:
    """Another live process that claimed `cores` through the registry (and waits)."""
    code = f"from eva_rl.runtime import share; share({cores}); print('ok', flush=True)\n"
    code += "import sys; sys.stdin.read()"
    p = subprocess.Popen([sys.executable, "-c", code], env=env_for_children(),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout.readline().strip() == "ok"
    return p


def test_affinity_mask_not_machine_total(six_cores):
    assert runtime.cpu_count() == 6
    assert runtime.share() == 6  # nothing else claims cores


def test_cgroup_quota_caps_the_cores(tmp_path, monkeypatch):
    cgroup = Path("/proc/self/cgroup")
    if not cgroup.is_file() or "0::" not in cgroup.read_text():
        pytest.skip("no cgroup v2 here")
    group = cgroup.read_text().split("0::", 1)[1].splitlines()[0].lstrip("/")
    limit = tmp_path / "cg" / group / "cpu.max"
    limit.parent.mkdir(parents=True, exist_ok=True)
    limit.write_text("150000 100000\n")  # a container's --cpus 1.5
    assert runtime.cgroup_quota(str(tmp_path / "cg")) == 2
    limit.write_text("max 100000\n")
    assert runtime.cgroup_quota(str(tmp_path / "cg")) is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setattr(runtime, "cgroup_quota", lambda: 2)
    assert runtime.cpu_count() == 2


def test_busy_cores_claimed_by_live_processes_are_left_to_them(six_cores, registry):
    first = claimer(3)
    try:
        assert runtime.share() == 3  # the 3 free cores
        second = claimer(2)
        try:
            assert runtime.share() == 2  # 1 free core, but a fair share is 6 // 3
        finally:
            second.kill()  # killed: its claim stays behind, stale
            second.wait()
        assert (registry / f"{second.pid}.claim").is_file()
        assert runtime.share() == 3
        assert not (registry / f"{second.pid}.claim").exists()
    finally:
        first.communicate("")  # ends normally: its claim goes with it
    assert not (registry / f"{first.pid}.claim").exists()
    assert runtime.share() == 6


def test_stale_and_reused_pid_claims_are_dropped(six_cores, registry):
    registry.mkdir(parents=True)
    (registry / f"{os.getppid()}.claim").write_text("4 1\n")  # a live pid started at another time
    (registry / "999999999.claim").write_text("4 1\n")  # no such process
    (registry / "garbage.claim").write_text("?")
    assert runtime.share() == 6
    assert [p.name for p in registry.glob("*.claim")] == [f"{os.getpid()}.claim"]


def test_explicit_threads_win_and_are_claimed(six_cores, registry):
    hog = claimer(6)
    try:
        assert runtime.share(5) == 5
        assert (registry / f"{os.getpid()}.claim").read_text().split()[0] == "5"
    finally:
        hog.communicate("")


def test_users_omp_num_threads_wins_over_automatic(six_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")
    assert runtime.share() == 4
    assert runtime.share(3) == 3  # an explicit setting still wins


def test_negative_threads_is_a_user_error():
    with pytest.raises(UserError, match="threads must be >= 0"):
        runtime.share(-1)


def test_unwritable_registry_still_chooses(six_cores, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("EVA_RL_RUNTIME_DIR", str(tmp_path / "file"))
    assert runtime.share() == 6


def test_set_threads_sets_torchs_threads():
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp
    import os
    import sys


    class Spy:  # what the wait policy is when torch is first imported
        def find_spec(self, name, path=None, target=None):
            if name == "torch" and "torch" not in seen:
                seen["torch"] = os.environ.get("GOMP_SPINCOUNT")


    def child(conn):
        conn.send([os.environ.get(k) for k in ("GOMP_SPINCOUNT", "KMP_BLOCKTIME")])


    if __name__ == "__main__":
        seen = {}
        sys.meta_path.insert(0, Spy())
        from eva_rl.cli import main

        assert main(["methods"]) == 0 and "torch" in sys.modules
        receive, send = mp.Pipe(duplex=False)
        process = mp.get_context("spawn").Process(target=child, args=(send,))
        process.start()
        print("RESULT", *map(str, [seen["torch"], *receive.recv()]))
        process.join()
    """
)


@pytest.mark.parametrize("user", [None, "5"])
def test_cli_sets_wait_policy_before_torch_and_spawned_children_inherit(tmp_path, user):
    script = tmp_path / "spawner.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in env_for_children().items() if k not in runtime.WAIT_VARIABLES}
    if user:
        env["GOMP_SPINCOUNT"] = user
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    expected = [user] * 2 + ["None"] if user else ["10000"] * 2 + ["1"]  # the user's stand alone
    assert line.split()[1:] == expected


def test_rng_states_resume_the_draws_of_the_runs_device():
    """A checkpoint's generator states continue the same draws after a fresh process seeds
    itself: the CPU generator everywhere, and the device's own where a run is on CUDA (its
    native dropout and the policy's samples are drawn there)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    torch.rand(3, device=device)  # moved on from the seed, as a run is by its checkpoint
    states = runtime.rng_states(device)
    assert set(states) == {"torch_rng"} | ({"cuda_rng"} if device.type == "cuda" else set())
    expected = torch.rand(4, device=device), torch.rand(4)
    torch.manual_seed(1)  # the resumed process's setup
    runtime.set_rng_states(states, device)
    assert torch.equal(torch.rand(4, device=device), expected[0])
    assert torch.equal(torch.rand(4), expected[1])


def test_a_cuda_runs_generator_is_kept_and_given_back(monkeypatch):
    """Without a GPU here, the CUDA half through torch.cuda's own calls: the device's state is
    saved beside the CPU's and restored to that device (the test above runs it for real on a
    GPU)."""
    device, saved, restored = torch.device("cuda:1"), torch.tensor([7], dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d: saved if d == device else None)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.append((s, d)))
    states = runtime.rng_states(device)
    assert states["cuda_rng"] is saved and set(states) == {"torch_rng", "cuda_rng"}
    runtime.set_rng_states(states, device)
    assert restored == [(saved, device)]
    runtime.set_rng_states({"torch_rng": states["torch_rng"]}, device)  # an older checkpoint
    assert len(restored) == 1


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "resolved"),
    [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16"), (True, True, "bf16")],
)
def test_auto_precision_follows_the_cpus_native_bf16(monkeypatch, avx512_bf16, amx, resolved):
    """`auto` is bf16 exactly where the CPU has AVX512-BF16 or AMX; an explicit bf16 elsewhere
    runs but warns that it is emulated; fp32 never warns."""
    import warnings

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) == resolved
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert runtime.resolve_precision("bf16", cpu) == "bf16"
        assert runtime.resolve_precision("fp32", cpu) == "fp32"
    emulated = [w for w in caught if "emulated" in str(w.message)]
    assert len(emulated) == (resolved == "fp32")


def test_auto_precision_on_cuda_asks_for_native_bf16(monkeypatch):
    """On CUDA, `auto` asks torch for bf16 without emulation (pre-Ampere GPUs emulate it)."""
    asked = {}

    def supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return False

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert runtime.native_bf16(torch.device("cuda")) is False
    assert asked == {"including_emulation": False}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert runtime.native_bf16(torch.device("cuda")) is True


def test_a_run_gives_its_cores_back(six_cores, registry):
    """Inside `cores_given_back` a run takes its share (threads and a claim others see); after
    it, the caller's thread count is back and the claim is gone, even when the run fails."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="the run failed"):
            with runtime.cores_given_back():
                assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
                assert [p.stem for p in registry.glob("*.claim")] == [str(os.getpid())]
                raise RuntimeError("the run failed")
        assert torch.get_num_threads() == 2
        assert not list(registry.glob("*.claim"))
    finally:
        torch.set_num_threads(before)
