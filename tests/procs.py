"""Child processes in tests: stopped on the way out whatever happened, and asked to
stop the way an orchestrator or a terminal asks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs.lab.supervisor import pid_alive


def mtlsprobe(
    *argv: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``mtlsprobe *argv`` as its own process (this interpreter), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def terminate(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM ``proc``, SIGKILL it when it has not exited after ``grace`` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``proc``, killed and waited for at the end of the block if still running."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def sigterm(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[str, str, float]:
    """SIGTERM ``proc``; its stdout, stderr and the seconds it took to exit."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    return out, err, time.monotonic() - t0


def all_gone(pids: Iterable[int], budget: float = 30) -> bool:
    """Whether every process in ``pids`` has exited within ``budget`` seconds."""
    pids = list(pids)
    end = time.monotonic() + budget
    while time.monotonic() < end and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    return not any(pid_alive(p) for p in pids)


def kill_groups(pids: Iterable[int]) -> None:
    """SIGKILL the process group of each of ``pids`` still alive (a test's clean-up)."""
    for p in pids:
        if pid_alive(p):
            os.killpg(p, signal.SIGKILL)
