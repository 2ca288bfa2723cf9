"""Run a function inside a named network namespace (``ip netns`` names, /run/netns/NAME).

Only the calling thread enters the namespace (setns affects one thread), so the work runs
in a short-lived thread; sockets it creates keep that namespace after it ends.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def in_netns(name: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` inside network namespace ``name`` (None: here). Raises OSError naming it."""
    if name is None:
        return fn()
    if not name or "/" in name or name in (".", ".."):
        raise OSError(f"bad network namespace name {name!r}")
    box: dict[str, T | BaseException] = {}

    def run() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
        except OSError as exc:
            box["err"] = OSError(exc.errno, f"network namespace {name}: {exc.strerror}")
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                box["err"] = OSError(err, f"setns into {name}: {os.strerror(err)}")
                return
        finally:
            os.close(fd)
        try:
            box["ok"] = fn()
        except BaseException as exc:
            box["err"] = exc

    t = threading.Thread(target=run, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]  # type: ignore[misc]
    return box["ok"]  # type: ignore[return-value]
