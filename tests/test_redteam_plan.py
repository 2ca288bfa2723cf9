"""Red-team cases for ``mtlsprobe plan`` not covered elsewhere (issue 17 follow-up).

Each case is planned both ways - ``--from-manifests`` and the same objects served by
the fake API server (tests/fakekube.py) - through the ``plan_both`` fixture
(tests/conftest.py, tests/plancase.py), which also asserts the two plans agree and that
the targets file round-trips through ``check``'s loader. Each test names the Istio or
Kubernetes behaviour it encodes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from jobs.cli.main import main as cli_main
from probe.model import Protocol
from probe.results import Verdict
from tests import kubebuild as kb
from tests.plancase import Both, a_pod, base

# ---- UDP / SCTP Service ports ----------------------------------------------------------------


def test_udp_port_never_passes_require_strict(plan_both: Callable[..., Both]) -> None:
    """Istio captures TCP only: the sidecar's iptables rules redirect ``-p tcp``
    (tools/istio-iptables/pkg/capture/run.go) and pkg/config/kube/conversion.go
    ``ConvertProtocol`` makes a UDP Service port protocol UDP, which no mTLS listener
    serves. A STRICT PeerAuthentication therefore says nothing about a UDP port: its
    traffic is plaintext, and ``--require strict`` must not pass (nor exit 0)."""
    service = kb.service(
        "a", "shop", {"app": "a"}, [kb.sport(53, 5353, name="dns", protocol="UDP")]
    )
    b = plan_both([*base(), a_pod(), service])
    assert b.live.targets_file.targets == ()
    req = b.required()
    assert req["require-strict:shop/a:53/udp"] == Verdict.FAIL
    assert "UDP" in b.reasons()
    assert b.live.exit_code() == 1


def test_udp_next_to_tcp_on_the_same_port_number(plan_both: Callable[..., Both]) -> None:
    """DNS-style Services publish 53/TCP and 53/UDP: the TCP port is planned and can
    pass; the UDP one is named apart and fails ``--require strict``."""
    service = kb.service(
        "a",
        "shop",
        {"app": "a"},
        [kb.sport(53, 8053, name="dns-tcp"), kb.sport(53, 8053, name="dns", protocol="UDP")],
    )
    b = plan_both([*base(), a_pod(), service])
    assert [t.name for t in b.live.targets_file.targets] == ["shop/a:53"]
    req = b.required()
    assert req["require-strict:shop/a:53"] == Verdict.PASS
    assert req["require-strict:shop/a:53/udp"] == Verdict.FAIL
    assert b.live.exit_code() == 1


def test_sctp_port_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SCTP is not captured either (iptables rules are ``-p tcp``): the real CLI must
    not exit 0 under ``--require strict`` for a Service whose only port is SCTP."""
    service = kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080, name="x", protocol="SCTP")])
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all([*base(), a_pod(), service]))
    code = cli_main(["plan", "--from-manifests", str(f), "--require", "strict", "-o", "yaml"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL require-strict shop/a:80/sctp" in out


# ---- protocol selection on well-known ports ------------------------------------------------


def test_well_known_ports_without_a_protocol_name_are_tcp(plan_both: Callable[..., Both]) -> None:
    """pkg/config/kube/conversion.go ``ConvertProtocol``: a Service port whose name (or
    appProtocol) names no protocol is sniffed, except on the well-known ports 25, 53,
    3306 and 27017, which Istio configures as TCP. An unnamed MySQL port must be
    probed as TCP (TCP ALPNs, no HTTP request), as Istio's listeners treat it."""
    ports = [
        {"port": 3306, "targetPort": 3306, "protocol": "TCP", "name": "db"},
        {"port": 27017, "targetPort": 27017, "protocol": "TCP", "name": "store"},
        {"port": 8080, "targetPort": 8080, "protocol": "TCP", "name": "web"},
        {"port": 25, "targetPort": 2525, "protocol": "TCP", "name": "http-mail"},
    ]
    service = kb.service("a", "shop", {"app": "a"}, ports)
    b = plan_both([*base(), a_pod(), service])
    got = {t.name: t.protocol for t in b.live.targets_file.targets}
    assert got == {
        "shop/a:3306": Protocol.TCP,
        "shop/a:27017": Protocol.TCP,
        "shop/a:8080": Protocol.HTTP,  # sniffed: planned as HTTP
        "shop/a:25": Protocol.HTTP,  # the name says http: no well-known fallback
    }


# ---- ports the sidecar does not capture ----------------------------------------------------

EXCLUDE = "traffic.sidecar.istio.io/excludeInboundPorts"
INCLUDE = "traffic.sidecar.istio.io/includeInboundPorts"


@pytest.mark.parametrize(
    ("annotations", "strict_ports"),
    [
        ({}, {80, 90}),
        ({EXCLUDE: "8080"}, {90}),
        ({EXCLUDE: " 9090 , 8080"}, set()),
        ({INCLUDE: "9090"}, {90}),
        ({INCLUDE: "*", EXCLUDE: "15020,15021,15090"}, {80, 90}),
        ({INCLUDE: ""}, set()),  # no inbound capture at all
        ({EXCLUDE: "eighty"}, set()),  # unreadable: fail closed, nothing passes
        ({"sidecar.istio.io/interceptionMode": "NONE"}, set()),  # no istio-init at all
        ({"sidecar.istio.io/interceptionMode": "TPROXY"}, {80, 90}),
    ],
)
def test_ports_the_sidecar_does_not_capture_accept_plaintext(
    plan_both: Callable[..., Both], annotations: dict[str, str], strict_ports: set[int]
) -> None:
    """Istio's sidecar redirects inbound TCP to Envoy only for the ports of
    ``traffic.sidecar.istio.io/includeInboundPorts`` (default ``*``) minus
    ``traffic.sidecar.istio.io/excludeInboundPorts`` (tools/istio-iptables/pkg/capture/
    run.go ``handleInboundPortsInclude``: ``-j RETURN`` for excluded ports, an empty
    include list captures nothing; cni/pkg/plugin/sidecar_redirect.go reads the same
    annotations). An uncaptured port reaches the app directly and accepts plaintext
    whatever the PeerAuthentication says: it is no STRICT target and never passes
    ``--require strict``. ``sidecar.istio.io/interceptionMode: NONE`` makes the
    injection template (manifests/charts/istio-control/istio-discovery/files/
    injection-template.yaml) add no istio-init: nothing is captured."""
    pod = a_pod(annotations=annotations)
    service = kb.service(
        "a", "shop", {"app": "a"}, [kb.sport(80, 8080), kb.sport(90, 9090, name="tcp-b")]
    )
    b = plan_both([*base(), pod, service])
    expects = {t.port: t.expect.value for t in b.live.targets_file.targets}
    assert {p for p, e in expects.items() if e == "STRICT"} == strict_ports
    assert {p for p, e in expects.items() if e != "STRICT"} == {80, 90} - strict_ports
    req = b.required()
    for port in (80, 90):
        want = Verdict.PASS if port in strict_ports else Verdict.FAIL
        assert req[f"require-strict:shop/a:{port}"] == want
    if strict_ports != {80, 90}:
        assert "does not capture" in b.reasons()


@pytest.mark.parametrize(
    ("value", "strict"),
    [("true", False), ("1", False), ("True", False), ("false", True), ("yes", True)],
)
def test_ambient_pod_in_ingress_mode_accepts_plaintext(
    plan_both: Callable[..., Both], value: str, strict: bool
) -> None:
    """cni/pkg/nodeagent/net.go: ``ambient.istio.io/bypass-inbound-capture`` (read
    with Go's strconv.ParseBool; other values are ignored) turns off ztunnel's inbound
    redirection for an enrolled pod, so its ports accept plaintext whatever the
    PeerAuthentication says."""
    pod = a_pod(
        sidecar=False,
        annotations={
            "ambient.istio.io/redirection": "enabled",
            "ambient.istio.io/bypass-inbound-capture": value,
        },
    )
    objs = [
        kb.namespace("shop", {"istio.io/dataplane-mode": "ambient"}),
        kb.peer_auth("default", "shop", "STRICT"),
        pod,
        kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
    ]
    b = plan_both(objs)
    (t,) = b.live.targets_file.targets
    assert t.expect.value == ("STRICT" if strict else "NONE")
    assert b.required()["require-strict:shop/a:80"] == (Verdict.PASS if strict else Verdict.FAIL)


# ---- DestinationRule subjectAltNames -----------------------------------------------------


@pytest.mark.parametrize(
    ("tls", "ok"),
    [
        ({"mode": "ISTIO_MUTUAL", "subjectAltNames": ["spiffe://cluster.local/ns/x/sa/y"]}, False),
        (
            {
                "mode": "ISTIO_MUTUAL",
                "subjectAltNames": [
                    "spiffe://cluster.local/ns/x/sa/y",
                    "spiffe://cluster.local/ns/shop/sa/a",
                ],
            },
            True,
        ),
        ({"mode": "ISTIO_MUTUAL", "subjectAltNames": []}, True),  # unset: service accounts
        (
            {
                "mode": "ISTIO_MUTUAL",
                "subjectAltNames": ["spiffe://cluster.local/ns/x/sa/y"],
                "insecureSkipVerify": True,
            },
            True,
        ),
    ],
)
def test_istio_mutual_subject_alt_names_must_name_the_server(
    plan_both: Callable[..., Both], tls: dict[str, object], ok: bool
) -> None:
    """pilot/pkg/networking/core/cluster_tls.go ``buildUpstreamTLSSettings``: with
    ISTIO_MUTUAL the rule's ``subjectAltNames`` replace the service's identities and are
    matched exactly (``StringToExactMatch``); only when they are unset does Istio use
    the service accounts. A rule naming other identities makes every sidecar call to a
    STRICT port fail its handshake (503): ``--require strict`` must not pass."""
    from tests.istiocase import dr

    rule = dr("san", "shop", "a.shop.svc.cluster.local", tls=tls)
    b = plan_both(
        [*base(), a_pod(), kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]), rule]
    )
    assert b.required()["require-strict:shop/a:80"] == (Verdict.PASS if ok else Verdict.FAIL)
    if not ok:
        assert "SAN check fails" in b.reasons()


# ---- Sidecar resources: what the probe's own sidecar can reach --------------------------


def test_probe_namespace_sidecar_resource_that_hides_a_target_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pilot/pkg/model/sidecar.go ``SidecarScope``: a Sidecar's ``egress[].hosts``
    (``./*`` = own namespace only) limit which services the client's proxy knows; with
    ``outboundTrafficPolicy.mode: REGISTRY_ONLY`` anything else goes to
    BlackHoleCluster (502), with ALLOW_ANY to PassthroughCluster (plaintext, no mTLS).
    The probe's sidecar calls shop/a through exactly this, so the plan must say so."""
    sidecar = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": "mtlsprobe"},
        "spec": {
            "egress": [{"hosts": ["./*", "istio-system/*"]}],
            "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"},
        },
    }
    objs = [
        *base(),
        kb.namespace("mtlsprobe", {"istio-injection": "enabled"}),
        sidecar,
        a_pod(),
        kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
    ]
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all(objs))
    cli_main(["plan", "--from-manifests", str(f), "--require", "strict", "-o", "yaml"])
    assert "Sidecar mtlsprobe/default" in capsys.readouterr().out


# ---- loopback and IPv4-mapped pod addresses ------------------------------------------------


@pytest.mark.parametrize(
    "ip", ["127.0.0.1", "127.5.5.5", "::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"]
)
def test_loopback_or_ipv4_mapped_pod_address_is_never_probed(
    plan_both: Callable[..., Both], ip: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kubernetes never gives a pod a loopback address: EndpointSlice validation
    (pkg/apis/discovery/validation ``validateEndpoints`` with core validation
    ``ValidateEndpointIP``) refuses 127.0.0.0/8 and ::1, and an IPv6 address that is an
    IPv4-mapped one (``::ffff:a.b.c.d``) is not IPv6 for k8s.io/utils/net. A probe
    sent there would reach the probe pod itself (its sidecar's admin port 15000), so a
    pod whose status claims one is not probed and the port cannot pass. Only an API
    server on this host's loopback (a test bed, like the fake one here) may have pods
    on 127/8: the live path is run as if the API server were remote."""
    import jobs.plan.discovery

    monkeypatch.setattr(jobs.plan.discovery, "_api_on_loopback", lambda api: False)
    pod = a_pod(ip=ip)
    b = plan_both([*base(), pod, kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)])])
    assert b.endpoints() == set()
    assert b.required()["require-strict:shop/a:80"] != Verdict.PASS


def test_only_a_loopback_api_server_is_a_test_bed() -> None:
    from types import SimpleNamespace

    from jobs.plan.discovery import _api_on_loopback

    def api(host: str) -> object:
        return SimpleNamespace(configuration=SimpleNamespace(host=host))

    assert _api_on_loopback(api("https://127.0.0.1:6443"))
    assert _api_on_loopback(api("http://localhost:8080"))
    assert _api_on_loopback(api("https://[::1]:6443"))
    assert not _api_on_loopback(api("https://10.96.0.1:443"))  # in-cluster
    assert not _api_on_loopback(api("https://127.0.0.1.example.com"))
    assert not _api_on_loopback(object())


def test_the_lab_may_still_plan_loopback_pods() -> None:
    """The lab runs pods on 127.B.x.y (jobs/lab/addresses.py) and says so on its
    snapshot; nothing else may."""
    from jobs.plan.objects import ClusterSnapshot
    from jobs.plan.planner import Requirements, build_plan

    objs = [
        *base(),
        a_pod(ip="127.100.1.1"),
        kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
    ]
    snap = ClusterSnapshot()
    for o in objs:
        snap.add(o["kind"], o)
    snap.loopback_pods = True
    plan = build_plan(snap, Requirements())
    assert [str(e) for t in plan.targets_file.targets for e in t.endpoints] == ["127.100.1.1:8080"]


# ---- findings about policies Istio ignores -----------------------------------------------


def test_ignored_policy_modes_are_not_reported_as_applying(plan_both: Callable[..., Both]) -> None:
    """pilot/pkg/model/authentication.go: a policy with an empty ``selector`` is
    namespace-wide (``len(MatchLabels) == 0``), and its ``portLevelMtls`` is ignored
    (policy_applier.go applies port-level modes only from a workload policy); a second
    namespace-wide policy loses to the older one. Neither may produce a "port ... is
    DISABLE" / "turns mTLS off" finding as if it applied - only the "ignored" ones."""
    late = "2026-06-01T00:00:00Z"
    empty_sel = kb.peer_auth("ws", "shop", None, ports={8080: "DISABLE"}, created=late)
    empty_sel["spec"]["selector"] = {}
    loser = kb.peer_auth("zz-off", "shop", "DISABLE", created=late)
    b = plan_both(
        [
            *base(),
            empty_sel,
            loser,
            a_pod(),
            kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
        ]
    )
    about = {
        r.reason
        for r in b.findings()
        if r.target in ("PeerAuthentication shop/ws", "PeerAuthentication shop/zz-off")
    }
    assert not any("is DISABLE" in x or "turns mTLS off" in x for x in about), about
    assert any("portLevelMtls without a workload selector is ignored" in x for x in about)
    assert any("ignored: the older shop/default" in x for x in about)
    assert b.required()["require-strict:shop/a:80"] == Verdict.PASS


def test_namespace_policy_keeps_its_mode_when_its_port_entries_are_ignored(
    plan_both: Callable[..., Both],
) -> None:
    """The same rule from the other side: a namespace-wide policy whose portLevelMtls
    Istio ignores still sets the namespace mode, and that mode is reported."""
    ns_pa = kb.peer_auth("default", "shop", "DISABLE", ports={8080: "STRICT"})
    objs = [kb.namespace("shop", {"istio-injection": "enabled"}), ns_pa, a_pod()]
    b = plan_both([*objs, kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)])])
    about = {r.reason for r in b.findings() if r.target == "PeerAuthentication shop/default"}
    assert "mode DISABLE: turns mTLS off" in about
    assert not any("(target port)" in x for x in about)
    assert b.required()["require-strict:shop/a:80"] == Verdict.FAIL
