"""Signals that end a command the way Ctrl-C does, so every ``finally`` still runs: the
lab's mesh is torn down, the run's Jobs and ConfigMaps are deleted."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def raising_on(
    signals: tuple[signal.Signals, ...], make: Callable[[int], BaseException]
) -> Iterator[None]:
    """While the block runs, each of ``signals`` raises ``make(signum)`` in the main
    thread (elsewhere, handlers cannot be installed: nothing changes)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise make(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
