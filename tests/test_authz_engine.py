"""The AuthorizationPolicy decision engine (jobs.plan.authz) against Istio's documented
examples. Each case names the istio.io page (or istiod source) it was written from; the
YAML is rewritten from the page's meaning, never copied."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.plan.authz import (
    DEFAULT_POLICY,
    Decision,
    Outcome,
    PolicySet,
    Request,
    Workload,
    decide,
    wildcard,
)

REF = "https://istio.io/latest/docs/reference/config/security/authorization-policy/"
CONCEPT = "https://istio.io/latest/docs/concepts/security/#authorization"
TCP_TASK = "https://istio.io/latest/docs/tasks/security/authorization/authz-tcp/"
HTTP_TASK = "https://istio.io/latest/docs/tasks/security/authorization/authz-http/"
DENY_TASK = "https://istio.io/latest/docs/tasks/security/authorization/authz-deny/"

SLEEP = "spiffe://cluster.local/ns/foo/sa/sleep"
OTHER = "spiffe://cluster.local/ns/bar/sa/client"
DEV = "spiffe://cluster.local/ns/dev/sa/tool"
HTTPBIN = Workload("foo", {"app": "httpbin", "version": "v1"})


def ap(ns: str, name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"namespace": ns, "name": name, **meta},
        "spec": spec,
    }


def at(
    objs: list[dict[str, Any]],
    peer: str | None,
    port: int = 8000,
    method: str | None = "GET",
    path: str | None = "/",
    *,
    workload: Workload = HTTPBIN,
    tcp: bool = False,
) -> Decision:
    ps = PolicySet.from_objects(objs, "istio-system")
    req = Request(peer, port, tcp, None if tcp else method, None if tcp else path)
    return decide(ps.for_workload(workload), req)


def test_no_policy_allows_by_default() -> None:
    # CONCEPT "Implicit enablement": no policy applies -> every request is allowed.
    d = at([], SLEEP)
    assert (d.outcome, d.policy) == (Outcome.ALLOW, DEFAULT_POLICY)


def test_allow_nothing_denies_everything() -> None:
    # REF: "allow-nothing": an ALLOW policy with no rules matches nothing.
    objs = [ap("foo", "allow-nothing", {})]
    d = at(objs, SLEEP)
    assert (d.outcome, d.policy) == (Outcome.DENY, "foo/allow-nothing")


def test_allow_all_rule_matches_everything() -> None:
    # REF: "allow-all": rules: [{}] matches every request, even alongside allow-nothing.
    objs = [ap("foo", "allow-nothing", {}), ap("foo", "allow-all", {"rules": [{}]})]
    assert at(objs, SLEEP).outcome is Outcome.ALLOW
    assert at(objs, None).outcome is Outcome.ALLOW  # no identity needed for {}


def test_deny_all_by_deny_action() -> None:
    # REF: "deny-all": action DENY with rules [{}] denies everything, ALLOW cannot undo it.
    objs = [
        ap("foo", "deny-all", {"action": "DENY", "rules": [{}]}),
        ap("foo", "allow-all", {"rules": [{}]}),
    ]
    d = at(objs, SLEEP)
    assert (d.outcome, d.policy) == (Outcome.DENY, "foo/deny-all")


def test_deny_without_rules_denies_nothing() -> None:
    # REF: a DENY policy without rules never matches.
    assert at([ap("foo", "deny-none", {"action": "DENY"})], SLEEP).outcome is Outcome.ALLOW


READ: dict[str, Any] = {
    "selector": {"matchLabels": {"app": "httpbin", "version": "v1"}},
    "action": "ALLOW",
    "rules": [
        {
            "from": [
                {"source": {"principals": ["cluster.local/ns/foo/sa/sleep"]}},
                {"source": {"namespaces": ["dev"]}},
            ],
            "to": [
                {"operation": {"methods": ["GET"], "paths": ["/info*"]}},
                {"operation": {"methods": ["POST"], "paths": ["/data"]}},
            ],
        }
    ],
}


@pytest.mark.parametrize(
    ("peer", "method", "path", "want"),
    [
        (SLEEP, "GET", "/info", Outcome.ALLOW),  # prefix /info*
        (SLEEP, "GET", "/info/x", Outcome.ALLOW),
        (SLEEP, "POST", "/data", Outcome.ALLOW),  # exact
        (DEV, "GET", "/infox", Outcome.ALLOW),  # namespace dev
        (SLEEP, "POST", "/data/x", Outcome.DENY),  # exact path: just outside
        (SLEEP, "PUT", "/info", Outcome.DENY),  # another method
        (SLEEP, "GET", "/inf", Outcome.DENY),  # outside the prefix
        (OTHER, "GET", "/info", Outcome.DENY),  # principal and namespace not listed
        (None, "GET", "/info", Outcome.DENY),  # plaintext: no principal, no namespace
    ],
)
def test_reference_allow_read(peer: str | None, method: str, path: str, want: Outcome) -> None:
    # REF: the first example (allow GET /info* and POST /data from sleep or namespace dev),
    # without its JWT `when` (see test_unmodelled_when_key_skips).
    d = at([ap("foo", "httpbin", READ)], peer, method=method, path=path)
    assert d.outcome is want, d.reason
    assert d.policy == "foo/httpbin"


def test_unmodelled_when_key_skips() -> None:
    # REF: the same example has `when: request.auth.claims[iss]`: not modelled -> skip,
    # naming the policy and the key.
    spec = {
        **READ,
        "rules": [
            {**READ["rules"][0], "when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}
        ],
    }
    d = at([ap("foo", "httpbin", spec)], SLEEP, path="/info")
    assert d.outcome is Outcome.SKIP
    assert d.policy == "foo/httpbin" and "request.auth.claims[iss]" in (d.field or "")
    # A request no from/to can match is still decided: deny, no guess needed.
    assert at([ap("foo", "httpbin", spec)], OTHER, path="/info").outcome is Outcome.DENY


def test_deny_overrides_allow() -> None:
    # DENY_TASK: deny-method-get denies GET even though an ALLOW policy would allow it.
    objs = [
        ap("foo", "allow-all", {"rules": [{}]}),
        ap(
            "foo",
            "deny-method-get",
            {
                "selector": {"matchLabels": {"app": "httpbin"}},
                "action": "DENY",
                "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
            },
        ),
    ]
    assert at(objs, SLEEP, method="GET").policy == "foo/deny-method-get"
    assert at(objs, SLEEP, method="GET").outcome is Outcome.DENY
    assert at(objs, SLEEP, method="POST").outcome is Outcome.ALLOW


def test_deny_header_condition_skips() -> None:
    # DENY_TASK: deny GET unless header x-token is admin: headers are not modelled.
    objs = [
        ap(
            "foo",
            "deny-method-get",
            {
                "action": "DENY",
                "rules": [
                    {
                        "to": [{"operation": {"methods": ["GET"]}}],
                        "when": [{"key": "request.headers[x-token]", "notValues": ["admin"]}],
                    }
                ],
            },
        )
    ]
    d = at(objs, SLEEP, method="GET")
    assert d.outcome is Outcome.SKIP and "request.headers[x-token]" in (d.field or "")
    assert at(objs, SLEEP, method="POST").outcome is Outcome.ALLOW  # method decides first


def test_deny_not_namespaces() -> None:
    # DENY_TASK / REF: DENY from every namespace but foo (notNamespaces).
    objs = [
        ap(
            "foo",
            "deny-others",
            {"action": "DENY", "rules": [{"from": [{"source": {"notNamespaces": ["foo"]}}]}]},
        )
    ]
    assert at(objs, SLEEP).outcome is Outcome.ALLOW
    assert at(objs, OTHER).outcome is Outcome.DENY
    # A plaintext caller and a not-list on identity: istiod versions differ -> skip.
    assert at(objs, None).outcome is Outcome.SKIP


def test_not_paths_exclusion() -> None:
    # CONCEPT "Exclusion": allow everything except /healthz for the probe identity.
    objs = [
        ap(
            "foo",
            "except-healthz",
            {"rules": [{"to": [{"operation": {"notPaths": ["/healthz"]}}]}]},
        )
    ]
    assert at(objs, SLEEP, path="/headers").outcome is Outcome.ALLOW
    assert at(objs, SLEEP, path="/healthz").outcome is Outcome.DENY


@pytest.mark.parametrize(
    ("pattern", "value", "want"),
    [
        ("/test/*", "/test/a", True),  # CONCEPT: prefix match
        ("/test/*", "/test", False),
        ("*.html", "/a/b.html", True),  # suffix match
        ("*.html", "/a.htm", False),
        ("*", "/", True),  # presence
        ("/exact", "/exact", True),
        ("/exact", "/exact/", False),
    ],
)
def test_path_patterns(pattern: str, value: str, want: bool) -> None:
    # CONCEPT "Value matching": exact, prefix, suffix and presence.
    assert wildcard(pattern, value) is want


def test_path_template_skips() -> None:
    # REF "paths": templates {*} / {**} are not modelled.
    objs = [ap("foo", "t", {"rules": [{"to": [{"operation": {"paths": ["/a/{*}/b"]}}]}]})]
    assert at(objs, SLEEP, path="/a/x/b").outcome is Outcome.SKIP


def test_query_is_not_part_of_the_path() -> None:
    objs = [ap("foo", "p", {"rules": [{"to": [{"operation": {"paths": ["/data"]}}]}]})]
    assert at(objs, SLEEP, path="/data?x=1").outcome is Outcome.ALLOW


def test_ports_are_target_ports() -> None:
    # TCP_TASK: tcp-policy allows ports 9000 and 9001; 9002 is then denied.
    objs = [
        ap(
            "foo",
            "tcp-policy",
            {
                "selector": {"matchLabels": {"app": "tcp-echo"}},
                "rules": [{"to": [{"operation": {"ports": ["9000", "9001"]}}]}],
            },
        )
    ]
    w = Workload("foo", {"app": "tcp-echo"})
    assert at(objs, SLEEP, 9000, workload=w, tcp=True).outcome is Outcome.ALLOW
    assert at(objs, SLEEP, 9001, workload=w, tcp=True).outcome is Outcome.ALLOW
    d = at(objs, SLEEP, 9002, workload=w, tcp=True)
    assert (d.outcome, d.policy) == (Outcome.DENY, "foo/tcp-policy")


def test_http_fields_in_allow_rule_on_tcp_never_match() -> None:
    # TCP_TASK: adding methods: [GET] to the ALLOW rule makes it never match on tcp ports.
    objs = [
        ap(
            "foo",
            "tcp-policy",
            {"rules": [{"to": [{"operation": {"methods": ["GET"], "ports": ["9000"]}}]}]},
        )
    ]
    w = Workload("foo", {"app": "tcp-echo"})
    assert at(objs, SLEEP, 9000, workload=w, tcp=True).outcome is Outcome.DENY
    # The same rule on an HTTP port still allows GET.
    assert at(objs, SLEEP, 9000, workload=w, method="GET").outcome is Outcome.ALLOW


def test_http_fields_in_deny_rule_on_tcp_deny_the_connection() -> None:
    # TCP_TASK: a DENY rule with methods: [GET] on port 9000 denies all tcp on 9000
    # (istiod drops the HTTP-only field), and 9001 stays allowed.
    objs = [
        ap(
            "foo",
            "tcp-deny",
            {
                "action": "DENY",
                "rules": [{"to": [{"operation": {"methods": ["GET"], "ports": ["9000"]}}]}],
            },
        )
    ]
    w = Workload("foo", {"app": "tcp-echo"})
    assert at(objs, SLEEP, 9000, workload=w, tcp=True).outcome is Outcome.DENY
    assert at(objs, SLEEP, 9001, workload=w, tcp=True).outcome is Outcome.ALLOW
    # On HTTP the method still matters.
    assert at(objs, SLEEP, 9000, workload=w, method="POST").outcome is Outcome.ALLOW


def test_principals_need_mtls() -> None:
    # CONCEPT "Dependency on mutual TLS": principals/namespaces need mTLS; a plaintext
    # request (PERMISSIVE) never matches them.
    objs = [ap("foo", "p", {"rules": [{"from": [{"source": {"principals": ["*"]}}]}]})]
    assert at(objs, SLEEP).outcome is Outcome.ALLOW
    assert at(objs, None).outcome is Outcome.DENY


def test_scope_root_namespace_and_selector() -> None:
    # REF "Scope": root namespace = mesh-wide; a selector in the root namespace selects in
    # every namespace; a namespace policy applies only there.
    mesh = ap("istio-system", "allow-nothing", {})
    assert at([mesh], SLEEP).outcome is Outcome.DENY
    other_ns = ap("bar", "allow-nothing", {})
    assert at([other_ns], SLEEP).outcome is Outcome.ALLOW
    sel = ap(
        "istio-system",
        "deny-v1",
        {"selector": {"matchLabels": {"version": "v1"}}, "action": "DENY", "rules": [{}]},
    )
    assert at([sel], SLEEP).outcome is Outcome.DENY
    assert at([sel], SLEEP, workload=Workload("foo", {"app": "httpbin"})).outcome is Outcome.ALLOW


def test_target_refs_and_dry_run_are_not_probed() -> None:
    # REF "targetRefs": attaches to gateways/waypoints, not sidecars; "istio.io/dry-run".
    objs = [
        ap("foo", "waypoint", {"targetRefs": [{"kind": "Service", "name": "httpbin"}]}),
        ap(
            "foo",
            "dry",
            {"action": "DENY", "rules": [{}]},
            annotations={"istio.io/dry-run": "true"},
        ),
    ]
    ps = PolicySet.from_objects(objs, "istio-system")
    assert {p.ref for p, _ in ps.not_probed} == {"foo/waypoint", "foo/dry"}
    assert at(objs, SLEEP).outcome is Outcome.ALLOW


def test_custom_skips_audit_ignored() -> None:
    # REF "action": CUSTOM decides first (an external authorizer); AUDIT never decides.
    objs = [
        ap(
            "foo",
            "ext",
            {
                "action": "CUSTOM",
                "provider": {"name": "opa"},
                "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}],
            },
        ),
        ap("foo", "audit", {"action": "AUDIT", "rules": [{}]}),
    ]
    d = at(objs, SLEEP, path="/admin")
    assert d.outcome is Outcome.SKIP and d.policy == "foo/ext" and d.field == "action: CUSTOM"
    assert at(objs, SLEEP, path="/public").outcome is Outcome.ALLOW


def test_ip_blocks_and_hosts_skip() -> None:
    # REF: ipBlocks (the probe's address is not known at plan time) and hosts skip.
    ip = ap("foo", "ip", {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]})
    host = ap(
        "foo", "host", {"action": "DENY", "rules": [{"to": [{"operation": {"hosts": ["a.com"]}}]}]}
    )
    assert at([ip], SLEEP).field == "from.source.ipBlocks"
    assert at([host], SLEEP).field == "to.operation.hosts"


def test_when_source_namespace_and_port() -> None:
    # REF "Condition": source.namespace / destination.port keys.
    objs = [
        ap(
            "foo",
            "w",
            {
                "rules": [
                    {
                        "when": [
                            {"key": "source.namespace", "values": ["foo"]},
                            {"key": "destination.port", "values": ["8000"]},
                        ]
                    }
                ]
            },
        )
    ]
    assert at(objs, SLEEP, 8000).outcome is Outcome.ALLOW
    assert at(objs, SLEEP, 9000).outcome is Outcome.DENY
    assert at(objs, OTHER, 8000).outcome is Outcome.DENY


def test_unreadable_policy_skips() -> None:
    objs = [ap("foo", "bad", {"rules": [{"to": [{"operation": {"paths": "/x"}}]}]})]
    d = at(objs, SLEEP)
    assert d.outcome is Outcome.SKIP and d.policy == "foo/bad" and "paths" in (d.field or "")


def test_productpage_viewer() -> None:
    # HTTP_TASK: allow-nothing in the namespace, then productpage-viewer allows GET only.
    objs = [
        ap("foo", "allow-nothing", {}),
        ap(
            "foo",
            "viewer",
            {
                "selector": {"matchLabels": {"app": "httpbin"}},
                "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
            },
        ),
    ]
    assert at(objs, SLEEP, method="GET").policy == "foo/viewer"
    d = at(objs, SLEEP, method="DELETE")
    assert d.outcome is Outcome.DENY and d.policy == "foo/allow-nothing"
