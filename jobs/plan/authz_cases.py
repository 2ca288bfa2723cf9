"""AuthorizationPolicy test cases for a plan: which calls each probe identity makes to each
target, and what the target's sidecar must do with them (jobs.plan.authz decides).

Per rule of every policy in force at a target's pods, requests that the rule matches and
requests just outside it (another method, a path outside the prefix or next to the exact
path, the suffix broken), plus the target's plain request; each is decided for every
probe identity, so identities from other namespaces give the "namespace not listed" cases
and other targets of the workload the "port not listed" ones. A decision the engine
cannot make is no case but a plan finding naming the policy and the field. Pure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from jobs.plan.authz import (
    HTTP_OPERATION_FIELDS,
    Outcome,
    Policy,
    PolicySet,
    Request,
    Workload,
    decide,
)
from probe.authzmodel import AuthzCase, AuthzExpect
from probe.model import DEFAULT_ECHO_PATH, Expect, Protocol, Target
from probe.results import Result, Verdict

if TYPE_CHECKING:
    from jobs.plan.objects import ClusterSnapshot
    from jobs.plan.planner import Edge, Plan

PROBE_SERVICE_ACCOUNT = "mtlsprobe"  # `mtlsprobe run --service-account` default
MAX_REQUESTS = 24  # distinct HTTP requests per target (before identities)
_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
_FINDING_CHECK = "policy"  # the planner's static findings (jobs.plan.planner.CHECK_POLICY)
_PROBE_SEGMENT = "mtlsprobe"


def default_identities(trust_domain: str, client_namespace: str | None) -> list[str]:
    return [
        f"spiffe://{trust_domain}/ns/{client_namespace or 'mtlsprobe'}/sa/{PROBE_SERVICE_ACCOUNT}"
    ]


def _finding(target: str, verdict: Verdict, reason: str, **evidence: object) -> Result:
    return Result(
        check=_FINDING_CHECK,
        target=target,
        verdict=verdict,
        reason=reason,
        evidence={**evidence, _MARK: True},
    )


_MARK = "authzPlan"  # in a finding's evidence: made here (attaching again replaces them)


def identities_named(
    ps: PolicySet,
    trust_domain: str,
    limit: int = 4,
    service_account: str = PROBE_SERVICE_ACCOUNT,
) -> list[str]:
    """Identities the policies name exactly (a principal, a namespace's probe service
    account): probes that run as them prove the allows (the lab runs them)."""
    out: dict[str, None] = {}
    for p in ps.policies:
        for rule in p.rules:
            for src in rule.froms or ():
                for v in src.get("principals", ()):
                    parts = v.split("/")
                    if (
                        len(parts) == 5
                        and "*" not in v
                        and parts[0] == trust_domain
                        and (
                            parts[1],
                            parts[3],
                        )
                        == ("ns", "sa")
                    ):
                        out[f"spiffe://{trust_domain}/ns/{parts[2]}/sa/{parts[4]}"] = None
                for ns in (*src.get("namespaces", ()), *src.get("notNamespaces", ())):
                    if "*" not in ns and ns:
                        out[f"spiffe://{trust_domain}/ns/{ns}/sa/{service_account}"] = None
    return list(out)[:limit]


def for_probes(
    plan: Plan, snap: ClusterSnapshot, probing: Sequence[str], service_account: str
) -> Plan:
    """``plan`` with its cases planned for the identities that will probe (``mtlsprobe
    run``: its source namespaces and ``--impersonate``), plus those the policies name
    that no probe holds: their cases stay in the plan, so the run reports each as not
    probed, naming the identity, instead of dropping them."""
    if not snap.authorizationpolicies or not probing:
        return plan
    ps = PolicySet.from_objects(snap.authorizationpolicies, snap.root_namespace)
    named = identities_named(ps, plan.targets_file.trust_domain, service_account=service_account)
    ids = list(dict.fromkeys([*probing, *named]))
    return attach(plan, snap, ids)


# ---- requests from rules ---------------------------------------------------------------------


def paths_around(pattern: str) -> list[str]:
    """A path the pattern matches and one just outside it (Istio's exact, prefix ``x*``,
    suffix ``*x`` and presence ``*``). Templates and odd patterns give nothing."""
    if "{" in pattern or not pattern:
        return []
    if pattern == "*":
        return ["/"]
    if pattern.startswith("*"):
        suffix = pattern[1:]
        return [f"/{_PROBE_SEGMENT}{suffix}", f"/{_PROBE_SEGMENT}{suffix}-x"]
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        if not prefix.startswith("/"):
            return []
        # Inside: one more segment; outside: the prefix one character short.
        return [prefix + _PROBE_SEGMENT] + ([prefix[:-1]] if len(prefix) > 1 else [])
    if not pattern.startswith("/"):
        return []
    return [pattern, pattern.rstrip("/") + "/" + _PROBE_SEGMENT]


def methods_around(patterns: Sequence[str]) -> list[str]:
    """A listed method (concrete) and one that no pattern matches."""
    from jobs.plan.authz import wildcard

    inside = [m for m in _METHODS if any(wildcard(p, m) for p in patterns)]
    plain = [p for p in patterns if "*" not in p and p.isupper() and p.isalpha()]
    outside = [m for m in _METHODS if not any(wildcard(p, m) for p in patterns)]
    return list(dict.fromkeys((plain or inside)[:1] + outside[:1]))


def http_requests(policies: Iterable[Policy], base_path: str) -> list[tuple[str, str]]:
    """(method, path) pairs chosen from the rules' operations, the plain request first."""
    out: dict[tuple[str, str], None] = {("GET", base_path): None}
    for p in policies:
        for rule in p.rules:
            for op in rule.tos or ():
                if not any(op.get(f) for f in HTTP_OPERATION_FIELDS):
                    continue
                paths = [
                    x
                    for pat in (*op.get("paths", ()), *op.get("notPaths", ()))
                    for x in paths_around(pat)
                ]
                methods = methods_around([*op.get("methods", ()), *op.get("notMethods", ())])
                for path in paths or [base_path]:
                    for method in methods or ["GET"]:
                        out[(method, path)] = None
    return list(out)[:MAX_REQUESTS]


# ---- attaching to a plan ---------------------------------------------------------------------


def attach(plan: Plan, snap: ClusterSnapshot, identities: Sequence[str] | None = None) -> Plan:
    """``plan`` (of ``snap``) with ``authz:`` cases on its targets and findings for what
    cannot be decided. Without AuthorizationPolicies the plan is returned as it is."""
    if not snap.authorizationpolicies:
        return plan
    ps = PolicySet.from_objects(snap.authorizationpolicies, snap.root_namespace)
    ids = list(
        identities or default_identities(snap.trust_domain, plan.requirements.client_namespace)
    )
    findings = [
        _finding(p.ref, Verdict.SKIP, f"AuthorizationPolicy {p.ref}: {why}", notProbed=True)
        for p, why in ps.not_probed
    ]
    by_target: dict[str, list[Edge]] = defaultdict(list)
    for e in plan.edges:
        by_target[e.target].append(e)
    targets: list[Target] = []
    for t in plan.targets_file.targets:
        cases, notes = target_cases(t, by_target.get(t.name, []), ps, ids)
        findings.extend(notes)
        # Attaching again (other identities) replaces the cases, even with none.
        targets.append(replace(t, authz=tuple(cases)) if cases or t.authz else t)
    tf = replace(plan.targets_file, targets=tuple(targets))
    kept = [r for r in plan.findings if not r.evidence.get(_MARK)]
    return replace(plan, targets_file=tf, findings=[*kept, *findings])


def target_cases(
    t: Target, edges: Sequence[Edge], ps: PolicySet, identities: Sequence[str]
) -> tuple[list[AuthzCase], list[Result]]:
    """The cases of one target, and findings for what was not planned there."""
    if t.expect not in (Expect.STRICT, Expect.PERMISSIVE, Expect.DISABLE) or not edges:
        return [], []  # no server sidecar: no AuthorizationPolicy is enforced there
    if any(e.pod.ambient and not e.pod.has_sidecar for e in edges):
        return [], [
            _finding(
                t.name,
                Verdict.SKIP,
                "authz not planned: ambient pods (ztunnel and waypoints enforce "
                "AuthorizationPolicy there; not modelled)",
            )
        ]
    if any(e.client.outcome == "fail" for e in edges):
        return [], []  # the mesh call fails anyway: the mesh check reports it
    if not t.echo:
        if not any(ps.for_workload(Workload(e.pod.namespace, dict(e.pod.labels))) for e in edges):
            return [], []
        return [], [
            _finding(
                t.name,
                Verdict.SKIP,
                "authz not planned: the app does not reflect requests (no "
                "app.kubernetes.io/name: mtlsprobe-echo label), so neither an allow nor the "
                "sidecar's denial can be told apart from the app's own answers; place the echo "
                "responder (k8s/components/echo) behind these policies",
            )
        ]
    workloads = {
        (e.pod.namespace, tuple(sorted(e.pod.labels.items())), e.target_port, e.client.mtls)
        for e in edges
    }
    in_force = {w: ps.for_workload(Workload(w[0], dict(w[1]))) for w in workloads}
    tcp = t.protocol is Protocol.TCP
    policies = {p.ref: p for ps_ in in_force.values() for p in ps_}
    requests: list[tuple[str | None, str | None]] = (
        [(None, None)]
        if tcp
        else list(http_requests(policies.values(), t.echo_path or DEFAULT_ECHO_PATH))
    )
    cases: list[AuthzCase] = []
    notes: dict[tuple[str, str], Result] = {}
    for identity in identities:
        for method, path in requests:
            decisions = {
                decide(pols, Request(identity if w[3] else None, w[2], tcp, method, path))
                for w, pols in in_force.items()
            }
            req = "tcp" if tcp else f"{method} {path}"
            if len(decisions) != 1:
                key = ("pods-differ", "")
                notes.setdefault(
                    key,
                    _finding(
                        t.name,
                        Verdict.SKIP,
                        "authz not planned: the pods behind this target get different "
                        "decisions (their labels or ports differ)",
                        request=req,
                    ),
                )
                continue
            (d,) = decisions
            if d.outcome is Outcome.SKIP:
                key = (d.policy, d.field or "")
                notes.setdefault(
                    key,
                    _finding(
                        t.name,
                        Verdict.SKIP,
                        f"authz not planned for {req} from {identity}: {d.reason}",
                        policy=d.policy,
                        field=d.field,
                    ),
                )
                continue
            cases.append(
                AuthzCase(
                    source=identity,
                    expect=AuthzExpect(d.outcome.value),
                    policy=d.policy,
                    method=method,
                    path=path,
                )
            )
    return cases, list(notes.values())
