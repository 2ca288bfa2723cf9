"""Plans from unusual and hostile clusters (issue 17 rules 1, 2 and 4).

Every case is planned twice - from YAML (``load_manifests``, the ``--from-manifests``
path) and from the same objects served by a real localhost API server
(tests/fakekube.py, the live path) - and both plans must agree. Each case names the
Kubernetes or Istio behaviour it encodes. Every emitted targets file is read back by
``probe.model.load_targets``, the loader ``mtlsprobe check`` uses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.cli.main import main as cli_main
from jobs.plan.manifests import load_manifests
from jobs.plan.planner import build_plan
from probe.model import Expect, load_targets
from probe.results import Verdict
from tests import kubebuild as kb
from tests.plancase import REQ, Both, Obj, a_pod, base, round_trip

# ---- builders for the odd objects ---------------------------------------------------------------


def slice_(
    name: str,
    ns: str,
    service: str,
    endpoints: list[Obj],
    ports: list[tuple[str, int]] | None = None,
    address_type: str = "IPv4",
) -> Obj:
    ports = ports or [("http", 8080)]
    return kb.slice_of(name, ns, service, endpoints, ports, address_type=address_type, created=None)


def ep(address: str, pod: str | None = None, ns: str | None = None, kind: str = "Pod") -> Obj:
    out: Obj = {"addresses": [address], "conditions": {"ready": True}}
    if pod is not None:
        out["targetRef"] = {"kind": kind, "name": pod, **({"namespace": ns} if ns else {})}
    return out


def with_status(obj: Obj, **status: Any) -> Obj:
    obj = copy.deepcopy(obj)
    obj["status"].update(status)
    return obj


def with_spec(obj: Obj, **fields: Any) -> Obj:
    obj = copy.deepcopy(obj)
    obj["spec"].update(fields)
    return obj


def svc(name: str = "a", selector: dict[str, str] | None = None, ns: str = "shop") -> Obj:
    return kb.service(
        name, ns, {"app": name} if selector is None else selector, [kb.sport(80, 8080)]
    )


# ---- both paths ------------------------------------------------------------------------------


# ---- rule 1: only mesh workloads are probed ----------------------------------------------------


def test_textbook_service_is_planned(plan_both: Callable[..., Both]) -> None:
    """Kubernetes: the EndpointSlice controller lists each ready selected pod by its
    podIP with a targetRef to it; Istio: identity is spiffe://<td>/ns/<ns>/sa/<sa>."""
    b = plan_both(
        [
            *base(),
            a_pod("a-0", "10.0.0.1"),
            a_pod("a-1", "10.0.0.2"),
            svc(),
            slice_("a-1", "shop", "a", [ep("10.0.0.1", "a-0", "shop"), ep("10.0.0.2", "a-1")]),
        ]
    )
    (t,) = b.live.targets_file.targets
    assert (t.name, t.expect, t.identity) == (
        "shop/a:80",
        Expect.STRICT,
        "spiffe://cluster.local/ns/shop/sa/a",
    )
    assert b.endpoints() == {"10.0.0.1:8080", "10.0.0.2:8080"}
    assert set(b.required().values()) == {Verdict.PASS}
    assert b.live.exit_code() == 0


def test_slice_address_that_is_not_the_pods_ip_is_never_probed(
    plan_both: Callable[..., Both],
) -> None:
    """Kubernetes: anyone allowed to write EndpointSlices can label one with
    kubernetes.io/service-name and kube-proxy will route to its addresses; the
    address must be one of the targetRef pod's status.podIPs to be that pod."""
    b = plan_both(
        [
            *base(),
            a_pod("a-0", "10.0.0.1"),
            svc(),
            slice_("a-evil", "shop", "a", [ep("203.0.113.9", "a-0", "shop")]),
            slice_("a-good", "shop", "a", [ep("10.0.0.1", "a-0", "shop")]),
        ]
    )
    assert b.endpoints() == {"10.0.0.1:8080"}
    bad = [r for r in b.findings() if "203.0.113.9" in r.reason]
    assert len(bad) == 1 and bad[0].verdict == Verdict.ERROR
    assert "EndpointSlice shop/a-evil" in bad[0].reason and "not probed" in bad[0].reason
    # Part of the port's traffic goes to a non-workload: the port can't comply.
    assert b.required()["require-strict:shop/a:80"] == Verdict.FAIL
    assert b.live.exit_code() == 1


@pytest.mark.parametrize(
    ("address", "address_type"),
    [
        ("evil.example.com", "FQDN"),  # discovery/v1: FQDN slices name hosts, not pods
        ("db.internal", "IPv4"),  # a host name where an IP literal must be
        ("10.0.0.1 ", "IPv4"),
        ("010.000.000.001", "IPv4"),  # not a canonical literal (octal in some parsers)
        ("0.0.0.0", "IPv4"),  # connects to the probe's own host
        ("224.0.0.1", "IPv4"),
        ("169.254.169.254", "IPv4"),  # link-local: the cloud metadata server, never a pod
        ("fe80::1%eth0", "IPv6"),  # zone: a link on the probe's node
        ("10.0.0.1", "IPv6"),  # family differs from addressType
    ],
)
def test_non_ip_or_wrong_family_slice_addresses_are_not_probed(
    plan_both: Callable[..., Both], address: str, address_type: str
) -> None:
    b = plan_both(
        [
            *base(),
            a_pod("a-0", "10.0.0.1"),
            svc(),
            slice_("a-x", "shop", "a", [ep(address, "a-0", "shop")], address_type=address_type),
        ]
    )
    assert b.endpoints() == set()
    assert any("EndpointSlice shop/a-x" in r.reason for r in b.findings())
    assert b.required()["require-strict:shop/a:80"] == Verdict.FAIL


def test_cross_namespace_target_ref_is_not_probed(plan_both: Callable[..., Both]) -> None:
    """Kubernetes: a slice's endpoints belong to its Service's namespace; a targetRef
    into another namespace would borrow that pod's identity and address."""
    b = plan_both(
        [
            *base("bank"),
            kb.pod("vault-0", "bank", {"app": "vault"}, ip="10.9.0.1", sa="vault"),
            svc(),
            slice_("a-x", "shop", "a", [ep("10.9.0.1", "vault-0", "bank")]),
        ]
    )
    assert b.endpoints() == set()
    assert not any("bank" in (t.identity or "") for t in b.live.targets_file.targets)
    (f,) = [r for r in b.findings() if "namespace 'bank'" in r.reason]
    assert f.verdict == Verdict.ERROR
    assert b.required()["require-strict:shop/a:80"] == Verdict.FAIL


def test_selectorless_service_with_external_endpoints(plan_both: Callable[..., Both]) -> None:
    """Kubernetes: a Service without a selector gets hand-written EndpointSlices,
    typically for something outside the cluster; Istio cannot put mTLS there."""
    b = plan_both(
        [
            *base(),
            kb.service("ext", "shop", None, [kb.sport(443, 443, name="https")]),
            slice_("ext-1", "shop", "ext", [ep("192.0.2.7")], [("https", 443)]),
        ]
    )
    assert b.live.targets_file.targets == ()
    assert "EndpointSlice shop/ext-1 address 192.0.2.7: no targetRef Pod" in b.reasons()
    assert b.required()["require-strict:shop/ext:443"] == Verdict.FAIL
    assert b.required()["require-sidecar:shop/ext:443"] == Verdict.FAIL


def test_selectorless_service_pointing_at_own_pods_is_probed(
    plan_both: Callable[..., Both],
) -> None:
    """A hand-written slice naming a pod of the same namespace by its own IP is that
    pod: probing it reaches only a workload of the Service's namespace."""
    b = plan_both(
        [
            *base(),
            a_pod("a-0", "10.0.0.1"),
            kb.service("man", "shop", None, [kb.sport(80, 8080)]),
            slice_("man-1", "shop", "man", [ep("10.0.0.1", "a-0", "shop")]),
        ]
    )
    assert b.endpoints() == {"10.0.0.1:8080"}


def test_host_network_pods_are_not_probed(plan_both: Callable[..., Both]) -> None:
    """Kubernetes: a hostNetwork pod's podIP is its node's IP (status.hostIP); Istio
    never injects one (inject.go injectRequired)."""
    host = with_spec(a_pod("a-host", "10.1.0.5"), hostNetwork=True)
    same_ip = with_status(a_pod("a-same", "10.1.0.6"), hostIP="10.1.0.6")
    b = plan_both([*base(), a_pod("a-0", "10.0.0.1"), host, same_ip, svc()])
    assert b.endpoints() == {"10.0.0.1:8080"}
    text = b.reasons()
    assert "Pod shop/a-host address 10.1.0.5: runs on the host network" in text
    assert "Pod shop/a-same address 10.1.0.6: runs on the host network" in text
    assert b.required()["require-sidecar:shop/a:80"] == Verdict.FAIL


def test_terminating_and_not_running_pods_are_not_probed(plan_both: Callable[..., Both]) -> None:
    """Kubernetes: a pod with deletionTimestamp is terminating; only phase Running
    pods serve. Neither is an endpoint even if a stale slice lists it ready."""
    term = copy.deepcopy(a_pod("a-1", "10.0.0.2"))
    term["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:01Z"
    done = with_status(a_pod("a-2", "10.0.0.3"), phase="Succeeded")
    b = plan_both(
        [
            *base(),
            a_pod("a-0", "10.0.0.1"),
            term,
            done,
            svc(),
            slice_(
                "a-s",
                "shop",
                "a",
                [ep("10.0.0.1", "a-0", "shop"), ep("10.0.0.2", "a-1"), ep("10.0.0.3", "a-2")],
            ),
        ]
    )
    assert b.endpoints() == {"10.0.0.1:8080"}


def test_slice_pod_not_selected_by_the_service_is_not_probed(
    plan_both: Callable[..., Both],
) -> None:
    """Kubernetes: an endpoint of a Service with a selector is a pod it selects."""
    other = kb.pod("db-0", "shop", {"app": "db"}, ip="10.0.0.7", sa="db")
    b = plan_both([*base(), other, svc(), slice_("a-x", "shop", "a", [ep("10.0.0.7", "db-0")])])
    assert b.endpoints() == set()
    assert "Pod shop/db-0 is not selected by the Service" in b.reasons()


def test_dual_stack_slice_uses_the_pods_ipv6_address(plan_both: Callable[..., Both]) -> None:
    """Kubernetes: a dual-stack pod lists both families in status.podIPs, and each
    family gets its own EndpointSlice (addressType IPv4 / IPv6)."""
    pod = with_status(a_pod("a-0", "10.0.0.1"), podIPs=[{"ip": "10.0.0.1"}, {"ip": "fd00::1"}])
    b = plan_both(
        [
            *base(),
            pod,
            svc(),
            slice_("a-6", "shop", "a", [ep("fd00:0::1", "a-0")], address_type="IPv6"),
        ]
    )
    assert b.endpoints() == {"[fd00::1]:8080"}


def test_identity_is_the_pods_own_service_account(plan_both: Callable[..., Both]) -> None:
    """Istio: the workload certificate names the pod's own namespace and service
    account (spec.serviceAccountName), whatever the Service is called."""
    b = plan_both([*base(), a_pod("a-0", "10.0.0.1", sa="payments"), svc()])
    (t,) = b.live.targets_file.targets
    assert t.identity == "spiffe://cluster.local/ns/shop/sa/payments"


def test_service_account_that_is_no_kubernetes_name_is_not_planned(tmp_path: Path) -> None:
    """The API server only stores DNS-1123 names; YAML can hold anything, and a
    '/' or '..' would change the SPIFFE path the checks compare against."""
    objs = [*base(), a_pod("a-0", "10.0.0.1", sa="../x/sa/evil"), svc()]
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all(objs))
    plan = build_plan(load_manifests([f]), REQ)
    assert plan.targets_file.targets == ()
    assert any("is not a Kubernetes name" in r.reason for r in plan.findings)
    round_trip(plan.targets_file, tmp_path)


def test_invalid_trust_domain_plans_nothing(tmp_path: Path) -> None:
    """SPIFFE-ID.md: a trust domain is lowercase letters, digits, '.', '-', '_'. The
    mesh config reader refuses such a value already; the planner refuses it again
    whatever hands it a snapshot (defence in depth for every caller)."""
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all([*base(), a_pod(), svc()]))
    for bad in ("Evil.Com", "a/b", "a b", "td:443"):
        snap = load_manifests([f])
        snap.trust_domain = bad
        plan = build_plan(snap, REQ)
        assert plan.targets_file.targets == ()
        assert any(r.verdict == Verdict.ERROR and "trust domain" in r.reason for r in plan.findings)
        round_trip(plan.targets_file, tmp_path)


# ---- rule 2: no backend, no compliance pass -------------------------------------------------


def test_service_without_backend_never_passes(plan_both: Callable[..., Both]) -> None:
    """A STRICT namespace policy says nothing about a port no pod serves: there is
    nothing to verify, so --require must not pass (error: could not observe)."""
    b = plan_both([*base(), svc("empty")])
    assert b.live.targets_file.targets == ()
    assert b.required() == {
        "require-strict:shop/empty:80": Verdict.ERROR,
        "require-sidecar:shop/empty:80": Verdict.ERROR,
    }
    assert "no pod in shop matches the selector" in b.reasons()


def test_target_port_naming_no_container_port(plan_both: Callable[..., Both]) -> None:
    """Kubernetes: a named targetPort resolves per pod against its container ports;
    where it names none, the pod is not an endpoint of that port."""
    service = kb.service("a", "shop", {"app": "a"}, [kb.sport(80, "grpc")])
    b = plan_both([*base(), a_pod("a-0", "10.0.0.1", ports=[("http", 8080)]), service])
    assert b.live.targets_file.targets == ()
    assert b.required()["require-strict:shop/a:80"] == Verdict.ERROR


def test_unverifiable_port_exits_nonzero_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all([*base(), svc("empty")]))
    for req in ("strict", "sidecar"):
        code = cli_main(["plan", "--from-manifests", str(f), "--require", req, "-o", "yaml"])
        assert code == 2
        out = capsys.readouterr().out
        assert "ERROR require-" in out
        (tmp_path / "t.yaml").write_text(out)
        assert load_targets(tmp_path / "t.yaml").targets == ()


def test_external_name_service_is_not_probed_and_never_complies(
    plan_both: Callable[..., Both],
) -> None:
    """Kubernetes: an ExternalName Service is a DNS CNAME to a host outside the mesh."""
    ext = kb.service("ext", "shop", None, [kb.sport(443, 443, name="https")])
    ext["spec"] = {
        "type": "ExternalName",
        "externalName": "db.example.com",
        "ports": ext["spec"]["ports"],
    }
    b = plan_both([*base(), ext])
    assert b.live.targets_file.targets == ()
    assert b.required()["require-strict:shop/ext:443"] == Verdict.FAIL


# ---- rule 4: sidecars as the injector decides -----------------------------------------------


def _bare(name: str, ip: str, **kw: Any) -> Obj:
    return a_pod(name, ip, sidecar=False, **kw)


def test_copied_status_annotation_is_not_a_sidecar(plan_both: Callable[..., Both]) -> None:
    """Istio writes sidecar.istio.io/status when it injects, but templates copied from
    an injected pod carry it too; only the istio-proxy container runs a proxy."""
    fake = _bare(
        "a-0", "10.0.0.1", annotations={"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'}
    )
    fake["metadata"]["labels"]["security.istio.io/tlsMode"] = "istio"
    b = plan_both([*base(), fake, svc()])
    (t,) = b.live.targets_file.targets
    assert t.expect == Expect.NONE
    assert b.required()["require-sidecar:shop/a:80"] == Verdict.FAIL
    assert b.required()["require-strict:shop/a:80"] == Verdict.FAIL


def test_native_sidecar_counts_only_with_restart_policy_always(
    plan_both: Callable[..., Both],
) -> None:
    """Istio native sidecars (pkg/kube/inject, EnableNativeSidecars): istio-proxy is
    an init container with restartPolicy Always; a plain init container exits
    before the app starts."""
    native = _bare("a-0", "10.0.0.1", sa="a")
    native["spec"]["initContainers"] = [{"name": "istio-proxy", "restartPolicy": "Always"}]
    plain = _bare("b-0", "10.0.0.2", sa="b")
    plain["metadata"]["labels"] = {"app": "b"}
    plain["spec"]["initContainers"] = [{"name": "istio-proxy"}]
    b = plan_both([*base(), native, plain, svc("a"), svc("b")])
    t = b.targets()
    assert t["shop/a:80"].expect == Expect.STRICT
    assert t["shop/b:80"].expect == Expect.NONE


def test_pod_read_back_from_a_cluster_is_not_injected_again(
    plan_both: Callable[..., Both],
) -> None:
    """A pod body with addresses went through admission already: the injection
    webhook only runs on CREATE (mutatingwebhook.yaml rules), so a dump of a pod
    that has no proxy has none, whatever its namespace's labels say."""
    b = plan_both([*base(), _bare("a-0", "10.0.0.1"), svc()])
    (t,) = b.live.targets_file.targets
    assert t.expect == Expect.NONE


ENABLED = {"istio-injection": "enabled"}
REV = {"istio.io/rev": "canary"}
INJ = "sidecar.istio.io/inject"

# (namespace labels, pod labels, pod annotations, want, why) - sources:
# inject.go injectRequired (value parsing, label over annotation, policy default) and
# mutatingwebhook.yaml (which webhook the API server calls at all; exact label values).
INJECTION_CASES: list[tuple[dict[str, str], dict[str, str], dict[str, str], bool, str]] = [
    (ENABLED, {}, {}, True, "namespace webhook, no choice: policy enabled injects"),
    (ENABLED, {INJ: "false"}, {}, False, "NotIn [false] keeps the webhook away"),
    (ENABLED, {INJ: "False"}, {}, False, "webhook called; ToLower('False') is no inject word"),
    (ENABLED, {INJ: "no"}, {}, False, "only y|yes|true|on inject"),
    (ENABLED, {INJ: "maybe"}, {}, False, "an unknown word is an explicit no"),
    (ENABLED, {INJ: "Yes"}, {}, True, "case-insensitive yes"),
    (ENABLED, {INJ: "ON"}, {}, True, "case-insensitive on"),
    (ENABLED, {INJ: "y"}, {}, True, "y"),
    (ENABLED, {INJ: ""}, {}, True, "an empty label is no choice: the default applies"),
    (ENABLED, {}, {INJ: "false"}, False, "the deprecated annotation still counts"),
    (ENABLED, {INJ: "true"}, {INJ: "false"}, True, "the label wins over the annotation"),
    (ENABLED, {INJ: "off"}, {INJ: "true"}, False, "the label wins over the annotation"),
    ({}, {}, {INJ: "true"}, False, "object webhook selects on the label only"),
    ({}, {INJ: "true"}, {}, True, "object webhook: label sidecar.istio.io/inject=true"),
    ({}, {INJ: "TRUE"}, {}, False, "label selectors compare exact values"),
    ({}, {INJ: "yes"}, {}, False, "label selectors compare exact values"),
    ({"istio-injection": "disabled"}, {INJ: "true"}, {}, False, "disabled: no webhook"),
    ({"istio-injection": "Enabled"}, {}, {}, False, "only the exact value 'enabled'"),
    (REV, {}, {}, True, "rev.namespace webhook"),
    (REV, {INJ: "false"}, {}, False, "rev.namespace honours the opt-out"),
    ({**REV, "istio-injection": "disabled"}, {}, {}, False, "istio-injection wins over rev"),
    ({}, REV, {}, True, "rev.object webhook: pod label istio.io/rev"),
    ({}, {**REV, INJ: "false"}, {}, False, "rev.object honours the opt-out"),
    ({}, {"istio.io/rev": ""}, {}, False, "an empty revision names no webhook"),
]


@pytest.mark.parametrize(("ns_labels", "labels", "annotations", "want", "why"), INJECTION_CASES)
def test_would_inject_as_istio_decides(
    ns_labels: dict[str, str],
    labels: dict[str, str],
    annotations: dict[str, str],
    want: bool,
    why: str,
) -> None:
    from jobs.plan.injection import would_inject

    pod = kb.pod("p", "shop", labels, ip=None, sidecar=False, annotations=annotations)
    assert would_inject(pod, ns_labels) is want, why


@pytest.mark.parametrize(
    "ns", ["kube-system", "kube-public", "kube-node-lease", "local-path-storage"]
)
def test_system_namespaces_are_never_injected(ns: str) -> None:
    """webhook.go IgnoredNamespaces."""
    from jobs.plan.injection import would_inject

    pod = kb.pod("p", ns, {INJ: "true"}, ip=None, sidecar=False)
    assert not would_inject(pod, ENABLED)


def test_host_network_pods_are_never_injected() -> None:
    """inject.go injectRequired: iptables in a host-network pod would change the node."""
    from jobs.plan.injection import would_inject

    pod = with_spec(kb.pod("p", "shop", {INJ: "true"}, ip=None, sidecar=False), hostNetwork=True)
    assert not would_inject(pod, ENABLED)


def test_manifests_inject_workloads_as_the_injector_would(tmp_path: Path) -> None:
    """--from-manifests: workloads not yet created get the webhook's decision, and an
    injected pod really has the proxy container (so it counts as a sidecar)."""

    def dep(name: str, ns: str, labels: dict[str, str]) -> Obj:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": 1,
                "template": {
                    "metadata": {"labels": {"app": name, **labels}},
                    "spec": {"containers": [{"name": "app"}]},
                },
            },
        }

    objs = [
        kb.namespace("shop", ENABLED),
        kb.namespace("rev", REV),
        kb.namespace("plain"),
        dep("a", "shop", {}),
        dep("b", "shop", {INJ: "False"}),
        dep("c", "rev", {}),
        dep("d", "plain", {"istio.io/rev": "canary"}),
        dep("e", "plain", {INJ: "yes"}),
    ]
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all(objs))
    snap = load_manifests([f])
    from jobs.plan.injection import has_sidecar

    got = {p["metadata"]["name"]: has_sidecar(p) for p in snap.pods}
    assert got == {"a-0": True, "b-0": False, "c-0": True, "d-0": True, "e-0": False}


def test_yaml_output_names_what_is_not_probed_and_stays_a_targets_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exclusions ride along as comments; a hostile object name with line breaks
    (YAML 1.1 breaks on \\n, \\r, \\x85, \\u2028) cannot add a target."""
    evil = "x\n- name: injected\n  host: evil.example.com\x85\u2028targets: []"
    objs = [
        *base(),
        a_pod("a-0", "10.0.0.1"),
        svc(),
        slice_(evil, "shop", "a", [ep("203.0.113.9", "a-0", "shop")]),
        slice_("a-ok", "shop", "a", [ep("10.0.0.1", "a-0", "shop")]),
    ]
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all(objs))
    assert cli_main(["plan", "--from-manifests", str(f), "-o", "yaml"]) == 2
    out = capsys.readouterr().out
    assert "address 203.0.113.9: is not an address of its targetRef Pod shop/a-0" in out
    (tmp_path / "t.yaml").write_text(out)
    loaded = load_targets(tmp_path / "t.yaml")
    assert [(t.name, [str(e) for e in t.endpoints]) for t in loaded.targets] == [
        ("shop/a:80", ["10.0.0.1:8080"])
    ]


def test_running_pod_without_address_is_no_backend(plan_both: Callable[..., Both]) -> None:
    """A pod the API server holds gets its address from the kubelet (status.podIPs);
    without one nothing reaches it, so the port has nothing to verify."""
    no_ip = a_pod("a-0", ip="")
    no_ip["metadata"]["uid"] = "0b7c1a9e-0000-4000-8000-000000000001"
    b = plan_both([*base(), no_ip, svc()])
    assert b.live.targets_file.targets == ()
    assert b.required()["require-strict:shop/a:80"] == Verdict.ERROR


def test_yaml_workload_not_yet_applied_is_planned_from_configuration(tmp_path: Path) -> None:
    """Rehearsal: a Deployment's pods have no address before they exist; the plan
    keeps their target (mesh checks go through the Service) with no endpoint."""
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "a", "namespace": "shop"},
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"labels": {"app": "a"}},
                "spec": {"serviceAccountName": "a", "containers": [{"name": "app"}]},
            },
        },
    }
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all([*base(), dep, svc()]))
    plan = build_plan(load_manifests([f]), REQ)
    (t,) = plan.targets_file.targets
    assert (t.expect, t.endpoints) == (Expect.STRICT, ())
    assert {r.verdict for r in plan.findings if r.check.startswith("require-")} == {Verdict.PASS}


@pytest.mark.parametrize("td", ["Evil.com", "a/b", "a b", "td:443", ""])
def test_bad_trust_domain_flag_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], td: str
) -> None:
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all([*base(), a_pod(), svc()]))
    assert cli_main(["plan", "--from-manifests", str(f), "--trust-domain", td]) == 64
    err = capsys.readouterr().err
    assert "--trust-domain" in err and len(err.strip().splitlines()) == 1


def test_pod_claiming_a_node_or_cluster_ip_is_not_probed(plan_both: Callable[..., Both]) -> None:
    """Kubernetes: pod IPs come from the pod CIDR; a node's address (status.hostIP)
    and a Service's clusterIP are never a pod's own. A pod status that claims one
    (written by anyone allowed to update pods/status, or by hand in YAML) is not
    probed there."""
    api = kb.service("api", "shop", {"app": "api"}, [kb.sport(443, 6443)])
    api["spec"]["clusterIP"] = "10.96.0.1"
    node_pod = with_status(
        kb.pod("n-0", "shop", {"app": "n"}, ip="10.2.0.9"), hostIP="192.168.1.10"
    )
    objs = [
        *base(),
        api,
        node_pod,
        a_pod("a-0", "10.96.0.1"),
        a_pod("a-1", "192.168.1.10"),
        a_pod("a-2", "10.0.0.3"),
        svc(),
    ]
    b = plan_both(objs)
    assert b.endpoints() == {"10.0.0.3:8080"}
    text = b.reasons()
    assert "Pod shop/a-0 address 10.96.0.1: status.podIPs claims the cluster IP of Service" in text
    assert "Pod shop/a-1 address 192.168.1.10: status.podIPs claims a node's address" in text
    assert b.required()["require-strict:shop/a:80"] == Verdict.FAIL
