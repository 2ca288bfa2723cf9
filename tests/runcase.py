"""``mtlsprobe run`` against the fake API server with the simulated Job controller and
kubelet (tests/fakekube_jobs.py): the cluster the run tests share and how they call
the command. The fixture that builds it is ``env`` in tests/conftest.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jobs.cli import main as cli
from probe.pki import CertificateAuthority
from tests import kubebuild as kb
from tests.fakekube_jobs import JobKube

PLAIN = "plaintext,peer-cert,foreign-client"


@dataclass
class Env:
    kube: JobKube
    kubeconfig: Path
    echo_port: int
    tmp: Path


def echo_cluster(
    kube: JobKube, port: int, endpoints: int = 1, ca: CertificateAuthority | None = None
) -> None:
    """Namespaces mtlsprobe, ns-a and ns-b, the mesh root where run and the pods read
    it, and ns-a/echo on ``endpoints`` sidecar-less pods at 127.0.0.1, .2, ..."""
    root = (ca or CertificateAuthority.create_root()).root_pem().decode()
    kube.add_all(
        [
            kb.namespace("mtlsprobe"),
            kb.namespace("ns-a"),
            kb.namespace("ns-b"),
            # Trusted only from istiod's namespace (jobs.plan.meshroot); the pods mount their own.
            kb.configmap("istio-ca-root-cert", "istio-system", {"root-cert.pem": root}),
            kb.configmap("istio-ca-root-cert", "mtlsprobe", {"root-cert.pem": root}),
            kb.configmap("istio-ca-root-cert", "ns-a", {"root-cert.pem": root}),
            *kb.echo_service(port, [f"127.0.0.{1 + i}" for i in range(endpoints)]),
        ]
    )


def run(env: Env, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any, str]:
    argv = ["run", "--kubeconfig", str(env.kubeconfig), "-n", "ns-a", "--poll-interval", "5"]
    code = cli.main([*argv, "-o", "json", *extra])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def probe_results(doc: Any) -> list[dict[str, Any]]:
    return [r for r in doc["results"] if r["check"] != "policy"]
