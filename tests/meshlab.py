"""Scenarios for the mesh checks on the lab's real Envoy sidecars: a namespace ``data``
with injection and a namespace-wide PeerAuthentication, workloads on named ports, and
DestinationRules DISABLE that make the probe's sidecar send plaintext; the apps behind
the server sidecars (tests/reflect_apps.py); one run of the checks."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import yaml

from jobs.lab.runtime import App as LabApp
from probe.checks import load_check
from probe.checks.base import RunContext, Settings
from probe.engine import run_checks
from probe.model import TargetsFile
from probe.reflect import App
from probe.results import Result

HEAD = """
apiVersion: v1
kind: Namespace
metadata: {name: data, labels: {istio-injection: enabled}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: data}
spec: {mtls: {mode: %(mode)s}}
"""
PLAIN_DR = """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: %(name)s, namespace: data}
spec:
  host: %(name)s.data.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
"""


ECHO = {"app.kubernetes.io/name": "mtlsprobe-echo"}


def head(mode: str = "PERMISSIVE") -> str:
    return HEAD % {"mode": mode}


def workload(
    name: str,
    ports: Sequence[tuple[str, int, int]],
    *,
    labels: Mapping[str, str] = ECHO,
    namespace: str = "data",
) -> str:
    """A Deployment and its Service ``name`` (service account ``name``), ``ports`` as
    (port name, service port, container port); ``labels`` on the pod beside ``app``."""
    meta = {"name": name, "namespace": namespace}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **labels}},
                "spec": {
                    "serviceAccountName": name,
                    "containers": [
                        {
                            "name": "app",
                            "image": "x",
                            "ports": [{"containerPort": c, "name": n} for n, _, c in ports],
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": {"app": name},
            "ports": [
                {"name": n, "port": p, **({} if c == p else {"targetPort": c})} for n, p, c in ports
            ],
        },
    }
    return "\n---\n" + yaml.safe_dump(deployment) + "---\n" + yaml.safe_dump(service)


def manifest(
    tmp_path: Path,
    workloads: Sequence[tuple[str, int, str]],
    plain: Sequence[str],
    mode: str = "PERMISSIVE",
) -> Path:
    """``workloads`` as (name, port, port name) in ``data`` under ``mode``; the
    ``plain`` ones behind a DestinationRule DISABLE."""
    text = head(mode) + "".join(workload(n, [(pn, p, p)]) for n, p, pn in workloads)
    text += "".join(PLAIN_DR % {"name": n} for n in plain)
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    return path


def run(
    targets: TargetsFile,
    checks: Sequence[str] = ("mesh",),
    concurrency: int = 32,
    timeout: float = 3,
) -> dict[str, Result]:
    """``"<check> <target without port>"`` -> result, for ``checks`` only."""
    ctx = RunContext(targets, Settings(timeout=timeout, concurrency=concurrency))
    try:
        results = run_checks([load_check(c) for c in checks], ctx)
    finally:
        ctx.close()
    # the lab adds its own negative controls (check "control"); they are not judged here
    return {f"{r.check} {r.target.split(':')[0]}": r for r in results if r.check in checks}


def reflect_argv(
    style: App, *extra: str, real: bool = False
) -> Callable[[Sequence[LabApp]], list[str]]:
    """The lab's ``serve_argv``: tests/reflect_apps.py in ``style`` (plus ``extra``
    flags) on every app address; ``real`` serves the httpbin package itself."""

    def argv(apps: Sequence[LabApp]) -> list[str]:
        out = [sys.executable, "-m", "tests.reflect_apps", "--style", style.value, *extra]
        out += ["--real"] if real else []
        for a in apps:
            out += ["--listen" if a.http else "--tcp-listen", f"{a.ip}:{a.port}={a.name}"]
        return out

    return argv
