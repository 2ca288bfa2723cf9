"""Loopback address plan for one lab (Linux routes all of 127/8 to ``lo``).

Each lab claims a *slot*: a pair of /16s, ``127.B.x.y`` for pod IPs (the sidecar's
inbound listeners) and ``127.B+1.x.y`` for the apps behind them (without network
namespaces the pod IP:port is taken by the sidecar). ``127.B.0.1`` carries the
control ports. A slot is claimed with a file lock for the life of the process and
is skipped while anything (e.g. a ``--keep`` lab) still listens on its control IP,
so labs, tests and benchmarks can run side by side.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from jobs.lab.supervisor import LabError

FIRST_OCTET = 100
SLOTS = 60
PODS_PER_OCTET = 250
PROBE_PROXY_PORT = 15001
PROBE_ADMIN_PORT = 15000
PROBE_INBOUND_PORT = 15006
WORKLOAD_ADMIN_BASE = 15100
EXTRA_PROBE_BASE = 15400  # more probe sidecars (authz identities): proxy, admin, inbound each


class NoFreeSlot(LabError):
    pass


@dataclass
class Slot:
    index: int
    _lock: IO[bytes] | None = None

    @property
    def octet(self) -> int:
        return FIRST_OCTET + 2 * self.index

    @property
    def control_ip(self) -> str:
        return f"127.{self.octet}.0.1"

    def pod_ip(self, i: int) -> str:
        hi, lo = divmod(i, PODS_PER_OCTET)
        if hi >= 255:
            raise ValueError(f"pod index {i} does not fit in one lab")
        return f"127.{self.octet}.{hi + 1}.{lo + 1}"

    def app_ip(self, i: int) -> str:
        hi, lo = divmod(i, PODS_PER_OCTET)
        return f"127.{self.octet + 1}.{hi + 1}.{lo + 1}"

    def base_id(self, j: int) -> int:
        """Distinct Envoy ``--base-id`` per process across labs on this machine."""
        return 7000 + self.index * 16 + j

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _lock_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"mtlsprobe-lab-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _listening(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As Envoy does: a port in TIME_WAIT after a previous lab is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise LabError(
                    f"cannot use loopback address {ip}: the lab needs all of 127.0.0.0/8 on "
                    "the loopback interface (Linux does this by default)"
                ) from None
            return True
    return False


def acquire_slot(prefer: int | None = None) -> Slot:
    """Claim a free slot (held until ``release`` or process exit)."""
    order = list(range(SLOTS))
    if prefer is not None:
        order.remove(prefer)
        order.insert(0, prefer)
    lock_dir = _lock_dir()
    for i in order:
        f = open(lock_dir / f"slot-{i}.lock", "ab")  # noqa: SIM115 - held for the lab's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        slot = Slot(i, f)
        if _listening(slot.control_ip, PROBE_ADMIN_PORT) or _listening(
            slot.control_ip, PROBE_PROXY_PORT
        ):
            slot.release()
            continue
        return slot
    raise NoFreeSlot(f"all {SLOTS} lab address slots are in use (labs left running with --keep?)")
