"""``run --checks wire`` for real: the fake API server serves a namespace lab's objects,
its kubelet starts each probe pod in a lab network namespace (the sidecar pod with its
own Envoy behind Istio's capture rules), and a real ``mtlsprobe wire-capture --repeat
--overlap`` runs as the node capture agent of that pod's "node", capturing on the pod's
veth (host end); its stdout is the agent pod's log the fake serves. So the markers, the
flows, the windows and the verdicts are those of real packets: ``healthy`` passes every
HTTP and tcp edge, ``tls-off`` fails the edge a DestinationRule sends in plaintext,
quoting the marker. Root only: skipped loudly otherwise.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from jobs.cli import main as cli
from jobs.lab.build import build_lab
from jobs.lab.netns.lab import NetnsLab
from jobs.lab.netns.net import PodAddresses, PodNet, leftovers
from jobs.lab.scenarios import builtin
from jobs.launch.cluster import WIRE_NS
from tests import kubebuild as kb
from tests.fakekube_jobs import JobKube
from tests.netnscase import WHY_NOT
from tests.wireagent import DAEMONSET, agent_pod, install_daemonset

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.timeout(300),
    pytest.mark.skipif(WHY_NOT is not None, reason=f"SKIPPED LOUDLY: {WHY_NOT}"),
]

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LabKube(JobKube):
    """JobKube whose pods get the lab pod's IP and a node of their own, and whose capture
    agents' logs are the stdout files of real ``wire-capture`` processes."""

    placed: dict[str, tuple[PodNet, str]] = field(default_factory=dict)  # pod -> (net, node)
    agent_logs: dict[str, Path] = field(default_factory=dict)  # agent pod -> its stdout
    current: threading.local = field(default_factory=threading.local)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.serve(DAEMONSET)

    def _run_probe(self, pod: dict[str, Any], files: dict[str, Path], index: int) -> Any:
        self.current.name = pod["metadata"]["name"]  # the kubelet's thread: for the runner
        return super()._run_probe(pod, files, index)

    def _set_status(self, pod: dict[str, Any], status: dict[str, Any]) -> bool:
        md = pod["metadata"]
        where = self.placed.get(md["name"])
        if where is not None:
            status = {**status, "podIP": where[0].ip}
            with self._lock:
                cur = self.store[("", "pods")].get(md["namespace"], {}).get(md["name"])
                if cur is not None:
                    cur["spec"]["nodeName"] = where[1]
        return super()._set_status(pod, status)

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, Any]:
        seg = urlsplit(raw_path).path.split("/")
        if method == "GET" and len(seg) == 8 and seg[4] == WIRE_NS and seg[7] == "log":
            super().handle(method, raw_path, body)  # recorded, as any call
            out = self.agent_logs.get(seg[6])
            if out is None:
                return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}
            return 200, out.read_text(errors="replace")
        return super().handle(method, raw_path, body)


class Kubelet:
    """One lab namespace per probe pod; a sidecar pod that makes wire calls gets a real
    capture agent on its veth first, registered as the agent pod of its node."""

    def __init__(
        self, lab: NetnsLab, kube: LabKube, ds_uid: str, scratch: Path, blind: bool
    ) -> None:
        self.lab, self.kube, self.ds_uid, self.scratch = lab, kube, ds_uid, scratch
        self.blind = blind  # the agent on an idle pod's veth: the calls never cross it
        self.agents: list[subprocess.Popen[str]] = []
        self.logs: list[str] = []

    def __call__(self, args: list[str], env: dict[str, str], sidecar: bool) -> tuple[str, int]:
        pod = self.lab.add_probe_pod(sidecar)
        node = f"node-{pod.netns}"
        self.kube.placed[self.kube.current.name] = (pod, node)
        if "--wire-claim" in args:
            self._agent(pod, node)
        i = args.index("-f") + 1
        doc = yaml.safe_load(Path(args[i]).read_text())
        if doc.get("rootCertFile"):
            root = self.lab.publish(Path(doc["rootCertFile"]), f"{pod.netns}-root.pem")
            doc["rootCertFile"] = str(root)
        local = self.scratch / f"{pod.netns}.yaml"
        local.write_text(yaml.safe_dump(doc))
        args = [*args[:i], str(self.lab.publish(local, f"{pod.netns}.yaml")), *args[i + 1 :]]
        proc = self.lab.exec_in(pod, [sys.executable, "-m", "jobs.cli.main", *args], env, 120)
        self.logs.append(proc.stdout + proc.stderr)
        return proc.stdout + proc.stderr, proc.returncode

    def _agent(self, pod: PodNet, node: str) -> None:
        """``wire-capture`` on the pod's veth (host end, the node's side; ``blind``: an idle
        pod's), 12 s windows overlapping by 6 s; the pod starts once its first window is
        open."""
        name = f"mtlsprobe-wire-{secrets.token_hex(3)}"
        out = self.scratch / f"{name}.jsonl"
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "jobs.cli.main", "wire-capture"),
                *("-i", self.lab.add_probe_pod(False).link if self.blind else pod.link),
                *("--seconds", "12", "--overlap", "6", "--repeat"),
            ],
            stdout=out.open("w"),
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.agents.append(proc)
        assert proc.stderr is not None
        assert "capturing on" in proc.stderr.readline()
        self.kube.agent_logs[name] = out
        self.kube.add(agent_pod(name, node, self.ds_uid))

    def stop(self) -> None:
        for p in self.agents:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


# What the scenario's own expectations say of ``wire`` (the rest of its edges pass).
FAILS = {"tls-off": {"legacy/reports:8080": "fail"}}


@pytest.fixture
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[NetnsLab, Any, str]]:
    prefix = "mpw" + secrets.token_hex(2)
    built = build_lab(builtin(request.param), PodAddresses(), [])
    try:
        with NetnsLab(built.mesh, tmp_path / "lab", prefix=prefix) as up:
            yield up, built, request.param
    finally:
        assert leftovers(prefix) == []


def _run(
    up: NetnsLab, built: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], blind: bool
) -> tuple[int, dict[str, dict[str, Any]], dict[str, Any]]:
    """``run --checks wire`` over the lab; (exit code, judged wire results, all shown)."""
    snap = built.snapshot
    assert snap is not None and up.certs is not None
    root = up.certs.root.read_text()
    kube = LabKube()
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
    kubelet = Kubelet(up, kube, install_daemonset(kube), tmp_path, blind)
    kube.pod_runner = kubelet
    argv = ["run", "--kubeconfig", str(tmp_path / "kubeconfig"), "--checks", "wire"]
    argv += ["--deadline", "120", "--wire-wait", "60", "--poll-interval", "2", "-o", "json"]
    try:
        with kube:
            (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kube.kubeconfig()))
            code = cli.main(argv)
    finally:
        kubelet.stop()
    out, err = capsys.readouterr()
    wire = {r["target"]: r for r in json.loads(out)["results"] if r["check"] == "wire"}
    judged = {t: r for t, r in wire.items() if r["verdict"] != "skip"}
    shown = {t: (r["verdict"], r["reason"]) for t, r in wire.items()}
    assert len(kubelet.agents) == 1 and judged, (shown, err, kubelet.logs)
    for r in judged.values():
        assert r["evidence"]["captureAgent"].startswith(f"capture agent {WIRE_NS}/")
    return code, judged, shown


@pytest.mark.parametrize("lab", ["healthy", "tls-off"], indirect=True)
def test_run_judges_wire_from_a_real_capture_agent(
    lab: tuple[NetnsLab, Any, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    up, built, scenario = lab
    expect = {e.target: e.verdict.value for e in builtin(scenario).expect if e.check == "wire"}
    assert expect == FAILS.get(scenario, {})
    code, judged, shown = _run(up, built, tmp_path, capsys, blind=False)
    want = {t: FAILS.get(scenario, {}).get(t, "pass") for t in judged}
    assert {t: r["verdict"] for t, r in judged.items()} == want, shown
    for r in judged.values():
        if r["verdict"] == "fail":  # the marker quoted, on the flow from the probe pod
            assert r["evidence"]["marker"] in r["reason"] and "in cleartext" in r["reason"]
    assert code == (1 if "fail" in want.values() else 0), shown


@pytest.mark.parametrize("lab", ["tls-off"], indirect=True)
def test_an_agent_capturing_where_the_calls_do_not_pass_is_error_for_all(
    lab: tuple[NetnsLab, Any, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent on the veth of an idle pod (a capture on the wrong interface): it sees no
    flow of the probe pod, so even the edge that is plaintext gets no verdict."""
    up, built, _ = lab
    code, judged, shown = _run(up, built, tmp_path, capsys, blind=True)
    assert {r["verdict"] for r in judged.values()} == {"error"}, shown
    assert all(r["reason"].startswith("the capture is blind") for r in judged.values()), shown
    assert code == 2
