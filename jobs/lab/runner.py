"""One scenario, end to end: build the mesh from its YAML, bring it up, run the
checks through the real engine, and judge the results against the scenario."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from jobs.lab.addresses import acquire_slot
from jobs.lab.build import LabBuild, build_lab
from jobs.lab.runtime import Lab, ServeArgv, default_serve_argv
from jobs.lab.scenarios import Mismatch, Scenario, judge
from probe.checks import load_check
from probe.checks.base import RunContext, Settings
from probe.engine import run_checks
from probe.model import Source, TargetsFile
from probe.results import Result


@dataclass
class LabRun:
    scenario: Scenario
    build: LabBuild
    workdir: Path
    targets_path: Path
    results: list[Result] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    ready_seconds: float = 0.0
    check_seconds: float = 0.0
    pids: list[int] = field(default_factory=list)
    envoys: int = 0


def write_targets(targets: TargetsFile, path: Path) -> None:
    path.write_text(yaml.safe_dump(targets.to_dict(), sort_keys=False), encoding="utf-8")


@dataclass(frozen=True)
class RunningLab:
    """A mesh that is up: its targets file (the ``mtlsprobe check`` contract) and more."""

    lab: Lab
    build: LabBuild
    targets: TargetsFile
    targets_path: Path


@contextmanager
def running(
    scenario: Scenario,
    workdir: Path,
    *,
    require: Sequence[str] = (),
    keep: bool = False,
    envoys: int | None = None,
    ready_timeout: float = 60.0,
    serve_argv: ServeArgv = default_serve_argv,
) -> Iterator[RunningLab]:
    """Bring ``scenario`` up and yield it; torn down on exit (unless ``keep``).
    For tests of other modules that want a real mesh to probe."""
    slot = acquire_slot()
    try:
        built = build_lab(scenario, slot, require)
    except BaseException:
        slot.release()
        raise
    workdir.mkdir(parents=True, exist_ok=True)
    with Lab(
        built.mesh,
        slot,
        workdir,
        keep=keep,
        envoys=envoys,
        ready_timeout=ready_timeout,
        serve_argv=serve_argv,
    ) as lab:
        targets = replace(
            built.targets,
            root_cert_file=lab.root_cert,
            source=Source(
                identity=built.mesh.probe_identity,
                sidecar_proxy=lab.proxy_url,
                sidecar_admin=lab.admin_url,
            ),
        )
        path = workdir / "targets.yaml"
        write_targets(targets, path)
        yield RunningLab(lab, built, targets, path)


def _other_probes(
    lab: Lab, targets: TargetsFile, settings: Settings, stop: threading.Event | None
) -> list[Result]:
    """The authz cases of the lab's further probe identities, each run by its own probe
    sidecar; cases left to another probe (skips) are reported by that probe only."""
    out: list[Result] = []
    for identity, proxy, admin in lab.extra_probes():
        mine = replace(
            targets,
            source=Source(identity=identity, sidecar_proxy=proxy, sidecar_admin=admin),
            controls=(),
        )
        ctx = RunContext(mine, settings)
        try:
            rs = run_checks([load_check("authz")], ctx, stop=stop)
        finally:
            ctx.close()
        out += [r for r in rs if r.check == "authz" and r.source == identity]
    return out


def run_scenario(
    scenario: Scenario,
    workdir: Path,
    *,
    require: Sequence[str],
    checks: Sequence[str],
    settings: Settings,
    keep: bool = False,
    envoys: int | None = None,
    ready_timeout: float = 60.0,
    stop: threading.Event | None = None,
    serve_argv: ServeArgv = default_serve_argv,
    on_ready: Callable[[Lab, LabRun], None] | None = None,
) -> LabRun:
    with running(
        scenario,
        workdir,
        require=require,
        keep=keep,
        envoys=envoys,
        ready_timeout=ready_timeout,
        serve_argv=serve_argv,
    ) as up:
        lab = up.lab
        run = LabRun(scenario, up.build, workdir, up.targets_path)
        run.ready_seconds = lab.ready_seconds
        run.envoys = len(lab.envoy_procs)
        run.pids = lab.pids()
        if on_ready is not None:
            on_ready(lab, run)
        ctx = RunContext(up.targets, settings)
        t0 = time.monotonic()
        try:
            results = run_checks([load_check(n) for n in checks], ctx, stop=stop)
        finally:
            ctx.close()
        if "authz" in checks and lab.extra_probes():
            others = {ident for ident, _, _ in lab.extra_probes()}
            # Their cases are reported by their own probes, not as this one's skips.
            results = [r for r in results if not (r.check == "authz" and r.source in others)]
            results += _other_probes(lab, up.targets, settings, stop)
        run.check_seconds = time.monotonic() - t0
    run.results = [*up.build.findings, *results]
    if scenario.judged:
        run.mismatches = judge(scenario, run.results)
    return run
