"""DestinationRules as istiod resolves them for the probe's sidecar (issue 17, rule 3).

Each case names the Istio source it encodes (istio/istio master, read 2026-11):
- pilot/pkg/model/push_context.go ``destinationRule`` / ``setDestinationRules`` /
  ``sortConfigBySelectorAndCreationTime``
- pilot/pkg/model/destination_rule.go ``mergeDestinationRule``
- pilot/pkg/model/sidecar.go ``SidecarScope.DestinationRule``
- pilot/pkg/model/config.go ``ResolveShortnameToFQDN``, ``MostSpecificHostMatch``
- pilot/pkg/networking/util/util.go ``GetPortLevelTrafficPolicy``
- pilot/pkg/networking/core/cluster_tls.go ``buildUpstreamTLSSettings``,
  ``buildUpstreamClusterTLSContext``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.plan.policy import (
    PROBE_CLIENT_LABELS,
    ClientTls,
    DestinationRuleIndex,
    DrTls,
    Outcome,
    client_view,
)
from probe.model import Expect
from tests import kubebuild as kb
from tests.istiocase import dr, finding, plan_both, targets, verdicts

HOST = "orders.shop.svc.cluster.local"
PROBE = "mtlsprobe"
ROOT = "istio-system"
OLD, NEW = "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z"
PROBE_SEL = {"app.kubernetes.io/name": "mtlsprobe"}


@dataclass(frozen=True)
class Case:
    id: str
    rules: list[dict[str, Any]]
    want: str | None  # the TLS mode the probe's sidecar uses; None: auto-mTLS
    port: int = 80
    client: str | None = PROBE
    source: str | None = None  # fragment of DrTls.source
    default_export_to: tuple[str, ...] = ("*",)


CASES = [
    # -- where rules are looked up: push_context.go destinationRule -------------------------
    Case(
        "client namespace first (step 1: namespaceLocal of the proxy's namespace)",
        [dr("svc", "shop", HOST, "DISABLE"), dr("cli", PROBE, HOST, "ISTIO_MUTUAL")],
        "ISTIO_MUTUAL",
    ),
    Case(
        "then the service's namespace, before the root (steps 2-3)",
        [dr("root", ROOT, HOST, "ISTIO_MUTUAL"), dr("svc", "shop", HOST, "DISABLE")],
        "DISABLE",
    ),
    Case(
        "the root namespace last (step 4)",
        [dr("root", ROOT, HOST, "DISABLE")],
        "DISABLE",
    ),
    Case(
        "never an unrelated namespace, even with exportTo '*'",
        [dr("other", "legacy", HOST, "DISABLE", export_to=["*"])],
        None,
    ),
    Case(
        "a client-namespace rule for a wildcard beats an exact rule in the service namespace "
        "(the first namespace with any match decides)",
        [
            dr("svc", "shop", HOST, "DISABLE"),
            dr("cli", PROBE, "*.svc.cluster.local", "ISTIO_MUTUAL"),
        ],
        "ISTIO_MUTUAL",
    ),
    # -- exportTo: setDestinationRules + getExportedDestinationRuleFromNamespace -----------------
    Case(
        "exportTo '.' hides a service-namespace rule; the root rule applies",
        [dr("svc", "shop", HOST, "DISABLE", export_to=["."]), dr("root", ROOT, HOST, "SIMPLE")],
        "SIMPLE",
    ),
    Case(
        "exportTo its own namespace only is private too",
        [dr("svc", "shop", HOST, "DISABLE", export_to=["shop"])],
        None,
    ),
    Case(
        "exportTo a list naming the client's namespace",
        [dr("svc", "shop", HOST, "DISABLE", export_to=["billing", PROBE])],
        "DISABLE",
    ),
    Case(
        "exportTo a list without the client's namespace",
        [dr("svc", "shop", HOST, "DISABLE", export_to=["billing", "shop"])],
        None,
    ),
    Case(
        "exportTo '~' is visible nowhere",
        [dr("svc", "shop", HOST, "DISABLE", export_to=["~"])],
        None,
    ),
    Case(
        "exportTo '.' in the client's own namespace applies to it",
        [dr("cli", PROBE, HOST, "DISABLE", export_to=["."])],
        "DISABLE",
    ),
    Case(
        "a rule in the client's namespace exported only elsewhere is not local to it",
        [dr("cli", PROBE, HOST, "DISABLE", export_to=["billing"])],
        None,
    ),
    Case(
        "mesh defaultDestinationRuleExportTo '.' makes rules without exportTo private",
        [dr("svc", "shop", HOST, "DISABLE")],
        None,
        default_export_to=(".",),
    ),
    # -- workloadSelector: sidecar.go SidecarScope.DestinationRule ---------------------------
    Case(
        "a selector rule in the client's namespace that selects the probe applies",
        [dr("cli", PROBE, HOST, "DISABLE", selector=PROBE_SEL)],
        "DISABLE",
    ),
    Case(
        "a selector rule beats the selector-less one in the same namespace",
        [
            dr("all", PROBE, HOST, "ISTIO_MUTUAL", created=OLD),
            dr("sel", PROBE, HOST, "DISABLE", selector=PROBE_SEL, created=NEW),
        ],
        "DISABLE",
    ),
    Case(
        "a selector rule that does not select the probe: the selector-less one",
        [
            dr("all", PROBE, HOST, "ISTIO_MUTUAL"),
            dr("sel", PROBE, HOST, "DISABLE", selector={"app": "other"}),
        ],
        "ISTIO_MUTUAL",
    ),
    Case(
        "a selector rule that does not select the probe still hides the service's rules",
        [
            dr("sel", PROBE, HOST, "ISTIO_MUTUAL", selector={"app": "other"}),
            dr("svc", "shop", HOST, "DISABLE"),
        ],
        None,
    ),
    Case(
        "a selector rule in the service's namespace is private: never the probe's",
        [dr("svc", "shop", HOST, "DISABLE", selector={})],
        None,
    ),
    Case(
        "a selector rule in the service's namespace even with exportTo '*'",
        [dr("svc", "shop", HOST, "DISABLE", selector={}, export_to=["*"])],
        None,
    ),
    # -- hosts: ResolveShortnameToFQDN, MostSpecificHostMatch ------------------------------------
    Case(
        "a short host is in the rule's namespace", [dr("d", "shop", "orders", "DISABLE")], "DISABLE"
    ),
    Case(
        "a short host in another namespace names another service",
        [dr("d", PROBE, "orders", "DISABLE")],
        None,
    ),
    Case(
        "a dotted short name is not completed",
        [dr("d", "shop", "orders.shop", "DISABLE")],
        None,
    ),
    Case(
        "exact beats wildcard, whatever the age",
        [
            dr("w", "shop", "*.shop.svc.cluster.local", "ISTIO_MUTUAL", created=OLD),
            dr("e", "shop", HOST, "DISABLE", created=NEW),
        ],
        "DISABLE",
    ),
    Case(
        "the longer wildcard wins",
        [
            dr("a", "shop", "*.cluster.local", "ISTIO_MUTUAL", created=OLD),
            dr("b", "shop", "*.shop.svc.cluster.local", "DISABLE", created=NEW),
        ],
        "DISABLE",
    ),
    Case("'*' matches every host", [dr("a", "shop", "*", "DISABLE")], "DISABLE"),
    # -- port level: GetPortLevelTrafficPolicy ---------------------------------------------------
    Case(
        "a port entry without tls replaces the top-level tls: auto-mTLS",
        [
            dr(
                "d",
                "shop",
                HOST,
                "DISABLE",
                ports=[{"port": {"number": 80}, "connectionPool": {"tcp": {"maxConnections": 9}}}],
            )
        ],
        None,
        source="DestinationRule shop/d port 80",
    ),
    Case(
        "a port entry for another port leaves the top level",
        [
            dr(
                "d",
                "shop",
                HOST,
                "DISABLE",
                ports=[{"port": {"number": 81}, "tls": {"mode": "SIMPLE"}}],
            )
        ],
        "DISABLE",
    ),
    Case(
        "the first entry for the port counts",
        [
            dr(
                "d",
                "shop",
                HOST,
                "ISTIO_MUTUAL",
                ports=[
                    {"port": {"number": 80}, "tls": {"mode": "DISABLE"}},
                    {"port": {"number": 80}, "tls": {"mode": "SIMPLE"}},
                ],
            )
        ],
        "DISABLE",
    ),
    # -- mode's zero value: istio/api ClientTLSSettings.TLSmode DISABLE = 0 ----------------------
    Case("tls without mode is DISABLE", [dr("d", "shop", HOST, tls={"sni": "x"})], "DISABLE"),
    Case("tls: {} is DISABLE", [dr("d", "shop", HOST, tls={})], "DISABLE"),
    Case(
        "a port entry with tls but no mode is DISABLE",
        [dr("d", "shop", HOST, "ISTIO_MUTUAL", ports=[{"port": {"number": 80}, "tls": {}}])],
        "DISABLE",
    ),
    # -- merging: mergeDestinationRule after sortConfigBySelectorAndCreationTime -----------------
    Case(
        "same host, same namespace: the oldest rule's traffic policy wins",
        [
            dr("new", "shop", HOST, "ISTIO_MUTUAL", created=NEW),
            dr("old", "shop", HOST, "DISABLE", created=OLD),
        ],
        "DISABLE",
        source="DestinationRule shop/old",
    ),
    Case(
        "the oldest without a traffic policy takes the next one's",
        [
            dr("old", "shop", HOST, policy=False, subsets=["v1"], created=OLD),
            dr("new", "shop", HOST, "DISABLE", created=NEW),
        ],
        "DISABLE",
        source="DestinationRule shop/new",
    ),
    Case(
        "an empty trafficPolicy is a policy: later tls is not taken",
        [
            dr("old", "shop", HOST, created=OLD),
            dr("new", "shop", HOST, "DISABLE", created=NEW),
        ],
        None,
    ),
    Case(
        "an offset timestamp is compared as a time, not as text",
        [
            dr("a", "shop", HOST, "ISTIO_MUTUAL", created="2025-01-01T00:00:00Z"),
            dr("b", "shop", HOST, "DISABLE", created="2025-01-01T01:00:00+02:00"),
        ],
        "DISABLE",
    ),
    Case(
        "equal timestamps: name decides",
        [dr("b", "shop", HOST, "ISTIO_MUTUAL"), dr("a", "shop", HOST, "DISABLE")],
        "DISABLE",
    ),
    Case(
        "unmerged rules (exportTo {} and {'*'}): SidecarScope.DestinationRule keeps the last "
        "selector-less one, the newer",
        [
            dr("old", "shop", HOST, "DISABLE", created=OLD),
            dr("new", "shop", HOST, "ISTIO_MUTUAL", export_to=["*"], created=NEW),
        ],
        "ISTIO_MUTUAL",
    ),
    Case(
        "different exportTo do not merge: the exported one is what the client sees",
        [
            dr("old", "shop", HOST, "DISABLE", export_to=["."], created=OLD),
            dr("new", "shop", HOST, "ISTIO_MUTUAL", created=NEW),
        ],
        "ISTIO_MUTUAL",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_destination_rule_resolution(case: Case) -> None:
    index = DestinationRuleIndex(
        case.rules, ROOT, "cluster.local", default_export_to=case.default_export_to
    )
    got = index.tls_for(HOST, "shop", case.port, case.client)
    assert got.mode == case.want, case.id
    if case.source is not None:
        assert got.source == case.source


def test_probe_labels_are_the_probe_pods() -> None:
    """The labels a client-namespace workloadSelector is matched against are the ones the
    probe's sidecar pod really carries (jobs/launch/jobspec.py)."""
    from jobs.launch.jobspec import RunSpec, labels
    from probe.constants import INJECT_LABEL

    spec = RunSpec(run_id="r1", image="mtlsprobe:test")
    pod_labels = {**labels(spec, "sidecar"), INJECT_LABEL: "true"}
    assert PROBE_CLIENT_LABELS.items() <= pod_labels.items()


def test_client_in_the_root_namespace_uses_root_private_rules() -> None:
    """push_context.go destinationRule: a proxy in the root namespace looks at the root's
    private (exportTo '.') rules first, then as anyone else."""
    rules = [dr("p", ROOT, HOST, "DISABLE", export_to=["."]), dr("s", "shop", HOST, "SIMPLE")]
    index = DestinationRuleIndex(rules, ROOT, "cluster.local")
    assert index.tls_for(HOST, "shop", 80, ROOT).mode == "DISABLE"
    assert index.tls_for(HOST, "shop", 80, PROBE).mode == "SIMPLE"


def test_merged_rules_are_named() -> None:
    rules = [
        dr("old", "shop", HOST, "DISABLE", created=OLD, subsets=["v1"]),
        dr("new", "shop", HOST, "SIMPLE", created=NEW, subsets=["v2"]),
    ]
    index = DestinationRuleIndex(rules, ROOT, "cluster.local")
    assert index.rule_for(HOST, "shop", PROBE) == ["shop/old", "shop/new"]


# ---- what the client then does: cluster_tls.go ------------------------------------------------


@pytest.mark.parametrize(
    ("desc", "tls", "selector", "server", "want_tls", "outcome"),
    [
        (
            "credentialName without workloadSelector: no TLS built for sidecars, plaintext",
            {"mode": "SIMPLE", "credentialName": "orders-ca"},
            None,
            Expect.STRICT,
            ClientTls.PLAINTEXT,
            Outcome.FAIL,
        ),
        (
            "credentialName with a workloadSelector is used: SIMPLE to STRICT fails",
            {"mode": "SIMPLE", "credentialName": "orders-ca"},
            PROBE_SEL,
            Expect.STRICT,
            ClientTls.SIMPLE,
            Outcome.FAIL,
        ),
        (
            "MUTUAL without client certificate files: the TLS context fails, plaintext",
            {"mode": "MUTUAL", "caCertificates": "/ca.pem"},
            None,
            Expect.PERMISSIVE,
            ClientTls.PLAINTEXT,
            Outcome.OK,
        ),
        (
            "MUTUAL with its own files to STRICT fails",
            {"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem"},
            None,
            Expect.STRICT,
            ClientTls.MUTUAL,
            Outcome.FAIL,
        ),
        (
            "MUTUAL with Istio's own certificate files may work",
            {
                "mode": "MUTUAL",
                "clientCertificate": "/etc/certs/cert-chain.pem",
                "privateKey": "/etc/certs/key.pem",
                "caCertificates": "/etc/certs/root-cert.pem",
            },
            None,
            Expect.STRICT,
            ClientTls.MUTUAL,
            Outcome.UNKNOWN,
        ),
    ],
)
def test_client_tls_as_istio_builds_it(
    desc: str,
    tls: dict[str, Any],
    selector: dict[str, str] | None,
    server: Expect,
    want_tls: str,
    outcome: str,
) -> None:
    index = DestinationRuleIndex(
        [dr("d", PROBE, HOST, tls=tls, selector=selector)], ROOT, "cluster.local"
    )
    view = client_view(index.tls_for(HOST, "shop", 80, PROBE), server, True, "istio")
    assert (view.tls, view.outcome) == (want_tls, outcome), desc


def test_auto_mtls_off_sends_plaintext() -> None:
    """cluster_tls.go buildUpstreamTLSSettings: no DR TLS and enableAutoMtls false -> no
    TLS; plaintext to a STRICT sidecar is a 503."""
    index = DestinationRuleIndex([], ROOT, "cluster.local", auto_mtls=False)
    view = client_view(index.tls_for(HOST, "shop", 80, PROBE), Expect.STRICT, True, "istio")
    assert (view.tls, view.outcome) == (ClientTls.PLAINTEXT, Outcome.FAIL)
    assert "enableAutoMtls" in view.reason
    on = client_view(DrTls(), Expect.STRICT, True, "istio")
    assert (on.tls, on.outcome) == (ClientTls.ISTIO_MTLS, Outcome.OK)


# ---- the same objects through --from-manifests and the live API ----------------------------------

_PROBE_LABELS = dict(PROBE_CLIENT_LABELS)


def _svc(name: str, ip: str) -> list[dict[str, Any]]:
    return [
        kb.pod(name, "shop", {"app": name}, ip=ip, sa=name),
        kb.service(name, "shop", {"app": name}, [kb.sport(80, 8080)]),
    ]


def _host(name: str) -> str:
    return f"{name}.shop.svc.cluster.local"


def _cluster() -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [
        kb.namespace(ROOT),
        kb.namespace("shop"),
        kb.namespace(PROBE),
        kb.namespace("legacy"),
        kb.peer_auth("default", ROOT, "STRICT"),
    ]
    names = [
        "plain", "unrelated", "simple", "portauto", "nomode", "selected", "notselected",
        "tenantsel", "merged", "mutual", "portmutual", "portonly",
    ]  # fmt: skip
    for i, n in enumerate(names):
        objs += _svc(n, f"10.0.3.{i + 1}")
    objs += [
        dr("u", "legacy", _host("unrelated"), "DISABLE"),
        dr("s", "shop", _host("simple"), "SIMPLE"),
        dr("p", "shop", _host("portauto"), "DISABLE", ports=[{"port": {"number": 80}}]),
        dr("q", "shop", _host("portmutual"), "ISTIO_MUTUAL", ports=[{"port": {"number": 80}}]),
        dr("r", "shop", _host("portonly"), ports=[{"port": {"number": 80}}]),
        dr("n", "shop", _host("nomode"), tls={"sni": "nomode.example"}),
        dr("sel", PROBE, _host("selected"), "DISABLE", selector=_PROBE_LABELS),
        dr("other", PROBE, _host("notselected"), "ISTIO_MUTUAL", selector={"app": "x"}),
        dr("svc", "shop", _host("notselected"), "DISABLE"),
        dr("t", "shop", _host("tenantsel"), "DISABLE", selector={"app": "client"}),
        dr("new", "shop", _host("merged"), "ISTIO_MUTUAL", created="2025-01-01T00:00:00Z"),
        dr("old", "shop", _host("merged"), "DISABLE", created="2025-01-01T01:00:00+02:00"),
        dr(
            "m",
            "shop",
            _host("mutual"),
            tls={"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem"},
        ),
    ]
    # namespace DISABLE, workload STRICT: Istio turns auto-mTLS off for the Service
    # (BestEffortInferServiceMTLSMode), so the sidecar client sends plaintext to STRICT
    objs += [
        kb.namespace("nsoff"),
        kb.peer_auth("default", "nsoff", "DISABLE"),
        kb.peer_auth("app", "nsoff", "STRICT", selector={"app": "app"}),
        kb.pod("app", "nsoff", {"app": "app"}, ip="10.0.6.1", sa="app"),
        kb.service("app", "nsoff", {"app": "app"}, [kb.sport(80, 8080)]),
    ]
    # a headless Service with one endpoint lacking tlsMode=istio: auto-mTLS off for all
    headless = kb.service("hl", "shop", {"app": "hl"}, [kb.sport(80, 8080)])
    headless["spec"]["clusterIP"] = "None"
    objs += [
        headless,
        kb.pod("hl-0", "shop", {"app": "hl"}, ip="10.0.6.2", sa="hl"),
        kb.pod("hl-1", "shop", {"app": "hl"}, ip="10.0.6.3", sa="hl", sidecar=False),
    ]
    return objs


# service -> require-strict verdict; a "fail" here is exactly where the DR breaks the edge
WANT_STRICT = {
    "plain": "pass",  # no rule: auto-mTLS
    "unrelated": "pass",  # a rule in an unrelated namespace is never consulted
    "simple": "fail",  # SIMPLE to STRICT: certain failure
    # a port entry without tls: the cluster is auto-mTLS, but endpoints are marked by the
    # top-level mode (mtls_checker.go): DISABLE marks none for mTLS -> plaintext -> 503
    "portauto": "fail",
    "portmutual": "pass",  # ... and a top-level ISTIO_MUTUAL marks them all
    "portonly": "pass",  # no tls anywhere: plain auto-mTLS
    "nomode": "fail",  # tls without mode: DISABLE to STRICT
    "selected": "fail",  # the probe's own namespace selects it: DISABLE
    "notselected": "pass",  # selector misses the probe and hides shop's DISABLE
    "tenantsel": "pass",  # a selector rule in shop is for shop's clients only
    "merged": "fail",  # the older (by time, not text) rule's DISABLE wins
    "mutual": "fail",  # MUTUAL with non-mesh certificates to STRICT
}


@pytest.mark.parametrize("unquote", [False, True], ids=["quoted", "yaml-timestamps"])
def test_manifests_and_live_api_resolve_destination_rules_alike(
    tmp_path: Path, unquote: bool
) -> None:
    files, live = plan_both(_cluster(), tmp_path, unquote_timestamps=unquote)
    for plan in (files, live):
        got = verdicts(plan, "require-strict", "shop/")
        hl = {k: v for k, v in got.items() if k.startswith("shop/hl:80")}
        assert {k: v for k, v in got.items() if k not in hl} == {
            f"shop/{n}:80": v for n, v in WANT_STRICT.items()
        }
        assert set(hl.values()) == {"fail"}  # split by sidecar; both halves fail
        contradictions = {k: v for k, v in verdicts(plan, "policy", "shop/").items() if v != "skip"}
        assert contradictions == {
            **{f"shop/{n}:80": "fail" for n, v in WANT_STRICT.items() if v == "fail"},
            "shop/hl:80@hl/STRICT": "fail",
        }
        assert "headless Service" in finding(plan, "policy", "shop/hl:80@hl/STRICT").reason
        assert verdicts(plan, "require-strict", "nsoff/") == {"nsoff/app:80": "fail"}
        assert "auto-mTLS off" in finding(plan, "policy", "nsoff/app:80").reason
    assert targets(files, "shop/") == targets(live, "shop/")
    assert verdicts(files, "policy", "shop/") == verdicts(live, "policy", "shop/")
    merged = finding(live, "policy", "shop/merged:80")
    assert merged.evidence["destinationRule"] == "DestinationRule shop/old"


# ---- Istio's own tables, replayed (pilot/pkg/model/push_context_test.go) -------------------------


def _istio_export_rules() -> list[dict[str, Any]]:
    """The rules of ``TestSetDestinationRuleWithExportTo`` (subsets left out: the rule
    names say which one was chosen)."""
    h = "httpbin.org"
    return [
        dr("rule1", "test1", h, policy=False, export_to=[".", "ns1"]),
        dr("rule2", "test2", h, policy=False, export_to=["test2", "ns1", "test1", "newNS"]),
        dr("rule3", "test3", h, policy=False, export_to=["test1", "test2", "*"]),
        dr("rule4-local", "test4", h, policy=False, export_to=["test4"]),
        dr("rule4", ROOT, h, policy=False),
        dr("rule1", ROOT, h, policy=False, export_to=["."]),
        dr("rule2", ROOT, "*.org", policy=False, export_to=["."]),
        dr("rule3", ROOT, "*.app.org", policy=False, export_to=["."]),
        dr("rule5", "test5", "api.test.com", policy=False, export_to=[ROOT]),
        dr("rule6", "test6", "api.test.com", policy=False, export_to=[ROOT]),
    ]


@pytest.mark.parametrize(
    ("client", "service_ns", "host", "want"),
    [
        ("test1", "test1", "httpbin.org", ["test1/rule1"]),
        ("test1", "test2", "httpbin.org", ["test1/rule1"]),
        ("test2", "test1", "httpbin.org", ["test2/rule2"]),
        ("newNS", "test2", "httpbin.org", ["test2/rule2"]),
        ("test3", "test1", "httpbin.org", ["test3/rule3"]),
        ("test5", "test4", "httpbin.org", ["istio-system/rule4"]),
        ("ns1", "test1", "httpbin.org", ["test1/rule1"]),
        ("ns1", "random", "httpbin.org", ["istio-system/rule4"]),
        ("random", "random", "httpbin.org", ["istio-system/rule4"]),
        ("test3", "random", "httpbin.org", ["test3/rule3"]),
        (ROOT, "random", "httpbin.org", ["istio-system/rule1"]),
        (ROOT, ROOT, "httpbin.org", ["istio-system/rule1"]),
        (ROOT, ROOT, "foo.app.org", ["istio-system/rule3"]),
        (ROOT, "test5", "api.test.com", ["test5/rule5"]),
        (ROOT, "test6", "api.test.com", ["test6/rule6"]),
        (ROOT, "test7", "api.test.com", []),
    ],
)
def test_istio_export_to_table(client: str, service_ns: str, host: str, want: list[str]) -> None:
    index = DestinationRuleIndex(_istio_export_rules(), ROOT, "cluster.local")
    assert index.rule_for(host, service_ns, client, {}) == want


def test_istio_workload_selector_table() -> None:
    """``TestSetDestinationRuleWithWorkloadSelector``: selector rules merge only with
    the same selector, a selector-less rule with a superset exportTo merges into them and
    stays on its own; a selector rule is never exported; the client's labels pick one
    (sidecar.go ``SidecarScope.DestinationRule``)."""
    h = "httpbin.org"
    rules = [
        dr("nsRule1", "test", h, "MUTUAL", selector={"app": "app1"}, export_to=["test2", "."],
           created="2025-01-01T00:00:01Z"),
        dr("nsRule2", "test", h, "SIMPLE", selector={"app": "app2"}, export_to=["test2", "."],
           created="2025-01-01T00:00:02Z"),
        dr("nsRule3", "test", h, "SIMPLE", selector={"app": "app2"}, export_to=["test2", "."],
           created="2025-01-01T00:00:02Z"),
        dr("nsRule4", "test", h, "SIMPLE", export_to=[".", "test2"],
           created="2025-01-01T00:00:00Z"),
    ]  # fmt: skip
    index = DestinationRuleIndex(rules, ROOT, "cluster.local")
    assert index.rule_for(h, "test", "test", {"app": "app1"}) == ["test/nsRule1", "test/nsRule4"]
    assert index.rule_for(h, "test", "test", {"app": "app2"}) == [
        "test/nsRule2",
        "test/nsRule3",
        "test/nsRule4",
    ]
    assert index.rule_for(h, "test", "test", {"app": "app3"}) == ["test/nsRule4"]
    assert index.rule_for(h, "test", "test2", {"app": "app1"}) == ["test/nsRule4"]


# ---- auto-mTLS per endpoint: mtls_checker.go and BestEffortInferServiceMTLSMode ---------------


def _port_entry_rule(top: str | None, *entries: dict[str, Any]) -> DestinationRuleIndex:
    ports = [{"port": {"number": 80}, **e} for e in entries]
    return DestinationRuleIndex(
        [dr("d", "shop", HOST, top, ports=ports or [{"port": {"number": 80}}])],
        ROOT,
        "cluster.local",
    )


@pytest.mark.parametrize(
    ("desc", "index", "server", "want_tls", "outcome"),
    [
        (
            "top DISABLE, port entry without tls: auto cluster, no endpoint marked: 503",
            _port_entry_rule("DISABLE"),
            Expect.STRICT,
            ClientTls.PLAINTEXT,
            Outcome.FAIL,
        ),
        (
            "top ISTIO_MUTUAL, port entry without tls: every labelled endpoint gets mTLS",
            _port_entry_rule("ISTIO_MUTUAL"),
            Expect.STRICT,
            ClientTls.ISTIO_MTLS,
            Outcome.OK,
        ),
        (
            "... even a DISABLE port (the marking skips PeerAuthentication)",
            _port_entry_rule("ISTIO_MUTUAL"),
            Expect.DISABLE,
            ClientTls.ISTIO_MTLS,
            Outcome.FAIL,
        ),
        (
            "no top-level tls: plain auto-mTLS",
            _port_entry_rule(None),
            Expect.STRICT,
            ClientTls.ISTIO_MTLS,
            Outcome.OK,
        ),
        (
            "the marking reads the first entry for the port that has tls",
            _port_entry_rule("ISTIO_MUTUAL", {}, {"tls": {"mode": "DISABLE"}}),
            Expect.STRICT,
            ClientTls.PLAINTEXT,
            Outcome.FAIL,
        ),
    ],
)
def test_endpoint_marking_follows_the_rule(
    desc: str, index: DestinationRuleIndex, server: Expect, want_tls: str, outcome: str
) -> None:
    got = index.tls_for(HOST, "shop", 80, PROBE)
    assert got.mode is None, desc  # the cluster itself is auto-mTLS
    view = client_view(got, server, True, "istio")
    assert (view.tls, view.outcome) == (want_tls, outcome), desc


@pytest.mark.parametrize(
    ("desc", "service_mode", "labels", "want_tls", "outcome"),
    [
        ("service namespace DISABLE", Expect.DISABLE, None, ClientTls.PLAINTEXT, Outcome.FAIL),
        ("service namespace PERMISSIVE", Expect.PERMISSIVE, None, ClientTls.ISTIO_MTLS, Outcome.OK),
        (
            "headless, one endpoint unlabelled",
            None,
            ["istio", None],
            ClientTls.PLAINTEXT,
            Outcome.FAIL,
        ),
        ("headless, all labelled", None, ["istio", "istio"], ClientTls.ISTIO_MTLS, Outcome.OK),
    ],
)
def test_auto_mtls_off_for_the_whole_service(
    desc: str,
    service_mode: Expect | None,
    labels: list[str | None] | None,
    want_tls: str,
    outcome: str,
) -> None:
    index = DestinationRuleIndex([], ROOT, "cluster.local")
    got = index.tls_for(
        HOST, "shop", 80, PROBE, service_mode=service_mode, passthrough_labels=labels
    )
    view = client_view(got, Expect.STRICT, True, "istio")
    assert (view.tls, view.outcome) == (want_tls, outcome), desc


# ---- properties over any set of rules ------------------------------------------------------------

_NS = ["shop", PROBE, ROOT, "legacy", "billing"]
_rule = st.builds(
    lambda i, ns, host, mode, export, sel: dr(
        f"r{i}", ns, host, mode, export_to=export, selector=sel,
        created=f"2025-01-0{1 + i % 9}T00:00:00Z",
    ),
    st.integers(0, 99),
    st.sampled_from(_NS),
    st.sampled_from([HOST, "orders", "*.shop.svc.cluster.local", "*", "*.cluster.local"]),
    st.sampled_from([None, "DISABLE", "SIMPLE", "ISTIO_MUTUAL"]),
    st.one_of(st.none(), st.lists(st.sampled_from([".", "*", "~", *_NS]), max_size=3)),
    st.one_of(st.none(), st.just(PROBE_SEL), st.just({"app": "other"})),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_rule, max_size=8, unique_by=lambda r: r["metadata"]["name"]))
def test_only_the_three_namespaces_and_only_visible_rules(rules: list[dict[str, Any]]) -> None:
    """Whatever rules exist, the probe's rule comes from its own namespace, the Service's
    or the root, is exported to it when it is not its own, and a selector rule applies
    only from its own namespace and only when it selects the probe."""
    index = DestinationRuleIndex(rules, ROOT, "cluster.local")
    chosen = index.rule_for(HOST, "shop", PROBE)
    if not chosen:
        return
    by_ref = {f"{r['metadata']['namespace']}/{r['metadata']['name']}": r for r in rules}
    first = by_ref[chosen[0]]
    ns = first["metadata"]["namespace"]
    assert ns in ("shop", PROBE, ROOT)
    spec_ = first["spec"]
    sel = spec_.get("workloadSelector")
    if sel is not None:
        assert ns == PROBE and sel["matchLabels"].items() <= PROBE_CLIENT_LABELS.items()
    elif ns != PROBE:
        export = spec_.get("exportTo") or []
        assert not export or "*" in export or PROBE in export
    for ref_ in chosen:  # merged rules share the namespace and the selector
        assert ref_.split("/")[0] == ns


@settings(max_examples=150, deadline=None)
@given(st.lists(_rule, max_size=6, unique_by=lambda r: r["metadata"]["name"]))
def test_compliance_never_passes_where_the_rule_breaks_the_edge(
    rules: list[dict[str, Any]],
) -> None:
    from jobs.plan.manifests import snapshot_from_documents
    from jobs.plan.planner import build_plan

    objs = [
        kb.peer_auth("default", ROOT, "STRICT"),
        kb.pod("orders", "shop", {"app": "orders"}, ip="10.0.7.1", sa="orders"),
        kb.service("orders", "shop", {"app": "orders"}, [kb.sport(80, 8080)]),
        *rules,
    ]
    plan = build_plan(snapshot_from_documents([("t", o) for o in objs], inject=False), ["strict"])
    (strict,) = [r for r in plan.findings if r.check == "require-strict"]
    broken = [e for e in plan.edges if e.client.outcome != Outcome.OK]
    assert (strict.verdict.value == "pass") == (not broken)


@pytest.mark.parametrize(
    ("rule", "want"),
    [
        (dr("d", "shop", HOST, "DISABLE"), "clients in shop and in namespaces without a rule"),
        (dr("d", ROOT, HOST, "DISABLE"), "clients in every namespace without a rule"),
        (dr("d", "shop", HOST, "DISABLE", export_to=["."]), "only clients in shop"),
        (
            dr("d", "shop", HOST, "DISABLE", export_to=[".", PROBE]),
            "only clients in mtlsprobe, shop",
        ),
        (dr("d", "shop", HOST, "DISABLE", export_to=["~"]), "no client"),
        (
            dr("d", "shop", HOST, "DISABLE", selector={"app": "a"}),
            "only clients in shop selected by app=a",
        ),
    ],
)
def test_destination_rule_findings_say_who_uses_the_rule(rule: dict[str, Any], want: str) -> None:
    from jobs.plan.manifests import snapshot_from_documents
    from jobs.plan.planner import build_plan

    plan = build_plan(snapshot_from_documents([("t", rule)], inject=False))
    (f,) = [
        r
        for r in plan.findings
        if r.target == "DestinationRule shop/d" or r.target == f"DestinationRule {ROOT}/d"
    ]
    assert want in f.reason


def test_tls_without_mode_is_reported_as_disable() -> None:
    from jobs.plan.policy import dr_tls_modes

    rule = dr("d", "shop", HOST, tls={}, ports=[{"port": {"number": 81}, "tls": {"sni": "x"}}])
    assert dr_tls_modes(rule) == [(None, "DISABLE"), (81, "DISABLE")]
