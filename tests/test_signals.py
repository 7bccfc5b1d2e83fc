"""Interrupts held where code cannot be stopped half-way (eva_rl.signals); each case runs in its
own interpreter, whose main thread and signal handlers are the test's alone."""

import subprocess
import sys
import textwrap

import pytest

SETUP = """
import os, signal, time
from eva_rl.signals import interrupts_held, raise_interrupt
signal.signal(signal.SIGTERM, raise_interrupt)
"""


def run(code: str, timeout: float = 60) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", SETUP + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_a_signal_inside_a_held_section_is_raised_as_it_ends():
    assert run("""
        try:
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)  # twice: raised once
                with interrupts_held():  # nested: the outer section decides
                    time.sleep(0.05)
                print("inner-done")
                time.sleep(0.05)  # the handler would have run by now
                print("outer-done")
        except KeyboardInterrupt:
            print("raised")
        print(signal.getsignal(signal.SIGTERM) is raise_interrupt)
    """) == ["inner-done", "outer-done", "raised", "True"]


def test_an_ignored_signal_stays_ignored_and_an_unhandled_one_acts_as_it_would():
    assert run("""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a sweep's run: Ctrl-C is the sweep's
        with interrupts_held():
            print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
            os.kill(os.getpid(), signal.SIGINT)
        print("went-on")
    """) == ["True", "went-on"]
    out = subprocess.run(
        [sys.executable, "-c", SETUP + "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
         "with interrupts_held():\n    os.kill(os.getpid(), signal.SIGTERM)\n    print('held')\n"
         "print('not reached')"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == -15 and out.stdout.split() == ["held"]  # terminated, after the block


@pytest.mark.parametrize("where", ["inside put", "entering put's lock"])
def test_tensorboard_writer_interrupted_mid_call_still_closes(tmp_path, where):
    """The sweep's lost "stopped" line: SIGTERM inside `add_scalar`'s queue put left the
    writer's thread unwoken (close() then waited 120 s) or the queue's lock held (forever).
    The signal is made to land there; held, it waits for the call and close() is prompt."""
    inject = {
        "inside put": "q.not_empty.notify = lambda n=1: (raise_term(), real_notify(n))",
        "entering put's lock": "q.not_full = Acquired(q.not_full)",
    }[where]
    out = run(f"""
        import threading
        from torch.utils.tensorboard import SummaryWriter
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        writer = SummaryWriter({str(tmp_path)!r})
        q = writer.file_writer.event_writer._async_writer._byte_queue
        real_notify, real_lock = q.not_empty.notify, q.not_full
        raise_term = lambda: signal.raise_signal(signal.SIGTERM)

        class Acquired:  # the signal lands once the lock is taken, before `with` holds it
            def __init__(self, cond):
                self.cond = cond
            def __enter__(self):
                self.cond.__enter__()
                raise_term()  # its handler runs as the call returns
            def __exit__(self, *args):
                return self.cond.__exit__(*args)
            def __getattr__(self, name):
                return getattr(self.cond, name)

        {inject}
        try:
            with interrupts_held():
                writer.add_scalar("x", 1.0, 7)
        except KeyboardInterrupt:
            print("raised")
        q.not_empty.notify, q.not_full = real_notify, real_lock
        started = time.perf_counter()
        writer.close()
        print(time.perf_counter() - started < 10)
        events = EventAccumulator({str(tmp_path)!r})
        events.Reload()
        print([(e.step, e.value) for e in events.Scalars("x")] == [(7, 1.0)])
    """)
    assert out == ["raised", "True", "True"]
