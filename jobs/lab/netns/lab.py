"""A scenario with every pod a network namespace, probed as in a cluster.

The mesh comes from the same ``build_lab`` as the loopback lab (pod IPs from the
namespace range); each pod gets a namespace, its app (``mtlsprobe serve`` on the pod
IP) and, with a sidecar, Envoy under UID 1337 behind istio-init's rules. Two probe pods
run ``mtlsprobe check`` with the Job spec's own arguments (jobs.launch.jobspec): the
sidecar probe as UID 65532 behind capture, with no ``sidecarProxy`` in its targets and
``--wait-for-sidecar``/``--quit-sidecar`` against its Envoy; the plain probe without
one. Their JSON lines are judged the way ``mtlsprobe run`` judges pod logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

from jobs.lab.build import LabBuild, build_lab
from jobs.lab.meshca import CertFiles, MeshCerts, issue_mesh_certs
from jobs.lab.netns import capture, envoy
from jobs.lab.netns.net import (
    STATE_FILE,
    NetState,
    Network,
    PodAddresses,
    PodNet,
    hosts_file,
    in_netns,
    netns_argv,
    preflight,
    probe_ip,
    service_ip,
    teardown,
)
from jobs.lab.runner import LabRun, write_targets
from jobs.lab.runtime import App, ServeArgv, default_serve_argv, envoy_path
from jobs.lab.scenarios import Scenario, judge
from jobs.lab.spec import MeshSpec
from jobs.lab.supervisor import LabError, Managed, Supervisor, stop_pids_file
from jobs.launch.jobspec import ROLES, RUN_AS, Role, RunSpec, probe_args
from jobs.launch.judge import errors_for, expected_keys, missing, parse_log
from probe.checks import OPT_IN, load_check
from probe.checks.base import Settings
from probe.model import Source, TargetsFile
from probe.results import Result

AUTHZ = "authz"  # needs a sidecar (it calls as the sidecar's identity): the sidecar probe runs it
WIRE = "wire"  # opt-in: a capture beside the sidecar probe's calls (see _run_wire)
POD_IF = "eth0"  # a lab pod's end of its veth
AGENT_PORT = 15020  # pilot-agent: /quitquitquit, /healthz/ready
MAX_SIDECARS = 64  # one Envoy (~65 MiB) per sidecar pod here, unlike the loopback lab
PROBE_DEADLINE = 300.0  # a probe Job's activeDeadlineSeconds
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class NetnsRun(LabRun):
    """A lab run whose probes ran in namespaces: ``captured`` counts the connections
    iptables redirected into the probe's sidecar (the proof of transparent capture)."""

    captured: int = 0
    # With a native sidecar (still up after the probe): the probe sidecar's Envoy counters
    # for its outbound clusters and listeners, read once the probes are done.
    sidecar_stats: dict[str, int] = field(default_factory=dict)
    sidecar_quit: bool = False  # the probe's Envoy exited on its --quit-sidecar


@dataclass
class ProbePod:
    role: Role
    net: PodNet
    checks: tuple[str, ...]
    # authz cases belong to the probe whose identity they name: (only this one, not these)
    authz_source: str | None = None
    authz_others: frozenset[str] = frozenset()

    def keeps(self, r: Result) -> bool:
        if r.check != AUTHZ:
            return True
        if self.authz_source is not None:
            return r.source == self.authz_source
        return r.source not in self.authz_others


@dataclass
class NetnsLab:
    """A scenario's mesh as namespaces; a context manager (teardown is guaranteed)."""

    mesh: MeshSpec
    workdir: Path
    ready_timeout: float = 60.0
    serve_argv: ServeArgv = default_serve_argv
    prefix: str | None = None  # names of everything created (default: a fresh one)
    net: Network = field(init=False)
    supervisor: Supervisor = field(init=False)
    certs: MeshCerts | None = None
    pods: dict[str, PodNet] = field(default_factory=dict)  # pod key -> namespace
    probes: dict[str, PodNet] = field(default_factory=dict)  # "sidecar"/"plain"
    vips: dict[str, str] = field(default_factory=dict)  # service host -> virtual IP
    envoy_procs: list[Managed] = field(default_factory=list)
    probe_envoy: Managed | None = None
    # One more probe pod per further identity the AuthorizationPolicies name.
    extra_probes: dict[str, PodNet] = field(default_factory=dict)
    services: list[tuple[str, str]] = field(default_factory=list)  # (virtual IP, host)
    _next_index: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    ready_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.net = Network(self.workdir, self.prefix)
        self.supervisor = Supervisor(self.workdir)

    def __enter__(self) -> NetnsLab:
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
        self.stop()

    def stop(self) -> None:
        self.supervisor.stop()
        left = self.net.teardown()
        if left:
            raise LabError(f"teardown left {', '.join(left)}")
        (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def start(self) -> None:
        preflight()
        sidecars = sum(1 for p in self.mesh.pods if p.sidecar)
        if sidecars > MAX_SIDECARS:
            raise LabError(
                f"--netns runs one Envoy per sidecar pod: {sidecars} is more than "
                f"{MAX_SIDECARS}; use the loopback lab for scale"
            )
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        binary = envoy_path()
        hosts = sorted({u.host for u in self.mesh.upstreams})
        self.vips = {h: service_ip(i) for i, h in enumerate(hosts)}
        services = self.services = [(self.vips[h], h) for h in hosts]

        self.net.create_bridge()
        share = self.net.share
        self.certs = issue_mesh_certs(self.mesh, share / "certs")
        _chown_tree(share / "certs", capture.PROXY_UID)
        # Keys stay 0600 (Envoy's); chains are public, and the probe's ``self`` check reads
        # its own chain from the file its sidecar's config dump names.
        (share / "certs").chmod(0o755)
        # (index, ip, hostname, captured): the workload pods, then one pod per probe role.
        plan = [(i, p.ip, p.name, p.sidecar) for i, p in enumerate(self.mesh.pods)]
        n = len(self.mesh.pods)
        plan += [
            (n + j, probe_ip(j), f"mtlsprobe-{role.name}", role.sidecar)
            for j, role in enumerate(ROLES)
        ]

        def make(index: int, ip: str, hostname: str, captured: bool) -> PodNet:
            pn = self.net.add_pod(index, ip, hostname, hosts_file((ip, hostname), services))
            if captured:
                capture.install(pn.netns)  # istio-init, before the pod's containers
            return pn

        # A few `ip` commands per pod: in parallel, they cost one pod's time per core.
        with ThreadPoolExecutor(max_workers=8) as pool:
            made = list(pool.map(lambda args: make(*args), plan))
        for pod, pn in zip(self.mesh.pods, made[:n], strict=True):
            self.pods[pod.key] = pn
        for role, pn in zip(ROLES, made[n:], strict=True):
            self.probes[role.name] = pn
        self._next_index = len(plan)

        confdir = share / "envoy"
        confdir.mkdir(mode=0o755)
        waits: list[tuple[str, Managed, Callable[[], bool]]] = []
        for pod in self.mesh.pods:
            pn = self.pods[pod.key]
            apps = [App(pod.ip, p.port, pod.key, p.http) for p in pod.ports]
            if apps:
                proc = self.supervisor.start(
                    f"app-{pn.netns}", netns_argv(pn.netns, self.serve_argv(apps))
                )
                for a in apps:
                    waits.append((pn.netns, proc, _listening(a.ip, a.port)))
            if pod.sidecar:
                boot = envoy.workload_sidecar(pod, self.certs, self.mesh.trust_domain)
                proc = self._envoy(binary, confdir, pn.netns, boot)
                waits.append((pn.netns, proc, _admin_ready))
        for role in ROLES:
            if role.sidecar:
                pn = self.probes[role.name]
                boot = envoy.probe_sidecar(
                    self.mesh.upstreams, self.vips, self.certs, self.mesh.trust_domain
                )
                proc = self._envoy(binary, confdir, pn.netns, boot)
                self.probe_envoy = proc
                waits.append((pn.netns, proc, _admin_ready))
                agent = self._agent(pn.netns)
                waits.append((pn.netns, agent, _listening("127.0.0.1", AGENT_PORT)))
        for ident in self.mesh.extra_probes:
            cert = self.certs.extra_probes[ident]
            self.extra_probes[ident] = self.add_probe_pod(sidecar=True, cert=cert)
        deadline = time.monotonic() + self.ready_timeout
        for ns, proc, ready in waits:
            while not in_netns(ns, ready):
                self.supervisor.check_alive()
                if time.monotonic() > deadline:
                    raise LabError(f"{proc.name} not ready in time; log: {proc.log}")
                time.sleep(0.02)
        self.ready_seconds = time.monotonic() - t0

    def _envoy(self, binary: str, confdir: Path, ns: str, boot: dict[str, object]) -> Managed:
        path = confdir / f"{ns}.json"
        path.write_text(json.dumps(boot, separators=(",", ":")), encoding="utf-8")
        argv = [binary, "-c", str(path), "--concurrency", "1", "--disable-hot-restart"]
        argv += ["--log-level", "warning"]
        proc = self.supervisor.start(
            f"envoy-{ns}", netns_argv(ns, argv, uid=capture.PROXY_UID), env=_clean_env()
        )
        self.envoy_procs.append(proc)
        return proc

    def add_probe_pod(self, sidecar: bool, cert: CertFiles | None = None) -> PodNet:
        """One more probe pod, up and ready: what a kubelet starts for each pod of a
        probe Job (each with its own sidecar, quit by its own probe). Thread-safe."""
        assert self.certs is not None
        with self._lock:
            index = self._next_index
            self._next_index += 1
        ip = probe_ip(index - len(self.mesh.pods))
        name = f"mtlsprobe-pod-{index}"
        pn = self.net.add_pod(index, ip, name, hosts_file((ip, name), self.services))
        if sidecar:
            capture.install(pn.netns)
            boot = envoy.probe_sidecar(
                self.mesh.upstreams, self.vips, self.certs, self.mesh.trust_domain, cert
            )
            proc = self._envoy(envoy_path(), self.net.share / "envoy", pn.netns, boot)
            agent = self._agent(pn.netns)
            deadline = time.monotonic() + self.ready_timeout
            for p, ready in ((proc, _admin_ready), (agent, _listening("127.0.0.1", AGENT_PORT))):
                while not in_netns(pn.netns, ready):
                    if not p.alive() or time.monotonic() > deadline:
                        raise LabError(f"{p.name} not ready; log: {p.log}")
                    time.sleep(0.02)
        return pn

    def _agent(self, ns: str) -> Managed:
        """pilot-agent's 15020 (the probe's ``--quit-sidecar`` target), as UID 1337."""
        argv = [sys.executable, "-m", "jobs.lab.netns.agent", str(envoy.ADMIN_PORT)]
        argv.append(str(AGENT_PORT))
        return self.supervisor.start(
            f"agent-{ns}", netns_argv(ns, argv, uid=capture.PROXY_UID), env=_clean_env()
        )

    def publish(self, src: Path, name: str) -> Path:
        """A copy of ``src`` the probe's user can read (a pod's mounted volume)."""
        d = self.net.share / "volumes"
        d.mkdir(mode=0o755, exist_ok=True)
        dst = d / name
        shutil.copyfile(src, dst)
        dst.chmod(0o644)
        return dst

    def exec_in(
        self, pod: PodNet, argv: Sequence[str], env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``pod`` as the probe's user (UID 65532, as the Job spec says)
        with only ``env`` (a container's environment): its output and exit code."""
        return subprocess.run(
            netns_argv(pod.netns, argv, uid=RUN_AS),
            env={**_clean_env(), **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run_probes(
        self,
        build: LabBuild,
        checks: Sequence[str],
        settings: Settings,
        stop: threading.Event | None = None,
        *,
        native_sidecar: bool = False,
        wire_blind: bool = False,
    ) -> list[Result]:
        """Both probe pods at once, as the two Jobs of a run; their results in ``checks``
        order, with an error for whatever a probe owed and did not report. ``wire`` (when
        in ``checks``) runs first, alone (``_run_wire``); ``wire_blind`` points its capture
        at a pod the calls never cross (the negative test of the capture itself)."""
        assert self.certs is not None
        pdir = self.net.share / "probe"
        pdir.mkdir(mode=0o755, exist_ok=True)
        root = pdir / "root-cert.pem"
        shutil.copyfile(self.certs.root, root)
        root.chmod(0o644)
        # No sidecarProxy, no sidecarAdmin: the probe finds its sidecar as in a pod.
        targets = replace(
            build.targets,
            root_cert_file=root,
            source=Source(identity=self.mesh.probe_identity),
        )
        path = pdir / "targets.yaml"
        write_targets(targets, path)
        path.chmod(0o644)
        # The record of what the probes were given (the shared copy goes with the lab).
        kept_root = self.workdir / "root-cert.pem"
        shutil.copyfile(self.certs.root, kept_root)
        write_targets(replace(targets, root_cert_file=kept_root), self.workdir / "targets.yaml")
        spec = RunSpec(
            run_id="lab",
            image="lab",
            timeout=settings.timeout,
            concurrency=settings.concurrency,
            min_remaining=settings.min_remaining,
            max_lifetime=settings.max_lifetime,
            native_sidecar=native_sidecar,
        )
        # As ``check`` does: authz joins when the targets file has cases.
        authz = AUTHZ in checks and any(t.authz for t in targets.targets)
        others = frozenset(self.extra_probes) if authz else frozenset()
        results: list[Result] = []
        if WIRE in checks:
            results += self._run_wire(path, targets, spec, wire_blind, stop)
        pods: list[tuple[ProbePod, Path]] = []
        for role in ROLES:
            mine = tuple(c for c in role.checks if c in checks)
            if role.sidecar and authz:
                mine += (AUTHZ,)
            if mine:
                pods.append((ProbePod(role, self.probes[role.name], mine, None, others), path))
        for k, (ident, pn) in enumerate(self.extra_probes.items() if authz else ()):
            # The same targets, called as another identity (its own sidecar's certificate).
            theirs = replace(targets, source=Source(identity=ident), controls=())
            tpath = pdir / f"targets-{k}.yaml"
            write_targets(theirs, tpath)
            tpath.chmod(0o644)
            role = Role(f"authz-{k}", (AUTHZ,), sidecar=True)
            pods.append((ProbePod(role, pn, (AUTHZ,), ident), tpath))
        started: list[tuple[ProbePod, Managed]] = []
        for pod, tpath in pods:
            args = probe_args(pod.role, pod.checks, spec, shards=1)
            args[args.index("-f") + 1] = str(tpath)
            argv = netns_argv(pod.net.netns, [sys.executable, "-m", "jobs.cli.main", *args], RUN_AS)
            proc = self.supervisor.start(f"probe-{pod.role.name}", argv, env=_clean_env())
            started.append((pod, proc))
        for pod, proc in started:
            results += _collect(pod, proc, targets, stop)
        order = {c: i for i, c in enumerate(checks)}
        return sorted(results, key=lambda r: order.get(r.check, len(order)))

    def _run_wire(
        self,
        path: Path,
        targets: TargetsFile,
        spec: RunSpec,
        blind: bool,
        stop: threading.Event | None,
    ) -> list[Result]:
        """``check --checks wire`` in the sidecar probe's pod, capturing on the pod's own
        veth: Envoy's upstream connections and the plaintext control call all cross it.

        It runs before the other probes so that no other probe's plaintext to the same
        endpoints is in the capture, and leaves the sidecar up for them (no
        ``--quit-sidecar``). It runs as root, the lab's stand-in for a container with
        NET_RAW: iptables still sends its calls to Envoy (only UID 1337 is exempt).
        ``blind``: the capture is on the plain probe pod's veth, idle at this point, which
        cannot see the calls; every verdict must then be ``error``."""
        me = self.probes["sidecar"]
        role = Role(WIRE, (WIRE,), sidecar=True)
        args = [a for a in probe_args(role, (WIRE,), spec, shards=1) if a != "--quit-sidecar"]
        args[args.index("-f") + 1] = str(path)
        args += ["--wire-interface", POD_IF]
        if blind:
            args += ["--wire-netns", self.probes["plain"].netns]
        argv = netns_argv(me.netns, [sys.executable, "-m", "jobs.cli.main", *args])
        proc = self.supervisor.start(f"probe-{WIRE}", argv, env=_clean_env())
        return _collect(ProbePod(role, me, (WIRE,)), proc, targets, stop)

    def sidecar_stats(self) -> dict[str, int]:
        """The probe sidecar's outbound counters (empty when it has quit)."""

        def read() -> dict[str, int]:
            url = f"http://127.0.0.1:{envoy.ADMIN_PORT}/stats?filter=outbound|listener"
            try:
                with _DIRECT.open(url, timeout=2.0) as resp:
                    text = resp.read().decode("utf-8", "replace")
            except (urllib.error.URLError, OSError):
                return {}
            out: dict[str, int] = {}
            for line in text.splitlines():
                name, _, value = line.partition(": ")
                if value.strip().isdigit():
                    out[name] = int(value)
            return out

        return in_netns(self.probes["sidecar"].netns, read)

    def captured(self) -> int:
        """Connections the probe pod's capture rules sent to its sidecar's 15001 (the nat
        table sees the first packet of each connection)."""
        text = capture.counters(self.probes["sidecar"].netns)
        return sum(
            int(line[1:].split(":", 1)[0])
            for line in text.splitlines()
            if line.startswith("[") and "-A ISTIO_REDIRECT" in line
        )


def _collect(
    pod: ProbePod, proc: Managed, targets: TargetsFile, stop: threading.Event | None
) -> list[Result]:
    end = time.monotonic() + PROBE_DEADLINE
    while proc.alive() and time.monotonic() < end and not (stop and stop.is_set()):
        time.sleep(0.05)
    cause = ""
    if proc.alive():
        proc.popen.kill()
        proc.popen.wait(5)
        cause = "probe stopped (deadline or interrupt)"
    text = proc.log.read_text(encoding="utf-8", errors="replace")
    parsed = parse_log(text)
    owed = expected_keys(targets, [(c, load_check(c).scope) for c in pod.checks if c != AUTHZ])
    if AUTHZ in pod.checks:  # owed for the targets with cases only
        with_cases = replace(targets, targets=tuple(t for t in targets.targets if t.authz))
        owed += expected_keys(with_cases, [(AUTHZ, load_check(AUTHZ).scope)])
    lacking = missing(owed, parsed.results)
    got = [r for r in parsed.results if pod.keeps(r)]
    if lacking:
        why = cause or f"probe {pod.role.name} exited {proc.popen.returncode} without this result"
        if parsed.last_text:
            why += f" (last log line: {parsed.last_text})"
        got += errors_for(lacking, why, "probe-incomplete")
    return got


def _listening(ip: str, port: int) -> Callable[[], bool]:
    import socket

    def probe() -> bool:
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return True
        except OSError:
            return False

    return probe


def _admin_ready() -> bool:
    try:
        with _DIRECT.open(f"http://127.0.0.1:{envoy.ADMIN_PORT}/ready", timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _clean_env() -> dict[str, str]:
    """A pod's environment, not the caller's: no proxy variables, no user settings."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


def _chown_tree(path: Path, uid: int) -> None:
    os.chown(path, uid, uid)
    for p in path.rglob("*"):
        os.chown(p, uid, uid)


def run_scenario_netns(
    scenario: Scenario,
    workdir: Path,
    *,
    require: Sequence[str],
    checks: Sequence[str],
    settings: Settings,
    stop: threading.Event | None = None,
    on_ready: Callable[[NetnsLab, NetnsRun], None] | None = None,
    native_sidecar: bool = False,
    prefix: str | None = None,
    wire_blind: bool = False,
) -> NetnsRun:
    """``run_scenario`` with pods as namespaces (``mtlsprobe lab --netns``)."""
    preflight()
    built = build_lab(scenario, PodAddresses(), require)
    workdir.mkdir(parents=True, exist_ok=True)
    with NetnsLab(built.mesh, workdir, prefix=prefix) as lab:
        run = NetnsRun(scenario, built, workdir, workdir / "targets.yaml")
        run.ready_seconds = lab.ready_seconds
        run.envoys = len(lab.envoy_procs)
        run.pids = [p.pid for p in lab.supervisor.procs]
        if on_ready is not None:
            on_ready(lab, run)
        t0 = time.monotonic()
        results = lab.run_probes(
            built, checks, settings, stop, native_sidecar=native_sidecar, wire_blind=wire_blind
        )
        run.check_seconds = time.monotonic() - t0
        run.captured = lab.captured()
        run.sidecar_stats = lab.sidecar_stats()
        if lab.probe_envoy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                lab.probe_envoy.popen.wait(timeout=0 if native_sidecar else 5)
            run.sidecar_quit = not lab.probe_envoy.alive()
    run.results = [*built.findings, *results]
    if scenario.judged:
        run.mismatches = judge(asked(scenario, checks), run.results)
    return run


def asked(scenario: Scenario, checks: Sequence[str]) -> Scenario:
    """``scenario`` without its expectations of opt-in checks that were not run (``wire``
    runs only when asked): they are not owed."""
    keep = tuple(e for e in scenario.expect if e.check not in OPT_IN or e.check in checks)
    return replace(scenario, expect=keep)


def down(workdir: Path) -> tuple[int, list[str]]:
    """``mtlsprobe lab --down`` for a namespace lab: its processes, then its network.
    Returns (processes stopped, objects that could not be removed)."""
    state = NetState.load(workdir)
    stopped = 0
    if (workdir / "pids").exists():
        stopped = len(stop_pids_file(workdir))
    if state is None:
        return stopped, []
    left = teardown(state)
    if not left:
        (workdir / STATE_FILE).unlink(missing_ok=True)
    return stopped, left
