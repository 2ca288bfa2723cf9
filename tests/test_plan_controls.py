"""`mtlsprobe plan` finds the negative controls the shipped manifests deploy: the echo
without a sidecar in the probe's namespace (plaintext control) and an echo with a
sidecar (mesh control); ``-o yaml`` carries them to ``mtlsprobe check``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.cli.main import main as cli_main
from jobs.plan.manifests import snapshot_from_documents
from jobs.plan.objects import ClusterSnapshot, set_pod_ip
from jobs.plan.planner import Requirements, build_plan
from probe.model import ControlKind, Expect, load_targets
from probe.results import Verdict

K8S = Path(__file__).resolve().parent.parent / "k8s"


def _docs(path: Path, ns: str) -> list[dict[str, Any]]:
    """A component's objects placed in ``ns`` (what kustomize's namespace: does)."""
    out = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            doc["metadata"]["namespace"] = ns
            out.append(doc)
    return out


def _namespace(name: str, inject: bool) -> dict[str, Any]:
    labels = {"istio-injection": "enabled"} if inject else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


MESH_STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "istio-system"},
    "spec": {"mtls": {"mode": "STRICT"}},
}


def shipped(*, control: bool = True, echo: bool = True, inject_probe_ns: bool = False) -> list[Any]:
    docs: list[Any] = [MESH_STRICT, _namespace("mtlsprobe", inject_probe_ns)]
    if control:
        docs += _docs(K8S / "components" / "echo-control" / "control.yaml", "mtlsprobe")
    if echo:
        docs += [_namespace("echo-example", True)]
        docs += _docs(K8S / "components" / "echo" / "echo.yaml", "echo-example")
    return docs


def _snap(docs: list[Any]) -> ClusterSnapshot:
    snap = snapshot_from_documents([("test", d) for d in docs])
    for i, p in enumerate(snap.pods):
        set_pod_ip(p, f"10.0.0.{i + 2}")
        p.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
        p["status"]["phase"] = "Running"
    return snap


def test_shipped_control_and_echo_become_controls() -> None:
    plan = build_plan(_snap(shipped()), Requirements(strict=True, sidecar=True))
    tf = plan.targets_file
    kinds = {c.kind: c.target for c in tf.controls}
    plain = kinds[ControlKind.PLAINTEXT]
    assert plain.name == "mtlsprobe/mtlsprobe-echo-plain:80"
    assert plain.expect is Expect.NONE and plain.endpoints
    mesh = kinds[ControlKind.MESH]
    assert mesh.name == "echo-example/mtlsprobe-echo:80" and mesh.echo
    assert mesh.identity == "spiffe://cluster.local/ns/echo-example/sa/mtlsprobe-echo"
    # The product's own control is not a target: no compliance finding blames it.
    names = {t.name for t in tf.targets}
    assert plain.name not in names and mesh.name in names
    assert not [r for r in plan.findings if r.target == plain.name]
    # Its edges stay: they say how it is reached (plan -o json, the lab's listeners).
    assert any(e.target == plain.name and not e.pod.has_sidecar for e in plan.edges)
    assert not [r for r in plan.findings if r.target == "controls"]


def test_missing_controls_are_findings_that_say_what_is_not_ruled_out() -> None:
    plan = build_plan(_snap(shipped(control=False, echo=False)))
    assert plan.targets_file.controls == ()
    notes = [r for r in plan.findings if r.target == "controls"]
    assert [r.verdict for r in notes] == [Verdict.SKIP, Verdict.SKIP]
    assert "no plaintext control" in notes[0].reason and "NetworkPolicy" in notes[0].reason
    assert "no mesh control" in notes[1].reason


def test_an_injected_control_is_not_a_plaintext_control() -> None:
    docs = shipped(echo=False)
    for d in docs:  # someone removed the opt-out label and the namespace injects
        if d["kind"] == "Deployment":
            del d["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"]
    plan = build_plan(_snap([*docs[:1], _namespace("mtlsprobe", True), *docs[2:]]))
    assert plan.targets_file.controls == ()
    reasons = " ".join(r.reason for r in plan.findings if r.target == "controls")
    assert "has a sidecar or ztunnel" in reasons


def test_plan_yaml_carries_controls_to_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = _snap(shipped())  # pods with IPs, as a cluster lists them
    docs = [*snap.namespaces, *snap.peerauthentications, *snap.services, *snap.pods]
    manifests = tmp_path / "m.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    assert cli_main(["plan", "--from-manifests", str(manifests), "-o", "yaml"]) in (0, 2)
    out = capsys.readouterr().out
    targets = tmp_path / "targets.yaml"
    targets.write_text(out)
    loaded = load_targets(targets)
    assert {c.kind for c in loaded.controls} == {ControlKind.PLAINTEXT, ControlKind.MESH}
    assert cli_main(["plan", "--from-manifests", str(manifests)]) in (0, 2)
    assert "mtlsprobe/mtlsprobe-echo-plain:80 (control)" in capsys.readouterr().out
