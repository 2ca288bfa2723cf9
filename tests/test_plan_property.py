"""Property (issue 17 rule 1): whatever pods, Services and EndpointSlices a cluster
holds - arbitrary addresses, targetRefs, namespaces, families, half-broken bodies -
every endpoint a plan emits is an IP of one of the input pods that runs in the
Service's own namespace, the identity names that namespace, and the targets file
loads with ``probe.model`` (what ``mtlsprobe check`` reads)."""

from __future__ import annotations

import ipaddress
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jobs.plan.objects import ClusterSnapshot
from jobs.plan.planner import Requirements, build_plan
from probe.model import load_targets
from probe.spiffe import parse_spiffe_id
from probe.targetsyaml import targets_yaml

# Mostly well-formed values (so plans have endpoints to check), some hostile ones.
NAMESPACES = ["a", "a", "a", "b", "A/../b", ""]
IPS = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.3",
    "fd00::1",
    "fd00:0::2",
    "0.0.0.0",
    "::",
    "bogus",
    "10.0.0.1 ",
    "evil.example.com",
    "198.51.100.9",
    "127.0.0.1",
]
any_ip = st.one_of(
    st.sampled_from(IPS[:5]), st.sampled_from(IPS), st.text(max_size=12), st.integers(), st.none()
)
ns_ = st.sampled_from(NAMESPACES)
pod_name = st.sampled_from(["p0", "p1", "p2", "p3"])
labels = st.one_of(
    st.just({"app": "x"}), st.fixed_dictionaries({}, optional={"app": st.sampled_from(["x", "y"])})
)


@st.composite
def good_pod(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed running pod of app x in namespace a (so endpoints get planned)."""
    ips = draw(st.lists(st.sampled_from(IPS[:5]), min_size=1, max_size=2, unique=True))
    return {
        "metadata": {"name": draw(pod_name), "namespace": "a", "labels": {"app": "x"}},
        "spec": {
            "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}],
            "serviceAccountName": "sa",
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "podIPs": [{"ip": ip} for ip in ips],
        },
    }


@st.composite
def hostile_pod(draw: st.DrawFn) -> dict[str, Any]:
    ips = draw(st.lists(any_ip, max_size=2))
    status: dict[str, Any] = {
        "phase": draw(st.sampled_from(["Running", "Running", "Pending", None])),
        "conditions": [{"type": "Ready", "status": draw(st.sampled_from(["True", "False"]))}],
    }
    shape = draw(st.sampled_from(["list", "list", "single", "junk"]))
    if shape == "list":
        status["podIPs"] = [{"ip": ip} for ip in ips]
    elif shape == "single" and ips:
        status["podIP"] = ips[0]
    else:
        status["podIPs"] = draw(st.sampled_from([{"ip": "10.0.0.1"}, "10.0.0.1", [1, None]]))
    if draw(st.booleans()):
        status["hostIP"] = draw(any_ip)
    containers: list[Any] = [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]
    if draw(st.booleans()):
        containers.append({"name": "istio-proxy"})
    md: dict[str, Any] = {"name": draw(pod_name), "namespace": draw(ns_), "labels": draw(labels)}
    if draw(st.integers(0, 5)) == 0:
        md["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": md,
        "spec": {
            "containers": containers,
            "serviceAccountName": draw(st.sampled_from(["sa", "sa", "s.b", "../x", "", "A"])),
            "hostNetwork": draw(st.sampled_from([False, False, False, True, "true"])),
        },
        "status": status,
    }


GOOD_SERVICE = {
    "metadata": {"name": "x", "namespace": "a"},
    "spec": {"selector": {"app": "x"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
}


@st.composite
def good_slice(draw: st.DrawFn) -> dict[str, Any]:
    """A slice of Service a/x naming a pod of a by some address (its own or not)."""
    return {
        "metadata": {
            "name": draw(st.sampled_from(["g0", "g1"])),
            "namespace": "a",
            "labels": {"kubernetes.io/service-name": "x"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [draw(st.sampled_from([*IPS[:3], "198.51.100.9"]))],
                "targetRef": {"kind": "Pod", "name": draw(pod_name), "namespace": "a"},
            }
            for _ in range(draw(st.integers(1, 3)))
        ],
        "ports": [{"name": "http", "port": 8080}],
    }


@st.composite
def services(draw: st.DrawFn) -> dict[str, Any]:
    sel = draw(st.one_of(st.none(), st.just({}), labels))
    return {
        "metadata": {"name": draw(st.sampled_from(["x", "x", "y", "X_"])), "namespace": draw(ns_)},
        "spec": {
            "selector": sel,
            "type": draw(st.sampled_from(["ClusterIP", "ClusterIP", "ExternalName"])),
            "ports": [
                {"name": "http", "port": 80, "targetPort": draw(st.sampled_from([8080, "http"]))}
            ],
        },
    }


@st.composite
def target_refs(draw: st.DrawFn) -> Any:
    return draw(
        st.one_of(
            st.none(),
            st.text(max_size=4),
            st.fixed_dictionaries(
                {"kind": st.sampled_from(["Pod", "Pod", "Node", None]), "name": pod_name},
                optional={"namespace": ns_},
            ),
        )
    )


@st.composite
def slices(draw: st.DrawFn) -> dict[str, Any]:
    eps = [
        {
            "addresses": draw(st.lists(any_ip, max_size=2)),
            "conditions": draw(
                st.one_of(st.none(), st.fixed_dictionaries({}, optional={"ready": st.booleans()}))
            ),
            "targetRef": draw(target_refs()),
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    return {
        "metadata": {
            "name": draw(st.sampled_from(["s0", "s1"])),
            "namespace": draw(ns_),
            "labels": {"kubernetes.io/service-name": draw(st.sampled_from(["x", "x", "y"]))},
        },
        "addressType": draw(st.sampled_from(["IPv4", "IPv4", "IPv6", "FQDN", None])),
        "endpoints": eps,
        "ports": [
            {
                "name": draw(st.sampled_from(["http", "", None])),
                "port": draw(st.sampled_from([8080, 9090, None, 0, 70000, "80"])),
            }
        ],
    }


def _pod_addresses(pod: dict[str, Any]) -> set[str]:
    status = pod.get("status") or {}
    raw = status.get("podIPs")
    texts = [e.get("ip") for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []
    if not isinstance(raw, list) and status.get("podIP") is not None:
        texts = [status.get("podIP")]
    out = set()
    for t in texts:
        if not isinstance(t, str):
            continue
        try:
            out.add(str(ipaddress.ip_address(t)))
        except ValueError:
            continue
    return out


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    pod_list=st.lists(st.one_of(good_pod(), hostile_pod()), min_size=1, max_size=6),
    svc_list=st.lists(st.one_of(st.just(GOOD_SERVICE), services()), min_size=1, max_size=3),
    slice_list=st.lists(st.one_of(good_slice(), slices()), max_size=4),
    trust_domain=st.sampled_from(
        ["cluster.local", "cluster.local", "example.org", "Bad.TD", "a/b"]
    ),
)
def test_every_endpoint_is_an_input_pods_ip_in_the_services_namespace(
    pod_list: list[dict[str, Any]],
    svc_list: list[dict[str, Any]],
    slice_list: list[dict[str, Any]],
    trust_domain: str,
) -> None:
    snap = ClusterSnapshot(trust_domain=trust_domain)
    for kind, objs in (("Pod", pod_list), ("Service", svc_list), ("EndpointSlice", slice_list)):
        for o in objs:
            snap.add(kind, o)
    plan = build_plan(snap, Requirements(strict=True, sidecar=True))

    # Running, non-terminating, not host-network pods, by namespace (any of them may
    # be the one a slice names; the planner must have picked one of these).
    allowed: dict[str, set[str]] = {}
    for p in pod_list:
        md, spec, status = p["metadata"], p["spec"], p["status"]
        if status.get("phase") != "Running" or md.get("deletionTimestamp"):
            continue
        if spec.get("hostNetwork") is True:
            continue
        allowed.setdefault(md["namespace"], set()).update(_pod_addresses(p))

    for t in plan.targets_file.targets:
        ns = t.name.split("/", 1)[0]
        assert t.identity is not None
        assert parse_spiffe_id(t.identity).namespace == ns
        assert t.host.split(".")[1] == ns
        for e in t.endpoints:
            assert str(ipaddress.ip_address(e.host)) == e.host, e
            assert e.host in allowed.get(ns, set()), (e, ns)

    event(f"endpoints planned: {any(t.endpoints for t in plan.targets_file.targets)}")
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "targets.yaml"
        f.write_text(targets_yaml(plan.targets_file.to_dict()))
        assert load_targets(f) == plan.targets_file
    # One compliance verdict per (requirement, name); never a pass on a port with
    # nothing behind it.
    keys = [(r.check, r.target) for r in plan.findings if r.check.startswith("require-")]
    assert len(keys) == len(set(keys))
    for r in plan.findings:
        if r.check.startswith("require-") and r.verdict.value == "pass":
            assert any(t.name == r.target for t in plan.targets_file.targets)


@settings(max_examples=500, deadline=None)
@given(
    text=st.one_of(
        st.text(alphabet="0123456789.:abcdef% x", max_size=40),
        st.ip_addresses().map(str),
        st.ip_addresses(v=4).map(lambda ip: ".".join(f"{int(o):03d}" for o in str(ip).split("."))),
    )
)
def test_ip_literal_agrees_with_ipaddress(text: str) -> None:
    """The fast IPv4 path accepts exactly the canonical literals ``ipaddress`` writes."""
    from jobs.plan.endpoints import ip_literal

    got = ip_literal(text)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        assert got is None
        return
    special = (
        ip.is_unspecified or ip.is_multicast or ip.is_link_local or str(ip) == "255.255.255.255"
    )
    zoned = isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None
    mapped = isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
    if special or zoned or mapped or (ip.version == 4 and str(ip) != text):
        assert got is None
    else:
        assert got == str(ip)
