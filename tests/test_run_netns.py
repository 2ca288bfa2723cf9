"""``mtlsprobe run`` end to end over real pod networking (issue #12, item 3).

The fake API server serves the ``healthy`` scenario's objects with the namespace lab's
pod IPs; its fake kubelet starts every probe pod as a process in a fresh lab network
namespace (each sidecar pod with its own Envoy behind Istio's capture rules), with the
projected targets ConfigMap as a file, ``JOB_COMPLETION_INDEX`` set and the output as
the pod log. So ``run`` plans, shards and launches as in a cluster, and its report
comes from real probes that ran in namespaces. Root only: skipped loudly otherwise.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.cli import main as cli
from jobs.lab.build import build_lab
from jobs.lab.netns.lab import NetnsLab
from jobs.lab.netns.net import PodAddresses, leftovers
from jobs.lab.scenarios import builtin
from tests import kubebuild as kb
from tests.fakekube_jobs import JobKube
from tests.netnscase import WHY_NOT

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.timeout(300),
    pytest.mark.skipif(WHY_NOT is not None, reason=f"SKIPPED LOUDLY: {WHY_NOT}"),
]


class NamespaceKubelet:
    """The fake kubelet's container runtime: one lab namespace per probe pod."""

    def __init__(self, lab: NetnsLab, scratch: Path) -> None:
        self.lab = lab
        self.scratch = scratch
        self.runs: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, args: list[str], env: dict[str, str], sidecar: bool) -> tuple[str, int]:
        pod = self.lab.add_probe_pod(sidecar)
        i = args.index("-f") + 1
        doc = yaml.safe_load(Path(args[i]).read_text())
        if doc.get("rootCertFile"):
            root = self.lab.publish(Path(doc["rootCertFile"]), f"{pod.netns}-root.pem")
            doc["rootCertFile"] = str(root)
        local = self.scratch / f"{pod.netns}.yaml"
        local.write_text(yaml.safe_dump(doc))
        args = [*args[:i], str(self.lab.publish(local, f"{pod.netns}.yaml")), *args[i + 1 :]]
        proc = self.lab.exec_in(pod, [sys.executable, "-m", "jobs.cli.main", *args], env, 120)
        with self._lock:
            self.runs.append(
                {
                    "netns": pod.netns,
                    "sidecar": sidecar,
                    "args": args,
                    "doc": doc,
                    "env": env,
                    "log": proc.stdout + proc.stderr,
                }
            )
        return proc.stdout + proc.stderr, proc.returncode


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[NetnsLab, Any]]:
    prefix = "mpr" + secrets.token_hex(2)
    built = build_lab(builtin("healthy"), PodAddresses(), [])
    try:
        with NetnsLab(built.mesh, tmp_path / "lab", prefix=prefix) as up:
            yield up, built
    finally:
        assert leftovers(prefix) == []


def test_run_reports_from_probes_that_ran_in_namespaces(
    lab: tuple[NetnsLab, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    up, built = lab
    snap = built.snapshot
    assert snap is not None and up.certs is not None
    root = up.certs.root.read_text()
    kubelet = NamespaceKubelet(up, tmp_path)
    kube = JobKube(pod_runner=kubelet)
    have = {n["metadata"]["name"] for n in snap.namespaces}
    kube.add_all(
        [
            *[kb.namespace(n) for n in ("istio-system", "mtlsprobe") if n not in have],
            *snap.namespaces,
            *snap.pods,
            *snap.services,
            *snap.peerauthentications,
            *snap.destinationrules,
            kb.configmap("istio-ca-root-cert", "istio-system", {"root-cert.pem": root}),
            kb.configmap("istio-ca-root-cert", "mtlsprobe", {"root-cert.pem": root}),
        ]
    )
    with kube:
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        code = cli.main(
            [
                "run",
                "--kubeconfig",
                str(cfg),
                "--shard-threshold",
                "3",
                "--deadline",
                "120",
                "--poll-interval",
                "2",
                "-o",
                "json",
            ]
        )
    out, err = capsys.readouterr()
    doc = json.loads(out)
    probe = [r for r in doc["results"] if r["check"] not in ("policy", "require-strict")]
    bad = [(r["check"], r["target"], r["verdict"], r["reason"]) for r in probe]
    assert code == 0, (err, [b for b in bad if b[2] not in ("pass", "skip")])
    assert {r["check"] for r in probe} >= {
        "mesh",
        "xfcc-spoof",
        "self",
        "plaintext",
        "peer-cert",
        "foreign-client",
    }
    assert all(r["verdict"] in ("pass", "skip") for r in probe), bad
    # Every probe pod ran in its own namespace; both roles were sharded.
    sidecar = [r for r in kubelet.runs if r["sidecar"]]
    plain = [r for r in kubelet.runs if not r["sidecar"]]
    assert len(sidecar) >= 2 and len(plain) >= 2, kubelet.runs
    assert len({r["netns"] for r in kubelet.runs}) == len(kubelet.runs)
    for r in kubelet.runs:
        assert "sidecarProxy" not in (r["doc"].get("source") or {})
        assert set(r["env"]) == {"JOB_COMPLETION_INDEX"}
    for r in sidecar:
        assert "--wait-for-sidecar" in r["args"] and "--quit-sidecar" in r["args"]
        assert "could not stop the sidecar" not in r["log"]  # its Envoy took the quit
    # Mesh results carry the pod that produced them.
    mesh = [r for r in probe if r["check"] == "mesh"]
    assert mesh and all(r["evidence"].get("probePod") for r in mesh)
    assert all(r["verdict"] == "pass" for r in mesh)
    assert [r["verdict"] for r in probe if r["check"] == "self"].count("pass") == len(sidecar)
