"""Starting, watching and always stopping the lab's processes.

Every child gets its own process group (so a Ctrl-C in the terminal reaches only
us, and we stop each child and anything it forked), and, unless the mesh is meant
to outlive us (``keep``), PR_SET_PDEATHSIG so the kernel kills it if we die without
running any cleanup (SIGKILL, OOM). Supervisors still running at interpreter exit
are stopped by an atexit hook. The PIDs are written to ``<workdir>/pids`` so a kept
mesh can be stopped later (``mtlsprobe lab --down <workdir>``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PIDS_FILE = "pids"
# Loopback admin endpoints: never through a proxy from the user's environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PR_SET_PDEATHSIG = 1


class LabError(Exception):
    """The lab could not be brought up; the message says what and where the logs are."""


@dataclass
class Managed:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


def tail(path: Path, lines: int = 20) -> str:
    try:
        data = path.read_bytes()[-8192:]
    except OSError:
        return "(no log)"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _pdeathsig_preexec(parent: int) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours is dead for every purpose here.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass(eq=False)
class Supervisor:
    workdir: Path
    keep: bool = False
    procs: list[Managed] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        _LIVE.add(self)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Managed:
        log = self.workdir / f"{name}.log"
        # PDEATHSIG fires when the *thread* that forked exits: only use it from the main thread.
        use_pdeathsig = not self.keep and threading.current_thread() is threading.main_thread()
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Only prctl + getppid run in the child: no locks, no allocation.
                preexec_fn=_pdeathsig_preexec(os.getpid()) if use_pdeathsig else None,  # noqa: PLW1509
                env=env,
                close_fds=True,
            )
        managed = Managed(name, popen, log)
        with self._lock:
            self.procs.append(managed)
            self._write_pids()
        return managed

    def _write_pids(self) -> None:
        text = "".join(f"{p.pid} {p.name}\n" for p in self.procs)
        (self.workdir / PIDS_FILE).write_text(text, encoding="ascii")

    def check_alive(self) -> None:
        for p in self.procs:
            if not p.alive():
                raise LabError(
                    f"{p.name} exited with code {p.popen.returncode}; last log lines "
                    f"({p.log}):\n{tail(p.log)}"
                )

    def wait_http_ready(self, proc: Managed, url: str, deadline: float) -> None:
        """Poll ``url`` until it answers 200; fail fast if the process dies."""
        while True:
            if not proc.alive():
                self.check_alive()
            try:
                with _DIRECT.open(url, timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise LabError(
                    f"{proc.name} not ready at {url} in time; last log lines ({proc.log}):\n"
                    f"{tail(proc.log)}"
                )
            time.sleep(0.02)

    def stop(self, grace: float = 3.0) -> None:
        """Stop every child (its whole process group): SIGTERM, then SIGKILL."""
        with self._lock:
            procs, self.procs = list(self.procs), []
        for p in procs:
            _signal_group(p.pid, signal.SIGTERM)
        end = time.monotonic() + grace
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=max(0.0, end - time.monotonic()))
            _signal_group(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=2.0)
        with contextlib.suppress(OSError):
            (self.workdir / PIDS_FILE).unlink()
        _LIVE.discard(self)

    def detach(self) -> list[int]:
        """Leave the processes running (``--keep``); returns their PIDs."""
        pids = [p.pid for p in self.procs]
        _LIVE.discard(self)
        return pids


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_pids_file(workdir: Path, grace: float = 3.0) -> list[int]:
    """Stop a kept lab from its PID file (``mtlsprobe lab --down``); returns the PIDs stopped."""
    path = workdir / PIDS_FILE
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except OSError as exc:
        raise LabError(f"{path}: cannot read: {exc.strerror or exc}") from None
    pids: list[int] = []
    for line in lines:
        head = line.split(" ", 1)[0]
        if head.isdigit():
            pids.append(int(head))
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: `--down` returns once the processes are gone,
    # not merely signalled (bounded: a process stuck in the kernel cannot hold it forever).
    end = time.monotonic() + 10.0
    while time.monotonic() < end and any(pid_alive(p) for p in pids):
        time.sleep(0.02)
    path.unlink(missing_ok=True)
    return pids


_LIVE: set[Supervisor] = set()


@atexit.register
def _stop_all() -> None:
    for sup in list(_LIVE):
        if not sup.keep:
            sup.stop(grace=1.0)
