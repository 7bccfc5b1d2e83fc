"""Stopping cleanly: Ctrl-C and SIGTERM raise KeyboardInterrupt wherever the main thread is,
except inside `interrupts_held()`, where they wait for the section to end.

Some code cannot be stopped half-way and then cleaned up: TensorBoard's event writer hands
each event to its writing thread through a `queue.Queue`, and an interrupt inside `put` can
leave the queue's lock held or the thread not woken, so the writer's `close()` waits forever
(or until its 120 s flush timer). A sweep gave a run stopped there 60 s, then killed it: the
run's log never said it stopped. `shutil.rmtree` stopped mid-walk fails on a closed
descriptor. Such sections hold interrupts; a signal that arrives meanwhile is delivered again
(to the handler it was meant for) as the section ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_depth = 0  # nested holds: only the outermost one swaps the handlers


def raise_interrupt(signum, frame):
    """A handler that makes a signal mean what Ctrl-C means (SIGTERM from a scheduler, from
    `kill`, from a sweep stopping its runs)."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """SIGINT and SIGTERM noted, not acted on, during the `with` block; re-raised after it.
    Off the main thread (signals run there only) and for ignored signals it changes nothing."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    pending: list[int] = []
    previous = {}
    _depth += 1
    try:
        for signum in HELD_SIGNALS:
            handler = signal.getsignal(signum)
            if handler not in (signal.SIG_IGN, None):  # None: set outside Python, left alone
                previous[signum] = signal.signal(signum, lambda s, f: pending.append(s))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _depth -= 1
        for signum in dict.fromkeys(pending):  # each once, in the order they came
            signal.raise_signal(signum)
