"""The mesh check on tcp ports, on real Envoy: a round trip through the probe's
sidecar passes; a DestinationRule DISABLE against a STRICT tcp server fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.lab.runner import running
from jobs.lab.scenarios import from_files
from probe.checks import load_check
from probe.checks.base import RunContext, Settings
from probe.engine import run_checks
from probe.results import Verdict

pytestmark = pytest.mark.envoy

MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: data, labels: {istio-injection: enabled}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: data}
spec: {mtls: {mode: STRICT}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %(name)s, namespace: data}
spec:
  replicas: 1
  selector: {matchLabels: {app: %(name)s}}
  template:
    metadata: {labels: {app: %(name)s, app.kubernetes.io/name: mtlsprobe-echo}}
    spec:
      serviceAccountName: %(name)s
      containers: [{name: db, image: x, ports: [{containerPort: 5432, name: tcp-pg}]}]
---
apiVersion: v1
kind: Service
metadata: {name: %(name)s, namespace: data}
spec:
  selector: {app: %(name)s}
  ports: [{name: tcp-pg, port: 5432}]
"""

DR = """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pg-plain, namespace: data}
spec:
  host: pg-plain.data.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
"""


def test_tcp_mesh_round_trip_and_disable_against_strict(tmp_path: Path) -> None:
    path = tmp_path / "tcp.yaml"
    path.write_text(
        MANIFEST % {"name": "pg"}
        + "---"
        + (MANIFEST % {"name": "pg-plain"}).split("---", 2)[2]
        + DR
    )
    with running(from_files([path]), tmp_path / "lab") as lab:
        ctx = RunContext(lab.targets, Settings(timeout=10))  # generous under load
        try:
            results = {r.target: r for r in run_checks([load_check("mesh")], ctx)}
        finally:
            ctx.close()
    ok = next(r for t, r in results.items() if t.startswith("data/pg:"))
    broken = next(r for t, r in results.items() if t.startswith("data/pg-plain:"))
    assert ok.verdict is Verdict.PASS, ok
    assert "came back through the sidecar" in ok.reason
    assert broken.verdict is Verdict.FAIL, broken
