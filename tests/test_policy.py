"""Istio's policy semantics, one case per documented rule (docs/istio-behaviour.md,
Policy; istio.io PeerAuthentication / DestinationRule reference)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from jobs.plan.policy import (
    ClientTls,
    DestinationRuleIndex,
    DrTls,
    Outcome,
    PeerAuthIndex,
    client_view,
    expect_for,
    port_protocol,
    resolve_target_port,
)
from probe.model import Expect, Protocol
from tests.kubebuild import dest_rule, peer_auth, pod

OLD, MID, NEW = "2025-01-01T00:00:00Z", "2025-06-01T00:00:00Z", "2026-01-01T00:00:00Z"
APP = {"app": "checkout"}


@dataclass(frozen=True)
class Case:
    id: str
    policies: list[dict[str, Any]]
    port: int | None
    want: Expect
    source: str  # a fragment of the deciding source
    ns: str = "shop"
    labels: dict[str, str] | None = None
    root: str = "istio-system"


CASES = [
    Case("no policy at all is PERMISSIVE", [], 8080, Expect.PERMISSIVE, "Istio default"),
    Case(
        "mesh policy applies everywhere",
        [peer_auth("default", "istio-system", "STRICT")],
        8080,
        Expect.STRICT,
        "mesh PeerAuthentication istio-system/default",
    ),
    Case(
        "namespace overrides mesh",
        [
            peer_auth("default", "istio-system", "STRICT"),
            peer_auth("default", "shop", "PERMISSIVE"),
        ],
        8080,
        Expect.PERMISSIVE,
        "namespace PeerAuthentication shop/default",
    ),
    Case(
        "workload overrides namespace",
        [
            peer_auth("default", "shop", "STRICT"),
            peer_auth("w", "shop", "DISABLE", selector=APP),
        ],
        8080,
        Expect.DISABLE,
        "workload PeerAuthentication shop/w",
    ),
    Case(
        "a selector that does not match leaves the namespace mode",
        [
            peer_auth("default", "shop", "STRICT"),
            peer_auth("w", "shop", "DISABLE", selector={"app": "other"}),
        ],
        8080,
        Expect.STRICT,
        "namespace",
    ),
    Case(
        "a workload policy of another namespace does not apply",
        [peer_auth("w", "legacy", "DISABLE", selector=APP)],
        8080,
        Expect.PERMISSIVE,
        "Istio default",
    ),
    Case(
        "oldest namespace policy wins",
        [
            peer_auth("a-newer", "shop", "PERMISSIVE", created=NEW),
            peer_auth("z-older", "shop", "STRICT", created=OLD),
        ],
        8080,
        Expect.STRICT,
        "shop/z-older",
    ),
    Case(
        "same creation time: the name decides",
        [
            peer_auth("b", "shop", "STRICT", created=MID),
            peer_auth("a", "shop", "DISABLE", created=MID),
        ],
        8080,
        Expect.DISABLE,
        "shop/a",
    ),
    Case(
        "oldest workload policy wins",
        [
            peer_auth("new", "shop", "DISABLE", selector=APP, created=NEW),
            peer_auth("old", "shop", "STRICT", selector=APP, created=OLD),
        ],
        8080,
        Expect.STRICT,
        "shop/old",
    ),
    Case(
        "only the oldest workload policy's port levels count",
        [
            peer_auth("old", "shop", "STRICT", selector=APP, created=OLD),
            peer_auth("new", "shop", "STRICT", selector=APP, ports={8080: "DISABLE"}, created=NEW),
        ],
        8080,
        Expect.STRICT,
        "shop/old",
    ),
    Case(
        "namespace UNSET inherits the mesh",
        [peer_auth("default", "istio-system", "STRICT"), peer_auth("default", "shop", "UNSET")],
        8080,
        Expect.STRICT,
        "mesh",
    ),
    Case(
        "workload without mtls inherits the namespace",
        [peer_auth("default", "shop", "DISABLE"), peer_auth("w", "shop", None, selector=APP)],
        8080,
        Expect.DISABLE,
        "namespace",
    ),
    Case(
        "mesh UNSET is PERMISSIVE",
        [peer_auth("default", "istio-system", "UNSET")],
        8080,
        Expect.PERMISSIVE,
        "Istio default",
    ),
    Case(
        "portLevelMtls is keyed by the target port",
        [peer_auth("w", "shop", "STRICT", selector=APP, ports={9090: "PERMISSIVE"})],
        9090,
        Expect.PERMISSIVE,
        "shop/w port 9090",
    ),
    Case(
        "the service port does not match a portLevelMtls key",
        [peer_auth("w", "shop", "STRICT", selector=APP, ports={9090: "PERMISSIVE"})],
        9091,
        Expect.STRICT,
        "workload PeerAuthentication shop/w",
    ),
    Case(
        "portLevelMtls keys as JSON strings",
        [peer_auth("w", "shop", "STRICT", selector=APP, ports={"9090": "DISABLE"})],
        9090,
        Expect.DISABLE,
        "port 9090",
    ),
    Case(
        "port UNSET inherits the workload mode, not the namespace",
        [
            peer_auth("default", "shop", "PERMISSIVE"),
            peer_auth("w", "shop", "STRICT", selector=APP, ports={8080: "UNSET"}),
        ],
        8080,
        Expect.STRICT,
        "workload PeerAuthentication shop/w",
    ),
    Case(
        "port UNSET with workload UNSET goes up to the namespace",
        [
            peer_auth("default", "shop", "DISABLE"),
            peer_auth("w", "shop", "UNSET", selector=APP, ports={8080: None}),
        ],
        8080,
        Expect.DISABLE,
        "namespace",
    ),
    Case(
        "portLevelMtls without a selector is ignored",
        [peer_auth("default", "shop", "STRICT", ports={8080: "DISABLE"})],
        8080,
        Expect.STRICT,
        "namespace",
    ),
    Case(
        "a selector policy in the root namespace is ignored",
        [
            peer_auth("default", "istio-system", "STRICT"),
            peer_auth("w", "istio-system", "DISABLE", selector=APP),
        ],
        8080,
        Expect.STRICT,
        "mesh",
    ),
    Case(
        "an empty selector is namespace level",
        [
            {
                **peer_auth("default", "shop", "DISABLE"),
                "spec": {"selector": {"matchLabels": {}}, "mtls": {"mode": "DISABLE"}},
            }
        ],
        8080,
        Expect.DISABLE,
        "namespace",
    ),
    Case(
        "a custom root namespace holds the mesh policy",
        [
            peer_auth("default", "mesh-root", "STRICT"),
            peer_auth("default", "istio-system", "DISABLE"),
        ],
        8080,
        Expect.STRICT,
        "mesh PeerAuthentication mesh-root/default",
        root="mesh-root",
    ),
    Case(
        "pods in the root namespace: its selector-less policy is the mesh policy",
        [peer_auth("default", "istio-system", "STRICT")],
        15017,
        Expect.STRICT,
        "mesh",
        ns="istio-system",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_effective_mode(case: Case) -> None:
    idx = PeerAuthIndex(case.policies, case.root)
    got = idx.effective(case.ns, case.labels or APP, case.port)
    assert got.mode == case.want, got.source
    assert case.source in got.source


def test_ignored_and_shadowed_policies_are_reported() -> None:
    idx = PeerAuthIndex(
        [
            peer_auth("w", "istio-system", "DISABLE", selector=APP),
            peer_auth("default", "shop", "STRICT", ports={8080: "DISABLE"}),
            peer_auth("older", "legacy", "STRICT", created=OLD),
            peer_auth("newer", "legacy", "DISABLE", created=NEW),
        ],
        "istio-system",
    )
    why = {f"{pa['metadata']['namespace']}/{pa['metadata']['name']}": w for pa, w in idx.ignored}
    assert "root namespace" in why["istio-system/w"]
    assert "without a workload selector" in why["shop/default"]
    assert [(a["metadata"]["name"], b["metadata"]["name"]) for a, b in idx.shadowed] == [
        ("newer", "older")
    ]


# ---- sidecars, injection, ambient ------------------------------------------------------------


def test_expect_without_a_proxy_is_none() -> None:
    assert expect_for(Expect.STRICT, sidecar=False, ambient=False) == Expect.NONE
    assert expect_for(Expect.STRICT, sidecar=False, ambient=True) == Expect.STRICT
    assert expect_for(Expect.DISABLE, sidecar=True, ambient=False) == Expect.DISABLE


# ---- ports and protocols -------------------------------------------------------------------------


WEB = pod("p", "shop", ports=[("web", 8081), ("metrics", 9090)])


@pytest.mark.parametrize(
    ("sp", "want"),
    [
        ({"port": 80, "targetPort": 8080}, 8080),
        ({"port": 80}, 80),
        ({"port": 80, "targetPort": "web"}, 8081),
        ({"port": 80, "targetPort": "8082"}, 8082),
        ({"port": 80, "targetPort": "nope"}, None),
        ({"port": 80, "targetPort": "web", "protocol": "UDP"}, None),
    ],
)
def test_target_port_resolution(sp: dict[str, Any], want: int | None) -> None:
    assert resolve_target_port(sp, WEB) == want


@pytest.mark.parametrize(
    ("sp", "want"),
    [
        ({"name": "http"}, Protocol.HTTP),
        ({"name": "http-web"}, Protocol.HTTP),
        ({"name": "grpc-api"}, Protocol.HTTP),
        ({"name": "grpc-web"}, Protocol.HTTP),
        ({"name": "http2"}, Protocol.HTTP),
        ({"name": "tcp-db"}, Protocol.TCP),
        ({"name": "tls"}, Protocol.TCP),
        ({"name": "https"}, Protocol.TCP),
        ({"name": "mongo"}, Protocol.TCP),
        ({"name": "redis-cache"}, Protocol.TCP),
        ({"name": "http", "appProtocol": "tcp"}, Protocol.TCP),
        ({"name": "db", "appProtocol": "kubernetes.io/h2c"}, Protocol.HTTP),
        ({}, Protocol.HTTP),
    ],
)
def test_protocol_selection(sp: dict[str, Any], want: Protocol) -> None:
    assert port_protocol(sp) == want


# ---- DestinationRules ----------------------------------------------------------------------------

HOST = "orders.shop.svc.cluster.local"


def _tls(rules: list[dict[str, Any]], port: int = 80, client: str | None = "mtlsprobe") -> DrTls:
    return DestinationRuleIndex(rules, "istio-system", "cluster.local").tls_for(
        HOST, "shop", port, client
    )


@pytest.mark.parametrize(
    ("desc", "rules", "port", "client", "want"),
    [
        ("no rule", [], 80, "mtlsprobe", None),
        (
            "short host is in the rule's namespace",
            [dest_rule("d", "shop", "orders", "DISABLE")],
            80,
            "mtlsprobe",
            "DISABLE",
        ),
        (
            "short host in another namespace is another host",
            [dest_rule("d", "legacy", "orders", "DISABLE")],
            80,
            "mtlsprobe",
            None,
        ),
        (
            "FQDN host in an unrelated namespace is never consulted (push_context.go "
            "destinationRule: client, service, root namespace only)",
            [dest_rule("d", "legacy", HOST, "SIMPLE")],
            80,
            "mtlsprobe",
            None,
        ),
        (
            "FQDN host in the service's namespace",
            [dest_rule("d", "shop", HOST, "SIMPLE")],
            80,
            "mtlsprobe",
            "SIMPLE",
        ),
        (
            "namespace wildcard",
            [dest_rule("d", "shop", "*.shop.svc.cluster.local", "ISTIO_MUTUAL")],
            80,
            "mtlsprobe",
            "ISTIO_MUTUAL",
        ),
        (
            "exact host beats a wildcard",
            [
                dest_rule("a", "shop", "*.shop.svc.cluster.local", "ISTIO_MUTUAL", created=OLD),
                dest_rule("b", "shop", HOST, "DISABLE", created=NEW),
            ],
            80,
            "mtlsprobe",
            "DISABLE",
        ),
        (
            "port level by service port",
            [dest_rule("d", "shop", HOST, "ISTIO_MUTUAL", port_modes={80: "DISABLE"})],
            80,
            "mtlsprobe",
            "DISABLE",
        ),
        (
            "port level for another port",
            [dest_rule("d", "shop", HOST, "ISTIO_MUTUAL", port_modes={8080: "DISABLE"})],
            80,
            "mtlsprobe",
            "ISTIO_MUTUAL",
        ),
        (
            "the client's namespace comes first",
            [
                dest_rule("svc", "shop", HOST, "DISABLE"),
                dest_rule("cli", "mtlsprobe", HOST, "ISTIO_MUTUAL"),
            ],
            80,
            "mtlsprobe",
            "ISTIO_MUTUAL",
        ),
        (
            "then the service's namespace, before the root namespace",
            [
                dest_rule("root", "istio-system", HOST, "ISTIO_MUTUAL"),
                dest_rule("svc", "shop", HOST, "DISABLE"),
            ],
            80,
            "mtlsprobe",
            "DISABLE",
        ),
        (
            "exportTo '.' hides it from other namespaces",
            [dest_rule("d", "shop", HOST, "DISABLE", export_to=["."])],
            80,
            "mtlsprobe",
            None,
        ),
        (
            "exportTo '.' applies in its own namespace",
            [dest_rule("d", "shop", HOST, "DISABLE", export_to=["."])],
            80,
            "shop",
            "DISABLE",
        ),
    ],
)
def test_destination_rule_lookup(
    desc: str, rules: list[dict[str, Any]], port: int, client: str, want: str | None
) -> None:
    assert _tls(rules, port, client).mode == want, desc


@pytest.mark.parametrize(
    ("desc", "dr", "mode", "proxy", "label", "tls", "outcome"),
    [
        (
            "auto-mTLS to a sidecar",
            None,
            Expect.STRICT,
            True,
            "istio",
            ClientTls.ISTIO_MTLS,
            Outcome.OK,
        ),
        (
            "auto-mTLS skips a DISABLE port",
            None,
            Expect.DISABLE,
            True,
            "istio",
            ClientTls.PLAINTEXT,
            Outcome.OK,
        ),
        (
            "no label: plaintext to a bare pod",
            None,
            Expect.STRICT,
            False,
            None,
            ClientTls.PLAINTEXT,
            Outcome.OK,
        ),
        (
            "no label but a STRICT sidecar: 503",
            None,
            Expect.STRICT,
            True,
            None,
            ClientTls.PLAINTEXT,
            Outcome.FAIL,
        ),
        (
            "label without a sidecar: TLS to a plaintext app",
            None,
            Expect.PERMISSIVE,
            False,
            "istio",
            ClientTls.ISTIO_MTLS,
            Outcome.FAIL,
        ),
        (
            "DISABLE to STRICT: 503",
            "DISABLE",
            Expect.STRICT,
            True,
            "istio",
            ClientTls.PLAINTEXT,
            Outcome.FAIL,
        ),
        (
            "DISABLE to PERMISSIVE works",
            "DISABLE",
            Expect.PERMISSIVE,
            True,
            "istio",
            ClientTls.PLAINTEXT,
            Outcome.OK,
        ),
        (
            "ISTIO_MUTUAL to no sidecar fails",
            "ISTIO_MUTUAL",
            Expect.STRICT,
            False,
            None,
            ClientTls.ISTIO_MTLS,
            Outcome.FAIL,
        ),
        (
            "ISTIO_MUTUAL to a sidecar",
            "ISTIO_MUTUAL",
            Expect.PERMISSIVE,
            True,
            "istio",
            ClientTls.ISTIO_MTLS,
            Outcome.OK,
        ),
        (
            "SIMPLE to STRICT fails: no client certificate, STRICT requires one",
            "SIMPLE",
            Expect.STRICT,
            True,
            "istio",
            ClientTls.SIMPLE,
            Outcome.FAIL,
        ),
        (
            "SIMPLE to PERMISSIVE is flagged",
            "SIMPLE",
            Expect.PERMISSIVE,
            True,
            "istio",
            ClientTls.SIMPLE,
            Outcome.UNKNOWN,
        ),
        (
            "MUTUAL with its own certificates to STRICT fails",
            "MUTUAL",
            Expect.STRICT,
            True,
            "istio",
            ClientTls.MUTUAL,
            Outcome.FAIL,
        ),
        (
            "MUTUAL to a pod without a sidecar is flagged",
            "MUTUAL",
            Expect.STRICT,
            False,
            None,
            ClientTls.MUTUAL,
            Outcome.UNKNOWN,
        ),
    ],
)
def test_client_view(
    desc: str, dr: str | None, mode: Expect, proxy: bool, label: str | None, tls: str, outcome: str
) -> None:
    v = client_view(DrTls(dr, "DestinationRule shop/d" if dr else None), mode, proxy, label)
    assert (v.tls, v.outcome) == (tls, outcome), desc
    assert v.mtls is (tls == ClientTls.ISTIO_MTLS)
