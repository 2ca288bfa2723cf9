"""Namespaces, the lab bridge, veth pairs, addresses and hosts files, and their teardown.

Every object is named with a per-run prefix (``mp`` + 6 hex digits) so parallel labs
and tests never collide, and is recorded in ``<workdir>/netns.json`` *before* it is
created: ``teardown`` (also ``mtlsprobe lab --down``) removes exactly what a run made,
even after the lab process was SIGKILLed half-way through.

Nothing is routed outside the lab: the bridge has no address in the host namespace,
there is no NAT and no host iptables rule; pods reach only each other. Pod IPs come from
``POD_NET``; Services get virtual IPs from ``SERVICE_NET`` that exist only in the hosts
files (like ClusterIPs, nothing answers on them: the sidecar's capture does).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from jobs.lab.addresses import Slot
from jobs.lab.supervisor import LabError, pid_alive

POD_NET = "10.243"  # /16: pods 10.243.1.1 …, the probes 10.243.0.x
SERVICE_NET = "100.64"  # /16 of virtual Service IPs (hosts files only)
PODS_PER_OCTET = 250
STATE_FILE = "netns.json"
NETNS_DIR = Path("/var/run/netns")
ETC_NETNS = Path("/etc/netns")
# Files the pods' users (Envoy as 1337, the probe as 65532) read: a root-owned tmpfs
# directory per run, since the workdir's parents may be closed to them (mkdtemp: 0700).
RUN_DIR = Path("/run/mtlsprobe-lab")
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NetnsUnavailable(LabError):
    """This machine or user cannot run the namespace lab (not root, no ``ip``/``iptables``)."""


def preflight() -> None:
    """Root and the tools, checked up front with a one-line reason."""
    if os.geteuid() != 0:
        raise NetnsUnavailable(
            "--netns needs root (it creates network namespaces, a bridge and iptables rules); "
            "run as root or use the loopback lab (without --netns)"
        )
    for tool, package in (("ip", "iproute2"), ("iptables-restore", "iptables")):
        if shutil.which(tool) is None:
            raise NetnsUnavailable(
                f"--netns needs '{tool}' (Debian package {package}; `make netns-deps` installs it)"
            )
    if shutil.which("setpriv") is None:
        raise NetnsUnavailable("--netns needs 'setpriv' (Debian package util-linux)")


def new_prefix() -> str:
    return "mp" + secrets.token_hex(3)


class PodAddresses(Slot):
    """``build_lab``'s address plan for the namespace lab: a pod's app listens on the pod
    IP itself (its sidecar sits in front through capture, not on another address)."""

    def __init__(self) -> None:
        super().__init__(index=0)

    @property
    def control_ip(self) -> str:  # no control address: each pod has its own loopback
        return "127.0.0.1"

    def pod_ip(self, i: int) -> str:
        hi, lo = divmod(i, PODS_PER_OCTET)
        if hi >= 254:
            raise ValueError(f"pod index {i} does not fit in one lab")
        return f"{POD_NET}.{hi + 1}.{lo + 1}"

    def app_ip(self, i: int) -> str:
        return self.pod_ip(i)


def probe_ip(i: int) -> str:
    return f"{POD_NET}.0.{i + 2}"


def service_ip(i: int) -> str:
    hi, lo = divmod(i, PODS_PER_OCTET)
    return f"{SERVICE_NET}.{hi}.{lo + 1}"


@dataclass
class NetState:
    """What one run created (or is about to): the teardown's whole knowledge."""

    prefix: str
    bridge: str
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # host ends of the veth pairs

    def save(self, workdir: Path) -> None:
        path = workdir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, workdir: Path) -> NetState | None:
        try:
            doc = json.loads((workdir / STATE_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"{workdir / STATE_FILE}: unreadable ({exc})") from None
        return cls(
            prefix=str(doc["prefix"]),
            bridge=str(doc["bridge"]),
            namespaces=[str(n) for n in doc.get("namespaces", [])],
            links=[str(n) for n in doc.get("links", [])],
        )


def run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    """One command (``ip``, ``iptables-restore``); a failure is one line naming it."""
    try:
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)}: {exc}") from None
    if check and proc.returncode != 0:
        why = " ".join((proc.stderr or proc.stdout).split())[:300]
        raise LabError(f"`{' '.join(argv)}` failed: {why}")
    return proc.stdout


@dataclass(frozen=True)
class PodNet:
    """One pod's namespace: its name, IP, veth host end and hosts file."""

    netns: str
    ip: str
    link: str
    hostname: str


class Network:
    """The lab's bridge and namespaces. ``add_pod`` records then creates; ``teardown``
    removes everything recorded, ignoring what is already gone."""

    def __init__(self, workdir: Path, prefix: str | None = None) -> None:
        self.workdir = workdir
        self._lock = threading.Lock()
        p = prefix or new_prefix()
        if not (p.isascii() and p.isalnum() and p.islower() and 2 <= len(p) <= 8):
            # Link names are at most 15 bytes: prefix + "h" + pod index.
            raise LabError(f"lab network prefix {p!r}: 2-8 lowercase letters/digits")
        self.state = NetState(prefix=p, bridge=f"{p}br")

    @property
    def prefix(self) -> str:
        return self.state.prefix

    @property
    def share(self) -> Path:
        return RUN_DIR / self.prefix

    def create_bridge(self) -> None:
        self.state.save(self.workdir)
        _mkdirs(self.share)
        self.share.chmod(0o755)
        run(["ip", "link", "add", self.state.bridge, "type", "bridge"])
        run(["ip", "link", "set", self.state.bridge, "up"])

    def add_pod(self, index: int, ip: str, hostname: str, hosts: str) -> PodNet:
        ns = f"{self.prefix}-{index}"
        link = f"{self.prefix}h{index}"
        with self._lock:  # pods are added from several threads
            self.state.namespaces.append(ns)
            self.state.links.append(link)
            self.state.save(self.workdir)
        etc = ETC_NETNS / ns
        _mkdirs(etc)
        (etc / "hosts").write_text(hosts, encoding="utf-8")
        # No name server inside the lab: unknown names fail at once, as NXDOMAIN would.
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "link", "set", link, "master", self.state.bridge, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{ip}/16", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        # Service IPs have a route (so connect() reaches the capture rules, as a pod's
        # default route does) but nothing behind it: only a sidecar answers for them.
        run(["ip", "-n", ns, "route", "add", f"{SERVICE_NET}.0.0/16", "dev", "eth0"])
        return PodNet(ns, ip, link, hostname)

    def teardown(self) -> list[str]:
        return teardown(self.state)


def _mkdirs(path: Path) -> None:
    """``mkdir -p`` (mode 0755) that survives another lab's teardown removing an empty
    parent (/etc/netns, RUN_DIR) at the same moment."""
    for attempt in range(5):
        try:
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            if attempt == 4:
                raise


def hosts_file(own: tuple[str, str], services: Iterable[tuple[str, str]]) -> str:
    """``/etc/hosts`` of one pod: localhost, itself, and every Service's names."""
    lines = ["127.0.0.1 localhost", f"{own[0]} {own[1]}"]
    for ip, host in services:
        parts = host.split(".")
        names = [host]
        if len(parts) >= 3 and host.endswith(".svc.cluster.local"):
            names += [".".join(parts[:3]), ".".join(parts[:2])]
        lines.append(f"{ip} {' '.join(names)}")
    return "\n".join(lines) + "\n"


def netns_argv(ns: str, argv: Sequence[str], uid: int | None = None) -> list[str]:
    """Run ``argv`` in ``ns`` (with its /etc/netns files), optionally as ``uid``:gid. The
    UID change clears PR_SET_PDEATHSIG, so setpriv sets it again for the target.

    As ``uid`` the process keeps one capability, CAP_DAC_READ_SEARCH: the checkout and its
    venv (the interpreter, our code, Envoy) may sit under a directory only root may enter
    (a fresh clone in ``mktemp -d`` or ``/root``). It lets the pod's user read files, nothing
    else; the UID the capture rules match stays exactly the pod's."""
    out = ["ip", "netns", "exec", ns]
    if uid is not None:
        out += [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--inh-caps=+dac_read_search",
            "--ambient-caps=+dac_read_search",
            "--pdeathsig=KILL",
        ]
    return out + list(argv)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a thread that entered ``ns`` (setns affects only the calling
    thread): sockets it opens live in the pod's network, the lab process stays outside."""
    box: list[T] = []
    err: list[BaseException] = []

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
        except OSError as exc:
            err.append(LabError(f"network namespace {ns}: {exc.strerror}"))
            return
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                err.append(LabError(f"setns({ns}): {os.strerror(e)}"))
                return
        finally:
            os.close(fd)
        try:
            box.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            err.append(exc)

    t = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    if err:
        raise err[0]
    return box[0]


def _netns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(w) for w in out.split() if w.isdigit()]


def teardown(state: NetState, grace: float = 3.0) -> list[str]:
    """Remove every process, veth, namespace, hosts file and the bridge of ``state``.
    Idempotent; returns what could not be removed (empty when all is gone)."""
    present = set(list_netns())
    namespaces = [n for n in state.namespaces if n in present]
    # Anything still running inside (a process whose supervisor died with the lab).
    pids = [p for ns in namespaces for p in _netns_pids(ns) if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 10.0
    while time.monotonic() < end and any(pid_alive(p) for p in pids):
        time.sleep(0.02)
    links = set(list_links())
    for link in state.links:
        if link in links:
            run(["ip", "link", "del", link], check=False)
    for ns in namespaces:
        run(["ip", "netns", "del", ns], check=False)
    for ns in state.namespaces:
        shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
    if state.bridge in links:
        run(["ip", "link", "del", state.bridge], check=False)
    shutil.rmtree(RUN_DIR / state.prefix, ignore_errors=True)
    for parent in (ETC_NETNS, RUN_DIR):  # ours when empty; another lab's when not
        with contextlib.suppress(OSError):
            parent.rmdir()
    return leftovers(state.prefix)


def list_netns() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def list_links() -> list[str]:
    out = run(["ip", "-o", "link", "show"], check=False)
    names: list[str] = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def leftovers(prefix: str) -> list[str]:
    """Objects named with ``prefix`` that still exist (a teardown must leave none)."""
    left = [f"netns {n}" for n in list_netns() if n.startswith(prefix)]
    left += [f"link {n}" for n in list_links() if n.startswith(prefix)]
    left += [f"dir {p}" for p in ETC_NETNS.glob(f"{prefix}-*")] if ETC_NETNS.exists() else []
    left += [f"dir {RUN_DIR / prefix}"] if (RUN_DIR / prefix).exists() else []
    return left
