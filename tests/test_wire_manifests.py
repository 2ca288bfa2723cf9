"""k8s/overlays/wire: renders, validates strictly, and is exactly as privileged as the
capture needs (hostNetwork, CAP_NET_RAW, nothing more); every other overlay's pods stay
without host namespaces or added capabilities (the wire agent is the only exception)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from jobs.cli.main import build_parser
from jobs.launch.cluster import WIRE_API_CALLS, WIRE_DAEMONSET, WIRE_NS
from tests.k8srender import (
    K8S,
    K8S_VERSIONS,
    POD_KINDS,
    allowed,
    pod_spec,
    render,
    rules_by_subject,
)

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl (for `kubectl kustomize`) is not installed: manifests NOT verified",
)

WIRE = "overlays/wire"


@pytest.fixture(scope="module")
def wire() -> list[dict[str, Any]]:
    return render(WIRE)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_validates_strictly(wire: list[dict[str, Any]], version: str) -> None:
    import kubernetes_validate

    for obj in wire:
        kubernetes_validate.validate(obj, version, strict=True)


def test_own_namespace_labelled_privileged(wire: list[dict[str, Any]]) -> None:
    (ns,) = by_kind(wire, "Namespace")
    assert ns["metadata"]["name"] == "mtlsprobe-wire"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for obj in wire:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "mtlsprobe-wire"


def test_daemonset_has_host_network_and_only_net_raw(wire: list[dict[str, Any]]) -> None:
    (ds,) = by_kind(wire, "DaemonSet")
    spec = pod_spec(ds)
    assert spec["hostNetwork"] is True
    assert not spec.get("hostPID") and not spec.get("hostIPC")
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("volumes")
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert not any("hostPort" in p for p in c.get("ports", []))
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]
    args = [str(a) for a in c["args"]]
    ns = build_parser(args).parse_args(args)
    assert ns.command == "wire-capture" and ns.repeat and ns.pcap is None


def test_the_wire_agent_is_the_only_non_restricted_workload() -> None:
    others = [d.name for d in (K8S / "overlays").iterdir() if d.is_dir() and d.name != "wire"]
    assert others
    for name in ["base", *(f"overlays/{o}" for o in others)]:
        for obj in render(name):
            if obj["kind"] not in POD_KINDS:
                continue
            spec = pod_spec(obj)
            where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
            assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
            for c in spec["containers"] + spec.get("initContainers", []):
                assert not c.get("securityContext", {}).get("capabilities", {}).get("add"), where
        for obj in render(name):
            if obj["kind"] == "Namespace":
                level = obj["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce")
                assert level in (None, "restricted", "baseline"), name


def test_the_overlay_grants_run_exactly_its_wire_reads(wire: list[dict[str, Any]]) -> None:
    """`run --checks wire` reads the DaemonSet, its pods and their logs: the overlay grants
    the orchestrator exactly these, read only, in its own namespace; the base grants none
    of them there (no overlay: run gets 403/404 and reports `wire: skip`)."""
    (ds,) = by_kind(wire, "DaemonSet")
    assert (ds["metadata"]["name"], ds["metadata"]["namespace"]) == (WIRE_DAEMONSET, WIRE_NS)
    rules = rules_by_subject(wire)["mtlsprobe-orchestrator"]
    granted = {
        (verb, group, resource, scope)
        for scope, rule in rules
        for group in rule.get("apiGroups", [""])
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == set(WIRE_API_CALLS)  # no more, no less
    for verb, group, resource, ns in WIRE_API_CALLS:
        name = WIRE_DAEMONSET if resource == "daemonsets" else None
        assert allowed(rules, verb, group, resource, ns, name)
        assert not allowed(rules, verb, group, resource, "other-ns", name)
    assert not allowed(rules, "get", "apps", "daemonsets", WIRE_NS, "another")
    binding = next(o for o in wire if o["kind"] == "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mtlsprobe-orchestrator", "namespace": "mtlsprobe"}
    ]
    base = rules_by_subject(render("base"))["mtlsprobe-orchestrator"]
    assert not allowed(base, "get", "", "pods/log", WIRE_NS, None)
