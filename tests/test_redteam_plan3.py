"""Hostile and unusual clusters, third sweep (issue 17): cases not in test_plan*.py or
test_redteam_plan.py. Each case is planned from YAML (``--from-manifests``) and from the
same objects served by the fake API server (``plan_both``: the plans must agree, and the
targets file must load in ``mtlsprobe check``), and names the Kubernetes or Istio
behaviour it encodes. Cases marked *fixed* were answered wrongly before this sweep.

Istio sources cited are istio/istio at 86c9f01 (2026-08); Kubernetes ones are
k8s.io/api and pkg/controller/endpointslice.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from jobs.plan.manifests import load_manifests
from jobs.plan.planner import build_plan
from probe.model import Expect, Protocol
from probe.results import Verdict
from tests import kubebuild as kb
from tests.plancase import REQ, Both, Obj

Plan = Callable[..., Both]
STRICT = "require-strict:shop/a:80"
SIDECAR = "require-sidecar:shop/a:80"


def pod(name: str = "a-0", ip: str = "10.0.0.1", **kw: Any) -> Obj:
    kw.setdefault("sa", "a")
    kw.setdefault("ports", [("http", 8080)])
    labels = kw.pop("labels", None) or {"app": "a"}
    return kb.pod(name, kw.pop("ns", "shop"), labels, ip=ip, **kw)


def svc(*ports: Obj, name: str = "a", **spec: Any) -> Obj:
    s = kb.service(name, "shop", {"app": "a"}, list(ports) or [kb.sport(80, 8080)])
    s["spec"].update(spec)
    return s


def mesh(*objs: Obj, labels: dict[str, str] | None = None, mode: str = "STRICT") -> list[Obj]:
    """Namespace shop (injection on) with a namespace-wide PeerAuthentication."""
    ns = kb.namespace("shop", {"istio-injection": "enabled"} if labels is None else labels)
    return [ns, kb.peer_auth("default", "shop", mode), *objs]


def ep(address: str, pod_name: str | None = "a-0", **cond: Any) -> Obj:
    out: Obj = {"addresses": [address]}
    if cond:
        out["conditions"] = cond
    if pod_name is not None:
        out["targetRef"] = {"kind": "Pod", "namespace": "shop", "name": pod_name}
    return out


def slice_(endpoints: list[Obj], ports: list[tuple[str, int]] | None = None, **kw: Any) -> Obj:
    return kb.slice_of(
        kw.pop("name", "a-x"),
        kw.pop("ns", "shop"),
        "a",
        endpoints,
        ports if ports is not None else [("http", 8080)],
        created=None,
        **kw,
    )


def pod_ips(p: Obj, *ips: str) -> Obj:
    p = copy.deepcopy(p)
    p["status"]["podIP"] = ips[0]
    p["status"]["podIPs"] = [{"ip": ip} for ip in ips]
    return p


def policy_reasons(both: Both) -> str:
    return " | ".join(r.reason for r in both.findings())


def manifests_only(tmp_path: Path, objs: list[Obj]) -> Any:
    """For pods not yet created (no status addresses, no uid): only ``--from-manifests``
    can hold them - an API server returns pods after admission - so the injector's
    decision is applied there alone."""
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all(objs))
    return build_plan(load_manifests([f]), REQ)


def unapplied(p: Obj) -> Obj:
    p = copy.deepcopy(p)
    p["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    return p


# ---- addresses: dual stack, slices, readiness ----------------------------------------------------


def test_dual_stack_v6_slice_naming_another_pods_address(plan_both: Plan) -> None:
    """An IPv6 slice whose targetRef is a-0 but whose address is a-1's IPv6: the address
    is not its targetRef pod's (status.podIPs), so it is never probed; the port's
    traffic provably goes somewhere the plan did not verify: compliance fails."""
    a0 = pod_ips(pod(), "10.0.0.1", "fd00::1")
    a1 = pod_ips(pod("a-1", "10.0.0.2"), "10.0.0.2", "fd00::2")
    sl = slice_([ep("fd00::2", ready=True)], address_type="IPv6")
    both = plan_both(mesh(svc(), a0, a1, sl))
    assert both.endpoints() == set()
    assert "is not an address of its targetRef Pod shop/a-0" in policy_reasons(both)
    assert both.required()[STRICT] == Verdict.FAIL


def test_dual_stack_ipv6_primary_pod_in_ipv4_slice(plan_both: Plan) -> None:
    """podIPs [IPv6, IPv4] (IPv6-primary cluster): an IPv4 slice lists the pod's second
    address, which is still the pod's own: probed at its IPv4 address."""
    a0 = pod_ips(pod(), "fd00::1", "10.0.0.1")
    both = plan_both(mesh(svc(), a0, slice_([ep("10.0.0.1", ready=True)])))
    assert both.endpoints() == {"10.0.0.1:8080"}


def test_ipv4_slice_listing_an_ipv6_address(plan_both: Plan) -> None:
    """addressType IPv4 with an IPv6 literal: the slice contradicts itself (discovery/v1
    EndpointSlice: every address is of the slice's type); not probed, an error."""
    a0 = pod_ips(pod(), "10.0.0.1", "fd00::1")
    both = plan_both(mesh(svc(), a0, slice_([ep("fd00::1", ready=True)])))
    assert both.endpoints() == set()
    assert "not an IPv4 address literal" in policy_reasons(both)


def test_slice_ready_null_means_ready(plan_both: Plan) -> None:
    """discovery/v1 EndpointConditions: a nil ``ready`` is to be read as ready, and Istio
    counts it healthy (pilot/.../endpointslice.go ``endpointHealthStatus``) - even when the
    pod itself reports Ready=False: its traffic is planned."""
    both = plan_both(mesh(svc(), pod(ready=False), slice_([ep("10.0.0.1")])))
    assert both.endpoints() == {"10.0.0.1:8080"}
    assert both.required()[STRICT] == Verdict.PASS


def test_slice_ready_false_is_not_traffic(plan_both: Plan) -> None:
    """``ready: false``: Istio marks it UnHealthy and sends it nothing; the port has no
    probed backend: no compliance pass."""
    both = plan_both(mesh(svc(), pod(), slice_([ep("10.0.0.1", ready=False)])))
    assert both.endpoints() == set()
    assert both.required()[STRICT] == Verdict.ERROR


def test_publish_not_ready_addresses_sends_traffic_to_unready_pods(plan_both: Plan) -> None:
    """*fixed*: publishNotReadyAddresses makes the EndpointSlice controller publish every
    pod as ready, so an unready pod without a sidecar gets plaintext traffic; without
    slices the plan used to drop it and passed require-sidecar."""
    bare = pod("a-1", "10.0.0.2", sidecar=False, ready=False)
    both = plan_both(mesh(svc(publishNotReadyAddresses=True), pod(), bare))
    assert "10.0.0.2:8080" in both.endpoints()
    assert Verdict.FAIL in {
        v for k, v in both.required().items() if k.startswith("require-sidecar:shop/a:80")
    }
    assert Verdict.PASS not in {
        v for k, v in both.required().items() if k.startswith("require-sidecar") and "NONE" in k
    }


def test_unready_pod_without_publish_not_ready_is_no_backend(plan_both: Plan) -> None:
    """The same unready pod without publishNotReadyAddresses serves nothing."""
    bare = pod("a-1", "10.0.0.2", sidecar=False, ready=False)
    both = plan_both(mesh(svc(), pod(), bare))
    assert both.endpoints() == {"10.0.0.1:8080"}
    assert both.required()[SIDECAR] == Verdict.PASS


def test_running_pod_with_deletion_timestamp_behind_a_stale_ready_slice(plan_both: Plan) -> None:
    """A terminating pod (deletionTimestamp) whose slice still says ready: it is on its
    way out and never probed; with nothing else behind the port compliance errors."""
    p = pod()
    p["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    both = plan_both(mesh(svc(), p, slice_([ep("10.0.0.1", ready=True)])))
    assert both.endpoints() == set()
    assert both.required()[STRICT] == Verdict.ERROR


def test_slice_endpoint_with_a_second_external_address(plan_both: Plan) -> None:
    """Consumers use the first address of an endpoint (discovery/v1): a second address
    naming a public host is never probed."""
    sl = slice_([{**ep("10.0.0.1", ready=True), "addresses": ["10.0.0.1", "8.8.8.8"]}])
    both = plan_both(mesh(svc(), pod(), sl))
    assert both.endpoints() == {"10.0.0.1:8080"}


def test_slice_in_another_namespace_claiming_the_service(plan_both: Plan) -> None:
    """A slice labelled kubernetes.io/service-name=a in namespace evil belongs to evil/a,
    not shop/a (slices are matched within the Service's namespace)."""
    evil = [
        kb.namespace("evil"),
        kb.pod("e", "evil", {"app": "a"}, ip="10.9.9.9", sidecar=False),
        slice_(
            [{**ep("10.9.9.9", ready=True), "targetRef": {"kind": "Pod", "name": "e"}}],
            ns="evil",
            name="evil-a",
        ),
    ]
    both = plan_both(mesh(svc(), pod(), *evil))
    assert both.endpoints() == {"10.0.0.1:8080"}
    assert both.required()[STRICT] == Verdict.PASS


def test_slice_port_all_ports_resolves_on_the_pod(plan_both: Plan) -> None:
    """A slice port without a number means "all ports" (discovery/v1 EndpointPort): the
    Service's targetPort is resolved on the pod."""
    sl = slice_([ep("10.0.0.1", ready=True)], ports=[])
    sl["ports"] = [{"name": "http"}]
    both = plan_both(mesh(svc(), pod(), sl))
    assert both.endpoints() == {"10.0.0.1:8080"}


def test_slice_port_name_not_the_service_port_name(plan_both: Plan) -> None:
    """Slice ports are matched to Service ports by name (kube-proxy and Istio both): an
    unnamed slice port serves no port named http - nothing verified, error."""
    both = plan_both(mesh(svc(), pod(), slice_([ep("10.0.0.1", ready=True)], ports=[("", 8080)])))
    assert both.endpoints() == set()
    assert both.required()[STRICT] == Verdict.ERROR


def test_link_local_and_zoned_pod_addresses_are_never_probed(plan_both: Plan) -> None:
    """169.254/16 holds cloud metadata servers and fe80::/10 needs a zone: no pod has
    either (Kubernetes' ValidateEndpointIP); not probed, compliance never passes."""
    both = plan_both(mesh(svc(), pod_ips(pod(), "169.254.10.1")))
    assert both.endpoints() == set()
    assert "no pod address" in policy_reasons(both)
    assert both.required()[STRICT] != Verdict.PASS
    both = plan_both(mesh(svc(), pod_ips(pod(), "fe80::1%eth0")))
    assert both.endpoints() == set()


# ---- ports: names, protocols, target ports ------------------------------------------------------


def test_named_target_port_that_differs_per_pod_with_a_port_level_policy(plan_both: Plan) -> None:
    """targetPort ``web`` is 8080 on a-0 and 9090 on a-1 (resolved per pod, as the
    EndpointSlice controller does); portLevelMtls is keyed by the pod port, so only
    a-1's 9090 is DISABLE: one group fails, the other passes."""
    a0 = pod(ports=[("web", 8080)])
    a1 = pod("a-1", "10.0.0.2", ports=[("web", 9090)])
    pa = kb.peer_auth("w", "shop", None, selector={"app": "a"}, ports={9090: "DISABLE"})
    both = plan_both(mesh(svc(kb.sport(80, "web")), a0, a1, pa))
    assert both.endpoints() == {"10.0.0.1:8080", "10.0.0.2:9090"}
    expects = {t.expect for t in both.live.targets_file.targets}
    assert expects == {Expect.STRICT, Expect.DISABLE}
    assert Verdict.FAIL in both.required().values()


def test_named_target_port_declared_only_as_udp(plan_both: Plan) -> None:
    """A TCP Service port's name lookup only matches a container port of the same
    protocol: a UDP ``web`` resolves nothing; nothing verified, error."""
    p = pod()
    p["spec"]["containers"][0]["ports"] = [
        {"name": "web", "containerPort": 8080, "protocol": "UDP"}
    ]
    both = plan_both(mesh(svc(kb.sport(80, "web")), p))
    assert both.endpoints() == set()
    assert both.required()[STRICT] == Verdict.ERROR


def test_same_port_name_in_two_containers_takes_the_first(plan_both: Plan) -> None:
    """Kubernetes' FindPort walks containers in order: the first ``http`` wins."""
    p = pod()
    p["spec"]["containers"].insert(
        0, {"name": "side", "image": "x", "ports": [{"name": "http", "containerPort": 7070}]}
    )
    both = plan_both(mesh(svc(kb.sport(80, "http")), p))
    assert both.endpoints() == {"10.0.0.1:7070"}


def test_app_protocol_replaces_the_port_name(plan_both: Plan) -> None:
    """*fixed*: pkg/config/kube/conversion.go ``ConvertProtocol`` reads appProtocol
    *instead of* the name and parses it by prefix: ``http-foo`` is HTTP, an unknown
    ``custom`` is sniffed (planned HTTP) even on a port named tcp-x, ``kubernetes.io/h2c``
    is HTTP2; before, any appProtocol outside a fixed list was TCP."""
    ports = [
        kb.sport(80, 8080, name="tcp-x", appProtocol="custom"),
        kb.sport(81, 8080, name="x", appProtocol="http-foo"),
        kb.sport(82, 8080, name="tcp", appProtocol="kubernetes.io/h2c"),
        kb.sport(83, 8080, name="http", appProtocol="kubernetes.io/wss"),
        kb.sport(84, 8080, name="tcp", appProtocol="HTTP"),
    ]
    both = plan_both(mesh(svc(*ports), pod()))
    got = {t.port: t.protocol for t in both.live.targets_file.targets}
    assert got == {
        80: Protocol.HTTP,
        81: Protocol.HTTP,
        82: Protocol.HTTP,
        83: Protocol.TCP,
        84: Protocol.HTTP,
    }


def test_port_name_prefixes_as_protocol_parse_reads_them(plan_both: Plan) -> None:
    """*fixed* (``http_proxy``): protocol.Parse knows http_proxy (an HTTP protocol), so
    port 25 named http_proxy is HTTP, not the well-known-port TCP; ``GRPC-Web-x`` is
    gRPC-Web whatever its case; a name beats the well-known port 3306; ``https-*`` is
    TLS the sidecar passes through (TCP)."""
    ports = [
        kb.sport(25, 8080, name="http_proxy"),
        kb.sport(81, 8080, name="GRPC-Web-x"),
        kb.sport(3306, 8080, name="http-mysql"),
        kb.sport(443, 8080, name="https-web"),
    ]
    both = plan_both(mesh(svc(*ports), pod()))
    got = {t.port: t.protocol for t in both.live.targets_file.targets}
    assert got == {25: Protocol.HTTP, 81: Protocol.HTTP, 3306: Protocol.HTTP, 443: Protocol.TCP}


def test_service_targeting_the_sidecar_health_port(plan_both: Plan) -> None:
    """*fixed*: the injection template passes ``-d 15090,15021,<status port>`` to
    istio-init, so a Service sending to 15021 (or Envoy's 15090) reaches a plaintext
    listener that no PeerAuthentication governs; it was planned STRICT and passed."""
    both = plan_both(mesh(svc(kb.sport(80, 15021)), pod()))
    assert [t.expect for t in both.live.targets_file.targets] == [Expect.NONE]
    assert both.required()[STRICT] == Verdict.FAIL
    assert "never redirects port 15021" in policy_reasons(both) + " ".join(
        r.reason for r in both.live.findings
    )


def test_service_targeting_a_custom_status_port(plan_both: Plan) -> None:
    """*fixed*: ``status.sidecar.istio.io/port`` moves pilot-agent's status port, which
    excludeInboundPort (pkg/kube/inject/template.go) adds to the excluded ports."""
    p = pod(annotations={"status.sidecar.istio.io/port": "15030"})
    both = plan_both(mesh(svc(kb.sport(80, 15030)), p))
    assert both.required()[STRICT] == Verdict.FAIL


def test_exclusions_do_not_apply_to_an_include_list(plan_both: Plan) -> None:
    """*fixed*: tools/istio-iptables/pkg/capture/run.go applies excludeInboundPorts only
    when includeInboundPorts is ``*``; a listed port is redirected. The plan said the
    port was not captured (a false FAIL)."""
    p = pod(
        annotations={
            "traffic.sidecar.istio.io/includeInboundPorts": "8080",
            "traffic.sidecar.istio.io/excludeInboundPorts": "8080",
        }
    )
    both = plan_both(mesh(svc(), p))
    assert [t.expect for t in both.live.targets_file.targets] == [Expect.STRICT]
    assert both.required()[STRICT] == Verdict.PASS


def test_empty_include_list_captures_nothing(plan_both: Plan) -> None:
    """includeInboundPorts "" : run.go adds no inbound rule at all."""
    p = pod(annotations={"traffic.sidecar.istio.io/includeInboundPorts": ""})
    both = plan_both(mesh(svc(), p))
    assert both.required()[STRICT] == Verdict.FAIL


def test_huge_exclude_annotation_stays_bounded(plan_both: Plan) -> None:
    """A 100 KB excludeInboundPorts: read fully (it names 8080 at the end) and quoted in
    findings at a bounded length."""
    big = "1," * 50_000 + "8080"
    both = plan_both(
        mesh(svc(), pod(annotations={"traffic.sidecar.istio.io/excludeInboundPorts": big}))
    )
    assert both.required()[STRICT] == Verdict.FAIL
    assert max(len(r.reason) for r in both.live.findings) < 2000


# ---- PeerAuthentication -------------------------------------------------------------------------


def test_port_level_mtls_keyed_by_the_service_port_does_nothing(plan_both: Plan) -> None:
    """portLevelMtls is keyed by the workload (target) port (policy_applier.go
    ``ComposePeerAuthentication`` PerPort): an entry for service port 80 leaves target
    port 8080 at the namespace's STRICT."""
    pa = kb.peer_auth("w", "shop", None, selector={"app": "a"}, ports={80: "DISABLE"})
    both = plan_both(mesh(svc(), pod(), pa))
    assert [t.expect for t in both.live.targets_file.targets] == [Expect.STRICT]
    assert both.required()[STRICT] == Verdict.PASS


def test_selector_policy_with_port_entry_the_service_does_not_expose(plan_both: Plan) -> None:
    """A workload policy STRICT with portLevelMtls DISABLE on 9999 (no Service sends
    there): the Service's port takes the workload mode STRICT over the namespace's
    PERMISSIVE."""
    pa = kb.peer_auth("w", "shop", "STRICT", selector={"app": "a"}, ports={9999: "DISABLE"})
    both = plan_both(mesh(svc(), pod(), pa, mode="PERMISSIVE"))
    assert [t.expect for t in both.live.targets_file.targets] == [Expect.STRICT]


def test_empty_match_labels_is_namespace_level_and_its_ports_are_ignored(plan_both: Plan) -> None:
    """``selector: {matchLabels: {}}`` is namespace-level in ComposePeerAuthentication
    (``len(MatchLabels) == 0``), so its portLevelMtls is ignored; the older namespace
    policy (by creation time) wins."""
    pa = kb.peer_auth("w", "shop", "STRICT", created="2026-02-01T00:00:00Z")
    pa["spec"]["selector"] = {"matchLabels": {}}
    pa["spec"]["portLevelMtls"] = {8080: {"mode": "DISABLE"}}
    both = plan_both(mesh(svc(), pod(), pa, mode="PERMISSIVE"))
    assert [t.expect for t in both.live.targets_file.targets] == [Expect.PERMISSIVE]
    assert "without a workload selector is ignored" in policy_reasons(both)


def test_out_of_range_port_key_is_reported_the_same_on_both_paths(plan_both: Plan) -> None:
    """*fixed*: portLevelMtls key 70000 (uint32 in the API, no port): an error finding -
    YAML gave an int key and JSON a string, and the two plans quoted it differently."""
    pa = kb.peer_auth("w", "shop", None, selector={"app": "a"}, ports={70000: "DISABLE"})
    both = plan_both(mesh(svc(), pod(), pa))
    assert "key '70000' is not a port number" in policy_reasons(both)


# ---- DestinationRules ---------------------------------------------------------------------------


def test_tls_under_a_subset_only_does_not_touch_the_default_route(plan_both: Plan) -> None:
    """Subset traffic policies apply only to traffic routed to that subset (a
    VirtualService names it); the probe's calls use the default cluster: auto-mTLS."""
    dr = kb.dest_rule("d", "shop", "a.shop.svc.cluster.local")
    dr["spec"]["subsets"] = [
        {"name": "v1", "labels": {"app": "a"}, "trafficPolicy": {"tls": {"mode": "DISABLE"}}}
    ]
    both = plan_both(mesh(svc(), pod(), dr))
    assert both.required()[STRICT] == Verdict.PASS


def test_export_to_tilde_hides_the_rule_from_every_client(plan_both: Plan) -> None:
    """exportTo ``~`` exports to no namespace: the DISABLE rule reaches no client."""
    dr = kb.dest_rule("d", "shop", "a.shop.svc.cluster.local", "DISABLE", export_to=["~"])
    both = plan_both(mesh(svc(), pod(), dr))
    assert both.required()[STRICT] == Verdict.PASS


def test_export_to_the_probe_namespace_reaches_the_probe(plan_both: Plan) -> None:
    """exportTo naming the probe's namespace: its sidecar sends plaintext to a STRICT
    port - a certain 503, never a pass."""
    dr = kb.dest_rule("d", "shop", "a.shop.svc.cluster.local", "DISABLE", export_to=["mtlsprobe"])
    both = plan_both(mesh(svc(), pod(), dr))
    assert both.required()[STRICT] == Verdict.FAIL


def test_short_host_resolves_in_the_rules_own_namespace(plan_both: Plan) -> None:
    """A short host ``a`` in a rule in mtlsprobe means a.mtlsprobe.svc.cluster.local
    (Istio resolves short names against the rule's namespace), not shop's a."""
    dr = kb.dest_rule("d", "mtlsprobe", "a", "DISABLE")
    both = plan_both(mesh(svc(), pod(), kb.namespace("mtlsprobe"), dr))
    assert both.required()[STRICT] == Verdict.PASS


def test_host_with_a_dot_is_not_expanded(plan_both: Plan) -> None:
    """``a.shop`` contains a dot: Istio takes it as written, and it names no Service."""
    both = plan_both(mesh(svc(), pod(), kb.dest_rule("d", "shop", "a.shop", "DISABLE")))
    assert both.required()[STRICT] == Verdict.PASS


def test_port_level_settings_are_keyed_by_the_service_port(plan_both: Plan) -> None:
    """DestinationRule portLevelSettings match the *service* port: an entry for 8080 (the
    target port) does nothing; one for 80 makes calls fail against STRICT."""
    dr = kb.dest_rule("d", "shop", "a.shop.svc.cluster.local", port_modes={8080: "DISABLE"})
    assert plan_both(mesh(svc(), pod(), dr)).required()[STRICT] == Verdict.PASS
    dr = kb.dest_rule("d", "shop", "a.shop.svc.cluster.local", port_modes={80: "DISABLE"})
    assert plan_both(mesh(svc(), pod(), dr)).required()[STRICT] == Verdict.FAIL


# ---- names and injection -------------------------------------------------------------------------


def test_unicode_and_uppercase_service_names_are_not_planned(plan_both: Plan) -> None:
    """DNS-1123 labels are lowercase ASCII: no host or identity can be derived."""
    for bad in ("cafè", "Api"):
        both = plan_both(mesh(svc(name=bad), pod()))
        assert both.endpoints() == set()
        assert Verdict.PASS not in both.required().values()


def test_dotted_service_account_is_a_valid_identity(plan_both: Plan) -> None:
    """Service account names are DNS-1123 subdomains (dots allowed), which are valid
    SPIFFE path segments: the identity keeps the dots."""
    both = plan_both(mesh(svc(), pod(sa="a.b-c")))
    assert both.targets()["shop/a:80"].identity == "spiffe://cluster.local/ns/shop/sa/a.b-c"


def test_copied_tls_mode_label_on_a_bare_pod(plan_both: Plan) -> None:
    """A sidecar-less pod carrying ``security.istio.io/tlsMode: istio`` (copied from a
    template): auto-mTLS sends it mTLS it cannot speak, and it accepts plaintext."""
    p = pod(sidecar=False, labels={"app": "a", "security.istio.io/tlsMode": "istio"})
    both = plan_both(mesh(svc(), p))
    assert both.required()[STRICT] == Verdict.FAIL
    assert both.required()[SIDECAR] == Verdict.FAIL


def test_ambient_namespace_pod_opted_out_with_a_copied_redirection_annotation(
    plan_both: Plan,
) -> None:
    """Pod label ``istio.io/dataplane-mode: none`` opts out of an ambient namespace; a
    copied ``ambient.istio.io/redirection`` annotation does not put ztunnel in front."""
    p = pod(
        sidecar=False,
        labels={"app": "a", "istio.io/dataplane-mode": "none"},
        annotations={"ambient.istio.io/redirection": "enabled"},
    )
    both = plan_both(mesh(svc(), p, labels={"istio.io/dataplane-mode": "ambient"}))
    assert [t.expect for t in both.live.targets_file.targets] == [Expect.NONE]
    assert both.required()[SIDECAR] == Verdict.FAIL


def test_namespace_with_injection_and_revision_labels_is_the_default_revision(
    plan_both: Plan,
) -> None:
    """istio-injection=enabled takes precedence over istio.io/rev (the revision webhooks
    require ``istio-injection DoesNotExist``): the pods are the default revision's, so
    a missing istio-canary ConfigMap does not matter."""
    both = plan_both(
        mesh(svc(), pod(), labels={"istio-injection": "enabled", "istio.io/rev": "canary"})
    )
    assert both.endpoints() == {"10.0.0.1:8080"}
    assert both.required()[STRICT] == Verdict.PASS


def test_injection_disabled_namespace_with_revision_label_injects_nothing(tmp_path: Path) -> None:
    """istio-injection=disabled and istio.io/rev=canary: no webhook's namespaceSelector
    matches (rev.namespace/rev.object need istio-injection absent): the pod stays bare."""
    objs = mesh(
        svc(),
        unapplied(pod(sidecar=False)),
        labels={"istio-injection": "disabled", "istio.io/rev": "canary"},
    )
    plan = manifests_only(tmp_path, objs)
    req = {r.target: r.verdict for r in plan.findings if r.check == "require-sidecar"}
    assert req == {"shop/a:80": Verdict.FAIL}


def test_inject_false_label_beats_the_namespace_revision(tmp_path: Path) -> None:
    """Pod label sidecar.istio.io/inject=false: the rev.namespace webhook's objectSelector
    (NotIn ["false"]) skips the pod."""
    p = unapplied(pod(sidecar=False, labels={"app": "a", "sidecar.istio.io/inject": "false"}))
    plan = manifests_only(tmp_path, mesh(svc(), p, labels={"istio.io/rev": "default"}))
    req = {r.target: r.verdict for r in plan.findings if r.check == "require-sidecar"}
    assert req == {"shop/a:80": Verdict.FAIL}


def test_deeply_nested_status_annotation_is_bounded(plan_both: Plan) -> None:
    """A sidecar.istio.io/status of 60,000 nested brackets mentioning "revision": not
    JSON the plan can use; read in bounded time and the pod falls back to its labels."""
    p = pod()
    p["metadata"]["annotations"]["sidecar.istio.io/status"] = "[" * 60_000 + '"revision"'
    both = plan_both(mesh(svc(), p))
    assert both.endpoints() == {"10.0.0.1:8080"}


# ---- more slices and Service ports ---------------------------------------------------------------


def test_two_slices_mapping_one_pod_to_different_ports(plan_both: Plan) -> None:
    """*fixed*: a second (hand-written) slice maps the same pod address to port 22, which a
    port-level policy leaves DISABLE. Istio builds one endpoint per (address, port) of
    every slice of the Service (endpointslice.go ``updateEndpointCacheForSlice``), so
    traffic reaches both; the plan kept only the first slice's and passed."""
    s1 = slice_([ep("10.0.0.1", ready=True)], name="s1")
    s2 = slice_([ep("10.0.0.1", ready=True)], ports=[("http", 22)], name="s2")
    pa = kb.peer_auth("w", "shop", None, selector={"app": "a"}, ports={22: "DISABLE"})
    both = plan_both(mesh(svc(), pod(), s1, s2, pa))
    assert both.endpoints() == {"10.0.0.1:8080", "10.0.0.1:22"}
    assert Verdict.FAIL in {
        v for k, v in both.required().items() if k.startswith("require-strict:shop/a:80")
    }


def test_target_port_zero_is_the_port_itself(plan_both: Plan) -> None:
    """*fixed*: the API server defaults a targetPort of 0 (or "") to ``port``
    (core/v1 SetDefaults_Service); the plan rejected the whole Service, leaving the
    port without any compliance verdict."""
    both = plan_both(mesh(svc(kb.sport(80, 0)), pod(ports=[("http", 80)])))
    assert both.endpoints() == {"10.0.0.1:80"}
    assert both.required()[STRICT] == Verdict.PASS


def test_headless_service_of_injected_pods_keeps_auto_mtls(plan_both: Plan) -> None:
    """A headless Service (clusterIP None) whose endpoints are all labelled
    ``security.istio.io/tlsMode: istio``: Istio keeps auto-mTLS for the passthrough
    cluster, so STRICT holds for mesh clients."""
    both = plan_both(mesh(svc(clusterIP="None"), pod(), pod("a-1", "10.0.0.2")))
    assert both.endpoints() == {"10.0.0.1:8080", "10.0.0.2:8080"}
    assert both.required()[STRICT] == Verdict.PASS


def test_pending_pod_with_an_address_serves_nothing(plan_both: Plan) -> None:
    """phase Pending (containers not started): no endpoint is published for it and it is
    not probed; nothing to verify, compliance errors."""
    p = pod()
    p["status"]["phase"] = "Pending"
    both = plan_both(mesh(svc(), p))
    assert both.endpoints() == set()
    assert both.required()[STRICT] == Verdict.ERROR


def test_selector_never_reaches_into_another_namespace(plan_both: Plan) -> None:
    """A Service's selector picks pods of its own namespace only: matching labels in
    namespace other give shop/a no backend."""
    both = plan_both(mesh(svc(), kb.namespace("other"), pod(ns="other")))
    assert both.endpoints() == set()
    assert both.required()[STRICT] == Verdict.ERROR


def test_port_listed_twice_never_passes(plan_both: Plan) -> None:
    """*fixed*: port 80 twice, to 8080 (STRICT) and to 9090 (DISABLE by a port-level
    policy). The API server refuses duplicate ports (Service validation), so which
    entry a cluster runs is unknown; the plan used to pass the first."""
    p = pod(ports=[("http", 8080), ("web", 9090)])
    pa = kb.peer_auth("w", "shop", None, selector={"app": "a"}, ports={9090: "DISABLE"})
    both = plan_both(
        mesh(svc(kb.sport(80, 8080, name="http"), kb.sport(80, 9090, name="web")), p, pa)
    )
    assert both.required()[STRICT] == Verdict.ERROR
    assert both.required()[SIDECAR] == Verdict.ERROR
