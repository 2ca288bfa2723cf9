"""AuthorizationPolicy cases in a plan (jobs.plan.authz_cases): chosen per rule, decided
per probe identity, written into the targets file (``authz:``), read back by
``mtlsprobe check``'s loader; and the targets-file contract for ``authz:``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.cli.main import main as cli_main
from jobs.plan.authz_cases import methods_around, paths_around
from jobs.plan.manifests import snapshot_from_documents
from jobs.plan.objects import ClusterSnapshot, set_pod_ip
from jobs.plan.planner import Requirements, build_plan
from probe.model import AuthzExpect, TargetsFileError, load_targets, parse_targets_text

PROBE = "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"
OTHER = "spiffe://cluster.local/ns/other/sa/mtlsprobe"


def _ns(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"istio-injection": "enabled"}},
    }


def ap(name: str, spec: dict[str, Any], ns: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def mesh(
    *policies: dict[str, Any], echo: str = "mtlsprobe-echo", mode: str = "STRICT"
) -> list[Any]:
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api", "app.kubernetes.io/name": echo}},
                "spec": {
                    "serviceAccountName": "api",
                    "containers": [
                        {
                            "name": "app",
                            "image": "echo",
                            "ports": [{"containerPort": 8080}, {"containerPort": 9000}],
                        }
                    ],
                },
            },
        },
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {
            "selector": {"app": "api"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "tcp", "port": 9000, "targetPort": 9000},
            ],
        },
    }
    strict = {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "istio-system"},
        "spec": {"mtls": {"mode": mode}},
    }
    return [strict, _ns("shop"), deploy, svc, *policies]


def snap(docs: list[Any]) -> ClusterSnapshot:
    s = snapshot_from_documents([("test", d) for d in docs])
    for i, p in enumerate(s.pods):
        set_pod_ip(p, f"10.0.0.{i + 2}")
        p.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True"}]
        p["status"]["phase"] = "Running"
    return s


def cases(docs: list[Any]) -> dict[str, Any]:
    plan = build_plan(snap(docs), Requirements())
    return {t.name: t for t in plan.targets_file.targets}


def test_no_policies_no_cases() -> None:
    assert all(not t.authz for t in cases(mesh()).values())


def test_allow_nothing_with_path_rule() -> None:
    # Istio's authz-http task shape: allow-nothing, then GET /public/* from mtlsprobe only.
    docs = mesh(
        ap("allow-nothing", {}),
        ap(
            "public",
            {
                "selector": {"matchLabels": {"app": "api"}},
                "rules": [
                    {
                        "from": [{"source": {"namespaces": ["mtlsprobe"]}}],
                        "to": [{"operation": {"methods": ["GET"], "paths": ["/public/*"]}}],
                    }
                ],
            },
        ),
    )
    from jobs.plan.authz_cases import attach

    cluster = snap(docs)
    plan = attach(build_plan(cluster, Requirements()), cluster, [PROBE, OTHER])
    # build_plan already attached with the default identity; attach again with two.
    http = next(t for t in plan.targets_file.targets if t.name == "shop/api:80")
    got = {(c.source, c.request): (c.expect, c.policy) for c in http.authz}
    assert got[(PROBE, "GET /public/mtlsprobe")] == (AuthzExpect.ALLOW, "shop/public")
    assert got[(PROBE, "POST /public/mtlsprobe")] == (AuthzExpect.DENY, "shop/allow-nothing")
    assert got[(PROBE, "GET /public")] == (AuthzExpect.DENY, "shop/allow-nothing")
    assert got[(OTHER, "GET /public/mtlsprobe")] == (AuthzExpect.DENY, "shop/allow-nothing")
    assert got[(PROBE, "GET /headers")][0] is AuthzExpect.DENY
    tcp = next(t for t in plan.targets_file.targets if t.name == "shop/api:9000")
    assert {(c.source, c.request, c.expect) for c in tcp.authz} == {
        (PROBE, "tcp", AuthzExpect.DENY),
        (OTHER, "tcp", AuthzExpect.DENY),
    }


def test_deny_rule_with_http_fields_on_tcp_port() -> None:
    docs = mesh(
        ap(
            "deny-get",
            {
                "action": "DENY",
                "rules": [{"to": [{"operation": {"methods": ["GET"], "ports": ["9000"]}}]}],
            },
        )
    )
    plan = build_plan(snap(docs), Requirements())
    by = {t.name: t for t in plan.targets_file.targets}
    assert [(c.request, c.expect, c.policy) for c in by["shop/api:9000"].authz] == [
        ("tcp", AuthzExpect.DENY, "shop/deny-get")
    ]
    http = {c.request: c.expect for c in by["shop/api:80"].authz}
    assert http["GET /headers"] is AuthzExpect.ALLOW  # port 8080 is not 9000


def test_undecidable_is_a_finding_not_a_case() -> None:
    docs = mesh(ap("by-ip", {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]}))
    plan = build_plan(snap(docs), Requirements())
    assert all(not t.authz for t in plan.targets_file.targets)
    notes = [r for r in plan.findings if "ipBlocks" in r.reason]
    assert notes and notes[0].evidence["policy"] == "shop/by-ip"


def test_permissive_plaintext_caller_has_no_principal() -> None:
    # CONCEPT "Dependency on mutual TLS": the probe's sidecar sends plaintext (a
    # DestinationRule DISABLE to a PERMISSIVE server): an ALLOW by principal cannot match.
    dr = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "plain", "namespace": "shop"},
        "spec": {
            "host": "api.shop.svc.cluster.local",
            "trafficPolicy": {"tls": {"mode": "DISABLE"}},
        },
    }
    allow = ap("by-principal", {"rules": [{"from": [{"source": {"principals": ["*"]}}]}]})
    by = cases(mesh(allow, dr, mode="PERMISSIVE"))
    http = {c.request: (c.expect, c.policy) for c in by["shop/api:80"].authz}
    assert http["GET /headers"] == (AuthzExpect.DENY, "shop/by-principal")
    by = cases(mesh(allow, mode="PERMISSIVE"))  # auto-mTLS: the principal is there
    assert by["shop/api:80"].authz[0].expect is AuthzExpect.ALLOW


def test_non_echo_apps_get_a_finding_not_cases() -> None:
    plan = build_plan(snap(mesh(ap("allow-nothing", {}), echo="shop-api")), Requirements())
    assert all(not t.authz for t in plan.targets_file.targets)
    assert any("does not reflect requests" in r.reason for r in plan.findings)


def test_target_refs_reported_not_probed() -> None:
    docs = mesh(ap("wp", {"targetRefs": [{"kind": "Service", "group": "", "name": "api"}]}))
    plan = build_plan(snap(docs), Requirements())
    assert any(r.target == "shop/wp" and r.evidence.get("notProbed") for r in plan.findings)


@pytest.mark.parametrize(
    ("pattern", "want"),
    [
        ("/a/*", ["/a/mtlsprobe", "/a"]),
        ("*.png", ["/mtlsprobe.png", "/mtlsprobe.png-x"]),
        ("/exact", ["/exact", "/exact/mtlsprobe"]),
        ("*", ["/"]),
        ("/t/{*}", []),
    ],
)
def test_paths_around(pattern: str, want: list[str]) -> None:
    assert paths_around(pattern) == want


def test_methods_around() -> None:
    assert methods_around(["GET"]) == ["GET", "POST"]
    assert methods_around(["P*"]) == ["POST", "GET"]


def test_plan_yaml_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = mesh(ap("allow-nothing", {}))
    f = tmp_path / "mesh.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    code = cli_main(["plan", "--from-manifests", str(f), "-o", "yaml"])
    out = capsys.readouterr().out
    assert code in (0, 2), out
    doc = yaml.safe_load(out)
    t = next(t for t in doc["targets"] if t["name"] == "shop/api:80")
    assert t["authz"][0] == {
        "source": PROBE,
        "method": "GET",
        "path": "/headers",
        "expect": "deny",
        "policy": "shop/allow-nothing",
    }
    tcp = next(t for t in doc["targets"] if t["name"] == "shop/api:9000")
    assert tcp["authz"] == [{"source": PROBE, "expect": "deny", "policy": "shop/allow-nothing"}]
    out_file = tmp_path / "targets.yaml"
    out_file.write_text(out)
    loaded = load_targets(out_file)
    assert {c.request for t in loaded.targets for c in t.authz} == {"GET /headers", "tcp"}


# ---- the contract: authz: in a targets file ---------------------------------------------------

BASE = """
trustDomain: cluster.local
targets:
  - name: t
    host: a.b.svc.cluster.local
    port: 80
    expect: STRICT
    protocol: {proto}
    authz: {authz}
"""


def load(authz: str, proto: str = "http") -> Any:
    return parse_targets_text(BASE.format(authz=authz, proto=proto), "t.yaml")


def test_contract_accepts_the_documented_shape() -> None:
    tf = load(f'[{{source: "{PROBE}", method: GET, path: /x, expect: allow, policy: ns/p}}]')
    (c,) = tf.targets[0].authz
    assert (c.request, c.expect, c.policy) == ("GET /x", AuthzExpect.ALLOW, "ns/p")
    tcp = load(f'[{{source: "{PROBE}", expect: deny, policy: default}}]', "tcp")
    assert tcp.targets[0].authz[0].request == "tcp"


@pytest.mark.parametrize(
    ("authz", "proto", "where"),
    [
        ("{}", "http", "must be a list"),
        (
            f'[{{source: "{PROBE}", method: GET, path: /x, expect: maybe, policy: a/b}}]',
            "http",
            ".expect",
        ),
        (
            f'[{{source: "{PROBE}", method: get, path: /x, expect: allow, policy: a/b}}]',
            "http",
            ".method",
        ),
        (
            f'[{{source: "{PROBE}", method: GET, path: x, expect: allow, policy: a/b}}]',
            "http",
            ".path",
        ),
        (
            f'[{{source: "{PROBE}", method: GET, path: /x, expect: allow, policy: a/b}}]',
            "tcp",
            "no method",
        ),
        (
            '[{source: "spiffe://other.td/ns/a/sa/b", expect: deny, policy: a/b}]',
            "tcp",
            "trust domain",
        ),
        (f'[{{source: "{PROBE}", expect: deny, policy: "a b"}}]', "tcp", ".policy"),
        (f'[{{source: "{PROBE}", expect: deny, policy: a/b, extra: 1}}]', "tcp", "extra"),
        (
            f'[{{source: "{PROBE}", expect: deny, policy: a/b}}, '
            f'{{source: "{PROBE}", expect: allow, policy: a/c}}]',
            "tcp",
            "duplicate",
        ),
    ],
)
def test_contract_rejects_bad_cases(authz: str, proto: str, where: str) -> None:
    with pytest.raises(TargetsFileError) as exc:
        load(authz, proto)
    msg = str(exc.value)
    assert where in msg and "\n" not in msg and "targets[0] (t).authz" in msg


def test_contract_is_bounded() -> None:
    many = ", ".join(
        f'{{source: "{PROBE}", method: GET, path: /{i}, expect: allow, policy: a/b}}'
        for i in range(1025)
    )
    with pytest.raises(TargetsFileError, match="at most 1024"):
        load(f"[{many}]")


# ---- discovery through the fake API server ----------------------------------------------------


def test_discovery_reads_authorization_policies_and_survives_forbidden() -> None:
    from jobs.plan.discovery import discover
    from tests import kubebuild as kb
    from tests.fakekube import FakeKube, Resource

    policy = {**ap("allow-nothing", {}), "apiVersion": "security.istio.io/v1beta1"}
    with FakeKube() as kube:
        kube.serve(
            Resource(
                "security.istio.io", ("v1beta1",), "authorizationpolicies", "AuthorizationPolicy"
            )
        )
        kube.add_all([kb.namespace("shop"), policy])
        snap = discover(kube.api_client())
        assert [p["metadata"]["name"] for p in snap.authorizationpolicies] == ["allow-nothing"]
        paths = kube.paths()
        assert paths.index("/apis/security.istio.io/v1/authorizationpolicies") < paths.index(
            "/apis/security.istio.io/v1beta1/authorizationpolicies"
        )
        # Not allowed to list them: the mTLS plan goes on, with a note.
        kube.forbid("list", "authorizationpolicies", "security.istio.io")
        snap = discover(kube.api_client())
        assert snap.authorizationpolicies == []
        assert any("AuthorizationPolicies not read" in n for n in snap.notes)
