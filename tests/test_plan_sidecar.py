"""Sidecar resources (networking.istio.io) and the probe's own sidecar.

The mesh checks call every target through the probe pod's sidecar. A Sidecar resource that
applies to the probe pods and leaves a target out of its ``egress[].hosts`` keeps that
service out of the probe's proxy: the call goes to BlackHoleCluster (outboundTrafficPolicy
REGISTRY_ONLY: HTTP 502) or PassthroughCluster (ALLOW_ANY: plaintext, never mTLS). The plan
must predict it, name the Sidecar and say what to do. Istio sources: pilot/pkg/model
push_context.go ``initSidecarScopes`` / ``getSidecarScope`` (which Sidecar applies) and
sidecar.go ``convertIstioListenerToWrapper`` / ``selectServices`` /
``GetEgressListenerForRDS`` (what it imports); jobs/plan/policy/sidecar.py cites them.

Every case runs both ways through ``plan_both`` (tests/plancase.py): --from-manifests and the
same objects served by the fake API server, and the two plans must agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.plan.manifests import load_manifests
from jobs.plan.planner import build_plan
from jobs.plan.policy.client import Outcome
from probe.results import Verdict
from tests import kubebuild as kb
from tests.plancase import REQ, Both, a_pod

Obj = dict[str, Any]
PROBE_NS = "mtlsprobe"
T0 = "2026-01-01T00:00:00Z"
T1 = "2026-02-01T00:00:00Z"


def sidecar(
    name: str = "default",
    ns: str = PROBE_NS,
    hosts: list[Any] | None = None,
    *,
    mode: str | None = None,
    selector: dict[str, str] | None = None,
    created: str = T0,
    version: str = "v1",
    **spec: Any,
) -> Obj:
    body: Obj = dict(spec)
    if hosts is not None:
        body["egress"] = [{"hosts": hosts}]
    if mode is not None:
        body["outboundTrafficPolicy"] = {"mode": mode}
    if selector is not None:
        body["workloadSelector"] = {"labels": selector}
    return {
        "apiVersion": f"networking.istio.io/{version}",
        "kind": "Sidecar",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
        "spec": body,
    }


def cluster(*extra: Obj, pa: str = "STRICT") -> list[Obj]:
    """shop/a (one pod with a sidecar, port 80 -> 8080) under a ``pa`` namespace policy,
    the probe's namespace, and ``extra``."""
    return [
        kb.namespace("shop", {"istio-injection": "enabled"}),
        kb.peer_auth("default", "shop", pa),
        kb.namespace(PROBE_NS, {"istio-injection": "enabled"}),
        a_pod(),
        kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
        *extra,
    ]


def sidecar_findings(b: Both) -> dict[str, Any]:
    return {r.target: r for r in b.findings() if r.target.startswith("Sidecar ")}


def views(b: Both) -> set[str]:
    return {e.client.outcome for e in b.live.edges}


def hidden(b: Both) -> bool:
    return all(not e.client.mtls for e in b.live.edges) and bool(b.live.edges)


# ---- which hosts a Sidecar lets the probe reach -------------------------------------------


def test_registry_only_sidecar_sends_a_left_out_target_to_the_black_hole(
    plan_both: Callable[..., Both],
) -> None:
    """sidecar.go ``selectServices``: ``./*`` imports only the proxy's own namespace, so
    shop/a is not in the probe's scope; with REGISTRY_ONLY the call goes to
    BlackHoleCluster (502). STRICT on paper, but no probe can verify it: require-strict
    must not pass, and the finding names the Sidecar and what to do."""
    b = plan_both(cluster(sidecar(hosts=["./*", "istio-system/*"], mode="REGISTRY_ONLY")))
    assert views(b) == {Outcome.FAIL} and hidden(b)
    assert "BlackHoleCluster" in b.live.edges[0].client.reason
    assert b.required()["require-strict:shop/a:80"] == Verdict.FAIL
    f = sidecar_findings(b)["Sidecar mtlsprobe/default"]
    assert f.verdict == Verdict.FAIL
    assert "shop/a:80" in f.reason and "egress hosts" in f.reason
    assert f.evidence["hidden"] == ["shop/a:80"]
    assert b.live.exit_code() == 1


def test_unset_mode_in_the_sidecar_is_registry_only(plan_both: Callable[..., Both]) -> None:
    """istio/api sidecar.proto ``OutboundTrafficPolicy.Mode``: REGISTRY_ONLY is the zero
    value, so ``outboundTrafficPolicy: {}`` blocks - it does not fall back to the mesh."""
    sc = sidecar(hosts=["./*"], outboundTrafficPolicy={})
    b = plan_both(cluster(sc))
    assert "REGISTRY_ONLY (Sidecar mtlsprobe/default)" in b.live.edges[0].client.reason


def test_allow_any_sends_it_through_passthrough_in_plaintext(
    plan_both: Callable[..., Both],
) -> None:
    """Without its own outboundTrafficPolicy the Sidecar takes the mesh's, ALLOW_ANY by
    default (pkg/config/mesh/mesh.go ``DefaultMeshConfig``): PassthroughCluster, plaintext
    to the original destination. A STRICT server resets it; a PERMISSIVE one answers in
    plaintext - never mTLS either way."""
    b = plan_both(cluster(sidecar(hosts=["./*"])))
    e = b.live.edges[0]
    assert e.client.outcome == Outcome.FAIL and not e.client.mtls
    assert "PassthroughCluster" in e.client.reason and "default mesh config" in e.client.reason
    assert sidecar_findings(b)["Sidecar mtlsprobe/default"].verdict == Verdict.FAIL

    b = plan_both(cluster(sidecar(hosts=["./*"]), pa="PERMISSIVE"))
    e = b.live.edges[0]
    assert e.client.outcome == Outcome.OK and not e.client.mtls and e.client.tls == "plaintext"
    f = sidecar_findings(b)["Sidecar mtlsprobe/default"]
    assert f.verdict == Verdict.ERROR  # mTLS cannot be observed through the probe
    assert "never mTLS" in f.reason


def test_mesh_config_registry_only_applies_when_the_sidecar_sets_none(
    plan_both: Callable[..., Both],
) -> None:
    """sidecar.go ``initSidecarScopeInternalIndexes``: no outboundTrafficPolicy on the
    Sidecar means the mesh config's, read from istio-system/istio."""
    mesh = kb.configmap(
        "istio", "istio-system", {"mesh": "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"}
    )
    b = plan_both(cluster(sidecar(hosts=["./*"]), mesh))
    assert "REGISTRY_ONLY (mesh config istio-system/istio)" in b.live.edges[0].client.reason


@pytest.mark.parametrize(
    ("hosts", "seen"),
    [
        (["shop/*"], True),
        (["*/*"], True),
        (["*/a.shop.svc.cluster.local"], True),
        (["shop/a.shop.svc.cluster.local"], True),
        (["*/*.shop.svc.cluster.local"], True),
        (["*/*.svc.cluster.local"], True),
        # master's selectServices: no match in the namespace's own list falls back to "*"
        (["shop/b.shop.svc.cluster.local", "*/*"], True),
        (["~/*"], False),  # "~" names no namespace: nothing imported
        (["shop/a"], False),  # hosts are FQDNs: a short name matches nothing
        (["other/*"], False),
        (["*/*.other.svc.cluster.local"], False),
        (["shop/*", "noslash", "a/b/c"], True),  # illegal entries are skipped, not fatal
        ([], False),  # an explicit egress listener with no hosts imports nothing
    ],
)
def test_egress_hosts_syntax(plan_both: Callable[..., Both], hosts: list[str], seen: bool) -> None:
    """sidecar.go ``convertIstioListenerToWrapper`` and ``hostClassification.Matches``
    (pkg/config/host/name.go ``SubsetOf``): ``namespace/dnsName``, ``*`` any namespace,
    ``*.suffix`` wildcards, exact FQDNs; an entry without exactly one ``/`` is skipped."""
    b = plan_both(cluster(sidecar(hosts=hosts, mode="REGISTRY_ONLY")))
    assert (views(b) == {Outcome.OK}) is seen
    assert (b.required()["require-strict:shop/a:80"] == Verdict.PASS) is seen
    f = sidecar_findings(b)["Sidecar mtlsprobe/default"]
    assert f.verdict == (Verdict.SKIP if seen else Verdict.FAIL)


def test_no_egress_means_every_service(plan_both: Callable[..., Both]) -> None:
    """sidecar.go: no ``egress`` (or an empty list) is one listener ``*/*``."""
    for sc in (sidecar(mode="REGISTRY_ONLY"), sidecar(mode="REGISTRY_ONLY", egress=[])):
        b = plan_both(cluster(sc))
        assert views(b) == {Outcome.OK}
        assert b.required()["require-strict:shop/a:80"] == Verdict.PASS


def test_port_specific_listeners(plan_both: Callable[..., Both]) -> None:
    """sidecar.go ``GetEgressListenerForRDS``: the listener for a port is the first with
    that port number or without one; ``needsPortMatch``: a listener with a port imports
    that port only. A listener the app must connect to itself (``captureMode: NONE``)
    never sees the probe's captured calls."""

    def egress(*listeners: Obj) -> Obj:
        return sidecar(mode="REGISTRY_ONLY", egress=list(listeners))

    only_9090 = egress(
        {"port": {"number": 9090, "name": "h", "protocol": "HTTP"}, "hosts": ["shop/*"]}
    )
    assert views(plan_both(cluster(only_9090))) == {Outcome.FAIL}
    on_80 = egress({"port": {"number": 80, "name": "h", "protocol": "HTTP"}, "hosts": ["shop/*"]})
    assert views(plan_both(cluster(on_80))) == {Outcome.OK}
    # port 80's own listener wins over the catch-all after it, and it leaves shop out
    shadow = egress(
        {"port": {"number": 80, "name": "h", "protocol": "HTTP"}, "hosts": ["istio-system/*"]},
        {"hosts": ["*/*"]},
    )
    assert views(plan_both(cluster(shadow))) == {Outcome.FAIL}
    both = egress(
        {"port": {"number": 9090, "name": "h", "protocol": "HTTP"}, "hosts": ["istio-system/*"]},
        {"hosts": ["shop/*"]},
    )
    assert views(plan_both(cluster(both))) == {Outcome.OK}
    uncaptured = egress({"captureMode": "NONE", "port": {"number": 80}, "hosts": ["*/*"]})
    assert views(plan_both(cluster(uncaptured))) == {Outcome.FAIL}


# ---- which Sidecar applies to the probe pods ------------------------------------------------


def test_root_namespace_sidecar_is_the_mesh_wide_default(plan_both: Callable[..., Both]) -> None:
    """push_context.go ``getSidecarScope``: with no Sidecar in the probe's namespace, the
    root namespace's selector-less Sidecar applies, converted for the probe's namespace
    (``./*`` is mtlsprobe, not istio-system)."""
    root = sidecar(ns="istio-system", hosts=["./*"], mode="REGISTRY_ONLY")
    b = plan_both(cluster(root))
    assert views(b) == {Outcome.FAIL}
    f = sidecar_findings(b)["Sidecar istio-system/default"]
    assert "mesh-wide default" in f.reason and f.verdict == Verdict.FAIL


def test_probe_namespace_sidecar_overrides_the_root_one(plan_both: Callable[..., Both]) -> None:
    root = sidecar(ns="istio-system", hosts=["./*"], mode="REGISTRY_ONLY")
    own = sidecar(hosts=["shop/*"], mode="REGISTRY_ONLY")
    b = plan_both(cluster(root, own))
    assert views(b) == {Outcome.OK}
    assert "Sidecar istio-system/default" not in sidecar_findings(b)


def test_selector_sidecar_for_the_probe_pods_wins(plan_both: Callable[..., Both]) -> None:
    """A Sidecar whose ``workloadSelector.labels`` select the probe pods comes before the
    namespace-wide one (``initSidecarScopes`` puts selector Sidecars in front)."""
    wide = sidecar(hosts=["*/*"], mode="REGISTRY_ONLY")
    probe = sidecar(
        "probe",
        hosts=["./*"],
        mode="REGISTRY_ONLY",
        selector={"app.kubernetes.io/name": "mtlsprobe"},
    )
    b = plan_both(cluster(wide, probe))
    assert views(b) == {Outcome.FAIL}
    assert "workloadSelector selects them" in sidecar_findings(b)["Sidecar mtlsprobe/probe"].reason
    # a selector that selects other pods leaves the namespace-wide Sidecar in charge
    other = sidecar("other", hosts=["./*"], mode="REGISTRY_ONLY", selector={"app": "other"})
    b = plan_both(cluster(wide, other))
    assert views(b) == {Outcome.OK}
    assert "Sidecar mtlsprobe/other" not in sidecar_findings(b)


def test_selector_for_the_agents_only(plan_both: Callable[..., Both]) -> None:
    """The continuous mode's sidecar agents are probe pods too (labels
    k8s/overlays/continuous/agents.yaml): a Sidecar selecting only them still matters."""
    agents = sidecar(
        "agents",
        hosts=["./*"],
        mode="REGISTRY_ONLY",
        selector={"app.kubernetes.io/component": "agent-sidecar"},
    )
    b = plan_both(cluster(agents))
    assert views(b) == {Outcome.FAIL}
    assert "sidecar agents" in sidecar_findings(b)["Sidecar mtlsprobe/agents"].reason


def test_the_oldest_namespace_wide_sidecar_wins(plan_both: Callable[..., Both]) -> None:
    """One selector-less Sidecar per namespace; with more, ``sortConfigByCreationTime``
    makes the oldest the one used. The other is reported as ignored."""
    old = sidecar("old", hosts=["./*"], mode="REGISTRY_ONLY", created=T0)
    new = sidecar("new", hosts=["*/*"], mode="REGISTRY_ONLY", created=T1)
    b = plan_both(cluster(new, old))
    assert views(b) == {Outcome.FAIL}
    found = sidecar_findings(b)
    assert "ignored" in found["Sidecar mtlsprobe/new"].reason
    assert found["Sidecar mtlsprobe/old"].verdict == Verdict.FAIL


@pytest.mark.parametrize(
    "elsewhere",
    [
        sidecar(ns="shop", hosts=["~/*"], mode="REGISTRY_ONLY"),  # the target's namespace
        sidecar(ns="other", hosts=["~/*"], mode="REGISTRY_ONLY"),
        # a selector Sidecar in the root namespace selects root-namespace pods only
        sidecar(
            ns="istio-system",
            hosts=["~/*"],
            mode="REGISTRY_ONLY",
            selector={"app.kubernetes.io/name": "mtlsprobe"},
        ),
    ],
)
def test_a_sidecar_elsewhere_does_not_matter(
    plan_both: Callable[..., Both], elsewhere: Obj
) -> None:
    """``getSidecarScope`` looks only in the proxy's namespace and the root namespace."""
    b = plan_both(cluster(elsewhere))
    assert views(b) == {Outcome.OK}
    assert b.required()["require-strict:shop/a:80"] == Verdict.PASS
    assert not sidecar_findings(b)


def test_every_served_version_is_read(plan_both: Callable[..., Both]) -> None:
    for version in ("v1beta1", "v1alpha3"):
        b = plan_both(cluster(sidecar(hosts=["./*"], mode="REGISTRY_ONLY", version=version)))
        assert views(b) == {Outcome.FAIL}


# ---- hostile Sidecars: findings, never a crash, bounded -------------------------------------


@pytest.mark.parametrize(
    ("spec", "outcome"),
    [
        ("garbage", Outcome.UNKNOWN),  # spec not a mapping: scope unknown
        ({"egress": "x"}, Outcome.UNKNOWN),
        ({"egress": [{"hosts": [1, {"a": 1}, None, "x" * 5000]}]}, Outcome.FAIL),
        ({"egress": ["x", 3]}, Outcome.FAIL),  # no readable listener: nothing imported
        ({"egress": [{"hosts": "shop/*"}]}, Outcome.FAIL),
        ({"egress": [{"port": "80", "hosts": ["*/*"]}]}, Outcome.FAIL),
        (
            {"outboundTrafficPolicy": {"mode": "BOGUS"}, "egress": [{"hosts": ["./*"]}]},
            Outcome.UNKNOWN,
        ),
        ({"outboundTrafficPolicy": "x", "egress": [{"hosts": ["./*"]}]}, Outcome.UNKNOWN),
        # an unreadable selector is read as selecting every pod (narrowing, never widening)
        ({"workloadSelector": "x", "egress": [{"hosts": ["./*"]}]}, Outcome.FAIL),
    ],
)
def test_hostile_sidecar_is_a_finding(
    plan_both: Callable[..., Both], spec: Any, outcome: str
) -> None:
    """Values the API server's schema refuses (so only YAML or a broken cluster holds
    them) become an error finding naming the Sidecar; the plan then narrows what the
    probe can reach or calls it unknown - and require-strict never passes on it."""
    sc = sidecar(outboundTrafficPolicy={"mode": "REGISTRY_ONLY"})
    sc["spec"] = (
        spec
        if not isinstance(spec, dict)
        else {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}, **spec}
    )
    b = plan_both(cluster(sc))
    assert views(b) == {outcome}
    assert b.required()["require-strict:shop/a:80"] == Verdict.FAIL
    found = sidecar_findings(b)["Sidecar mtlsprobe/default"]
    assert found.verdict in (Verdict.FAIL, Verdict.ERROR)
    errors = [
        r
        for r in b.findings()
        if r.target == "Sidecar mtlsprobe/default" and r.verdict == Verdict.ERROR
    ]
    assert errors, "the malformed field is named"


def test_huge_sidecar_is_bounded(tmp_path: Path) -> None:
    """200,000 hosts and 5,000 listeners: read up to the bounds, reported, in bounded time."""
    many = [f"ns{i}/svc{i}.ns{i}.svc.cluster.local" for i in range(200_000)] + ["shop/*"]
    sc = sidecar(mode="REGISTRY_ONLY", egress=[{"hosts": many}] + [{"hosts": ["x/y"]}] * 5_000)
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all(cluster(sc), width=1 << 20))
    snap = load_manifests([f])
    t0 = time.monotonic()
    plan = build_plan(snap, REQ)
    assert time.monotonic() - t0 < 10
    assert {e.client.outcome for e in plan.edges} == {Outcome.FAIL}  # "shop/*" was past the bound
    reasons = " | ".join(r.reason for r in plan.findings if r.target == "Sidecar mtlsprobe/default")
    assert "more than 10000 hosts" in reasons
    assert len(reasons) < 5_000


def test_wildcards_cost_per_host_not_per_pattern(tmp_path: Path) -> None:
    """Many wildcard hosts against many services: lookups by suffix, not a scan."""
    wild = [f"*/*.n{i}.svc.cluster.local" for i in range(9_000)]
    services = [kb.service(f"s{i}", "shop", {"app": "a"}, [kb.sport(80, 8080)]) for i in range(500)]
    sc = sidecar(hosts=[*wild, "shop/*"], mode="REGISTRY_ONLY")
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all([*cluster(sc), *services]))
    t0 = time.monotonic()
    plan = build_plan(load_manifests([f]), REQ)
    assert time.monotonic() - t0 < 20
    assert {e.client.outcome for e in plan.edges} == {Outcome.OK}


# ---- discovery: the live path reads Sidecars like DestinationRules --------------------------


def test_forbidden_sidecars_are_an_error_finding_not_the_end(tmp_path: Path) -> None:
    """RBAC from before this read (no ``sidecars`` in the ClusterRole): the plan goes on
    and says it cannot tell what the probe's sidecar reaches."""
    from jobs.plan.discovery import Options, discover
    from tests.fakekube import FakeKube

    with FakeKube() as kube:
        kube.add_all(cluster())
        kube.forbid("list", "sidecars", "networking.istio.io")
        plan = build_plan(discover(kube.api_client(), Options()), REQ)
    errs = [r for r in plan.findings if r.target == "Sidecar" and r.verdict == Verdict.ERROR]
    assert errs and "could keep targets out of the probe's sidecar" in errs[0].reason
    assert plan.targets_file.targets


def test_sidecars_are_read_from_the_oldest_served_version(tmp_path: Path) -> None:
    from jobs.plan.discovery import Options, discover
    from tests.fakekube import FakeKube, Resource

    with FakeKube(istio=False) as kube:
        kube.serve(
            Resource("security.istio.io", ("v1",), "peerauthentications", "PeerAuthentication")
        )
        kube.serve(Resource("networking.istio.io", ("v1alpha3",), "sidecars", "Sidecar"))
        kube.add_all(cluster(sidecar(hosts=["./*"], mode="REGISTRY_ONLY", version="v1alpha3")))
        snap = discover(kube.api_client(), Options())
        paths = [c.path for c in kube.calls]
    assert [s["metadata"]["name"] for s in snap.sidecars] == ["default"]
    assert paths.index("/apis/networking.istio.io/v1/sidecars") < paths.index(
        "/apis/networking.istio.io/v1alpha3/sidecars"
    )


def test_rbac_lets_discovery_list_sidecars() -> None:
    """k8s/base/rbac.yaml: the discovery ClusterRole reads what discovery lists."""
    docs = list(yaml.safe_load_all(Path("k8s/base/rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    rules = [r for r in role["rules"] if "networking.istio.io" in r["apiGroups"]]
    assert any("sidecars" in r["resources"] and {"get", "list"} <= set(r["verbs"]) for r in rules)


# ---- the pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mesh", "mode", "problem"),
    [
        (None, "ALLOW_ANY", False),
        ("trustDomain: x\n", "ALLOW_ANY", False),
        ("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n", "REGISTRY_ONLY", False),
        ("outboundTrafficPolicy:\n  mode: 0\n", "REGISTRY_ONLY", False),
        ("outboundTrafficPolicy:\n  mode: 1\n", "ALLOW_ANY", False),
        ("outboundTrafficPolicy: {}\n", "ALLOW_ANY", False),
        ("outboundTrafficPolicy:\n  mode: BLOCK\n", "ALLOW_ANY", True),
        ("outboundTrafficPolicy: 3\n", "ALLOW_ANY", True),
        ("[not, a, map]", "ALLOW_ANY", False),
        ("a: &a [*a]", "ALLOW_ANY", False),
    ],
)
def test_mesh_outbound_mode(mesh: str | None, mode: str, problem: bool) -> None:
    from jobs.plan.meshconfig import mesh_outbound_mode

    got, why = mesh_outbound_mode(mesh)
    assert got == mode and (why is not None) is problem


def test_a_bad_mesh_outbound_mode_is_reported(plan_both: Callable[..., Both]) -> None:
    mesh = kb.configmap(
        "istio", "istio-system", {"mesh": "outboundTrafficPolicy:\n  mode: BLOCK\n"}
    )
    b = plan_both(cluster(sidecar(hosts=["./*"]), mesh))
    assert "ConfigMap istio-system/istio" in {r.target for r in b.findings()}
    assert "ALLOW_ANY" in b.live.edges[0].client.reason


# ---- a Service not exported to the probe's namespace ---------------------------------------


@pytest.mark.parametrize(
    ("export_to", "seen"),
    [
        (".", False),  # private to shop
        ("~", False),  # nobody
        ("shop", False),  # its own namespace: private
        ("other", False),
        ("mtlsprobe", True),
        ("shop, mtlsprobe", True),
        ("*", True),
        ("~,*", True),  # "*" wins: public
        ("", True),  # empty: the mesh default, "*"
    ],
)
def test_service_export_to_hides_it_from_the_probe(
    plan_both: Callable[..., Both], export_to: str, seen: bool
) -> None:
    """push_context.go ``initServiceRegistry``: a Service's ``networking.istio.io/exportTo``
    annotation decides which namespaces' proxies know it at all (``sidecar.go``
    ``selectServices`` only sees ``servicesExportedToNamespace``): one not exported to the
    probe's namespace is hidden from the probe's sidecar whatever the Sidecar says."""
    objs = cluster(
        kb.configmap(
            "istio", "istio-system", {"mesh": "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"}
        )
    )
    svc = next(o for o in objs if o["kind"] == "Service")
    svc["metadata"]["annotations"] = {"networking.istio.io/exportTo": export_to}
    b = plan_both(objs)
    assert (views(b) == {Outcome.OK}) is seen
    if not seen:
        assert "BlackHoleCluster" in b.live.edges[0].client.reason
        f = {r.target: r for r in b.findings()}["Service shop/a"]
        assert f.verdict == Verdict.FAIL and "Add mtlsprobe to the annotation" in f.reason
        assert b.required()["require-strict:shop/a:80"] == Verdict.FAIL


def test_target_side_ingress_tls_is_named_as_not_modelled(plan_both: Callable[..., Both]) -> None:
    """istio/api sidecar.proto ``IstioIngressListener.tls``: the target's sidecar
    terminates TLS on that port with the Sidecar's own certificates. Not modelled: an
    error finding names the Sidecar and the port, so nothing silently passes on it. The
    same in a namespace that is not planned (a system namespace) is not read."""
    ingress = [
        {
            "port": {"number": 8080, "protocol": "HTTPS", "name": "https"},
            "defaultEndpoint": "127.0.0.1:8080",
            "tls": {"mode": "SIMPLE", "credentialName": "x"},
        },
        {
            "port": {"number": 9090, "protocol": "HTTP", "name": "h"},
            "defaultEndpoint": "127.0.0.1:9090",
        },
    ]
    b = plan_both(cluster(sidecar("in", ns="shop", ingress=ingress)))
    f = sidecar_findings(b)["Sidecar shop/in"]
    assert f.verdict == Verdict.ERROR and f.evidence["ports"] == [8080]
    assert "does not model" in f.reason
    b = plan_both(
        cluster(kb.namespace("kube-system"), sidecar("in", ns="kube-system", ingress=ingress))
    )
    assert not sidecar_findings(b)


def test_equal_creation_times_are_broken_by_name(plan_both: Callable[..., Both]) -> None:
    """pilot/pkg/model/config.go ``sortConfigByCreationTime``: creationTimestamp, then
    name, then namespace - so with equal times "a-wide" is used and "b-wide" ignored."""
    a = sidecar("a-wide", hosts=["*/*"], mode="REGISTRY_ONLY", created=T0)
    b_ = sidecar("b-wide", hosts=["./*"], mode="REGISTRY_ONLY", created=T0)
    b = plan_both(cluster(b_, a))
    assert views(b) == {Outcome.OK}
    assert "ignored" in sidecar_findings(b)["Sidecar mtlsprobe/b-wide"].reason
