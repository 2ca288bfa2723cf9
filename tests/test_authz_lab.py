"""AuthorizationPolicies enforced by the lab's real Envoy (RBAC filters translated the way
istiod does, jobs.lab.authz_rbac) and probed by the ``authz`` check with the cases the
planner chose: the wire and the decision engine agree on every rule shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.lab.authz_rbac import UntranslatableError, for_inbound, rbac_filters
from jobs.lab.runner import run_scenario
from jobs.lab.scenarios import builtin, from_files
from jobs.plan.authz import PolicySet, Workload
from probe.checks import REGISTRY
from probe.checks.base import Settings
from probe.results import Verdict
from tests.meshlab import workload

PROBE = "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"


def ps(*specs: dict[str, object]) -> PolicySet:
    objs = [
        {"metadata": {"namespace": "shop", "name": f"p{i}"}, "spec": s} for i, s in enumerate(specs)
    ]
    return PolicySet.from_objects(objs, "istio-system")


def test_translation_shapes() -> None:
    # allow-nothing: an ALLOW filter with no policies (Envoy then denies everything)
    (f,) = rbac_filters(ps({}).policies, tcp=False, stat="s")
    assert f["name"] == "envoy.filters.http.rbac"
    assert f["typed_config"]["rules"] == {"action": "ALLOW", "policies": {}}
    # DENY before ALLOW; principals carry spiffe://, namespaces a regex
    both = ps(
        {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
        {
            "rules": [
                {
                    "from": [
                        {"source": {"principals": ["cluster.local/ns/a/sa/b"], "namespaces": ["x"]}}
                    ]
                }
            ]
        },
    )
    deny, allow = rbac_filters(both.policies, tcp=False, stat="s")
    assert deny["typed_config"]["rules"]["action"] == "DENY"
    text = json.dumps(allow)
    assert '"exact": "spiffe://cluster.local/ns/a/sa/b"' in text and ".*/ns/x/.*" in text
    assert '"prefix": "/admin"' in json.dumps(deny)
    # tcp: the ALLOW rule with HTTP fields is dropped; the DENY rule loses them
    tcp = ps(
        {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
        {
            "action": "DENY",
            "rules": [{"to": [{"operation": {"methods": ["GET"], "ports": ["9000"]}}]}],
        },
    )
    deny, allow = rbac_filters(tcp.policies, tcp=True, stat="s")
    assert allow["typed_config"]["rules"]["policies"] == {}
    assert deny["name"] == "envoy.filters.network.rbac"
    assert ":method" not in json.dumps(deny) and '"destination_port": 9000' in json.dumps(deny)


def test_untranslatable_is_named() -> None:
    custom = ps({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]})
    with pytest.raises(UntranslatableError, match=r"shop/p0.*CUSTOM"):
        for_inbound(custom.policies, Workload("shop", {}), False, "s", "istio-system")
    claims = ps({"rules": [{"when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}]})
    with pytest.raises(UntranslatableError, match=r"request\.auth\.claims"):
        for_inbound(claims.policies, Workload("shop", {}), False, "s", "istio-system")


@pytest.mark.envoy
def test_builtin_authz_scenario(tmp_path: Path) -> None:
    run = run_scenario(
        builtin("authz"),
        tmp_path,
        require=[],
        checks=list(REGISTRY),
        settings=Settings(timeout=5, concurrency=8),
    )
    assert run.mismatches == []
    authz = [r for r in run.results if r.check == "authz"]
    assert authz and {r.verdict for r in authz} == {Verdict.PASS}, authz
    seen = {(r.source, r.target, r.request, r.observed, r.evidence.get("policy")) for r in authz}
    store = "spiffe://cluster.local/ns/frontend/sa/storefront"
    front = "spiffe://cluster.local/ns/frontend/sa/mtlsprobe"
    # three probe sidecars, one per identity: the one allowed caller, its namespace, us
    assert {r.source for r in authz} == {PROBE, store, front}
    api, feed, web = "shop/api:80", "shop/api:9000", "shop/web:80"
    assert (store, api, "GET /public/mtlsprobe", "allow", "shop/api-public") in seen
    assert (store, api, "POST /public/mtlsprobe", "deny", "shop/allow-nothing") in seen
    assert (front, api, "GET /public/mtlsprobe", "deny", "shop/allow-nothing") in seen
    assert (PROBE, api, "GET /public/mtlsprobe", "deny", "shop/allow-nothing") in seen
    assert (PROBE, api, "GET /headers", "allow", "shop/api-probe") in seen
    assert (front, feed, "tcp", "allow", "shop/api-feed") in seen
    assert (store, web, "GET /adminmtlsprobe", "deny", "shop/web-no-admin") in seen
    assert (front, web, "GET /admi", "allow", "shop/web-legacy-open") in seen


SHAPES = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: Namespace
metadata: {name: data, labels: {istio-injection: enabled}}
"""
# (port name, service port, container port)
PORTS = [("http", 80, 8080), ("tcp-x", 9000, 9000)]
POLICIES = """
---
# HTTP fields in a DENY rule on a tcp port: the whole connection is denied
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-get, namespace: data}
spec:
  selector: {matchLabels: {app: a}}
  action: DENY
  rules: [{to: [{operation: {methods: [GET], ports: ["9000"]}}]}]
---
# HTTP fields in an ALLOW rule on a tcp port: never matches, the tcp port is denied
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: data}
spec:
  selector: {matchLabels: {app: b}}
  rules: [{to: [{operation: {methods: [GET], notPaths: ["*.secret"]}}]}]
---
# by principal, with a suffix path and a not-listed namespace
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-ns, namespace: data}
spec:
  selector: {matchLabels: {app: c}}
  rules:
    - from: [{source: {notNamespaces: [other]}}]
      to: [{operation: {paths: ["*.json"], ports: ["8080"]}}]
"""


@pytest.mark.envoy
def test_rule_shapes_on_real_envoy(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(SHAPES + "".join(workload(n, PORTS, labels={}) for n in "abc") + POLICIES)
    run = run_scenario(
        from_files([path]),
        tmp_path / "lab",
        require=[],
        checks=["authz"],
        settings=Settings(timeout=5, concurrency=8),
    )
    authz = [r for r in run.results if r.check == "authz"]
    bad = [r for r in authz if r.verdict is not Verdict.PASS]
    assert authz and not bad, bad
    got = {
        (r.target, r.request): (r.observed, r.evidence.get("policy"))
        for r in authz
        if r.source == PROBE
    }
    # notNamespaces [other]: the lab also probes as other/mtlsprobe, which is denied
    other = "spiffe://cluster.local/ns/other/sa/mtlsprobe"
    theirs = {(r.target, r.request): r.observed for r in authz if r.source == other}
    assert theirs[("data/c:80", "GET /mtlsprobe.json")] == "deny"
    assert theirs[("data/a:80", "GET /headers")] == "allow"
    assert got[("data/a:9000", "tcp")] == ("deny", "data/deny-get")
    assert got[("data/a:80", "GET /headers")] == ("allow", "default")
    assert got[("data/b:9000", "tcp")] == ("deny", "data/allow-get")
    assert got[("data/b:80", "GET /mtlsprobe.secret")] == ("deny", "data/allow-get")
    assert got[("data/b:80", "GET /headers")] == ("allow", "data/allow-get")
    assert got[("data/c:80", "GET /mtlsprobe.json")] == ("allow", "data/by-ns")
    assert got[("data/c:80", "GET /mtlsprobe.json-x")] == ("deny", "data/by-ns")
    assert got[("data/c:9000", "tcp")] == ("deny", "data/by-ns")
