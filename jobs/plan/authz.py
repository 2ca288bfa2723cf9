"""Istio AuthorizationPolicy: which request a sidecar allows. Pure: no I/O.

What a workload's sidecar decides for one request, following Istio's documented order
(istio.io reference "Authorization Policy", concept page "Authorization") and the way
istiod translates policies to Envoy RBAC (istio/istio pilot/pkg/security/authz/model):

- CUSTOM first, then DENY, then ALLOW. When any ALLOW policy applies to the workload a
  request must match one of them; an ALLOW policy without rules matches nothing
  ("allow-nothing"); a rule ``{}`` matches everything. AUDIT never changes a decision.
- Scope: the mesh root namespace without a selector = every workload; a namespace without
  a selector = every workload there; a selector = the workloads whose labels it names (in
  every namespace when the policy is in the root namespace). ``targetRef(s)`` policies
  attach to gateways and waypoints, not sidecars: they are left out and reported.
- A rule matches when one of its ``from`` entries, one of its ``to`` entries and all of its
  ``when`` conditions do; inside an entry every field must match (a value list matches
  when any value does; a ``not*`` list when none does).
- ``principals`` and ``namespaces`` come from the peer certificate: a plaintext request has
  neither. ``ports`` are the workload's (target) ports.
- On a tcp port the HTTP-only fields (hosts, methods, paths, requestPrincipals, ``when``
  keys ``request.*``) cannot be evaluated: in an ALLOW rule the rule is dropped (it never
  matches); in a DENY rule those fields are dropped and the rest of the rule still applies
  (a DENY rule of HTTP fields only then denies every connection).

Whatever cannot be decided with certainty here (ipBlocks, hosts, header conditions, path
templates, CUSTOM providers, an unreadable policy) makes the decision ``skip``, naming
the policy and the field: never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from jobs.plan.authz_policy import (
    DRY_RUN_ANNOTATION,
    HTTP_OPERATION_FIELDS,
    Condition,
    Policy,
    Rule,
    is_http_only_condition,
    read_policies,
    read_policy,
    tcp_rule,
)
from jobs.plan.objects import KubeObject

DEFAULT_POLICY = "default"  # what decides when no policy does


class Outcome(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    SKIP = "skip"  # cannot be decided with certainty


@dataclass(frozen=True)
class Unknown:
    """A match that cannot be decided here, and the field that makes it so."""

    field: str


Match = bool | Unknown


@dataclass(frozen=True)
class Request:
    """One call as the server sidecar sees it. ``peer``: the caller's SPIFFE ID when
    the connection is mTLS, None for plaintext. ``method``/``path`` None on tcp."""

    peer: str | None
    port: int
    tcp: bool = False
    method: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class Workload:
    namespace: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    policy: str  # "<ns>/<name>" that decides, or DEFAULT_POLICY
    reason: str
    field: str | None = None  # for a skip: what could not be decided


# ---- scope -----------------------------------------------------------------------------------


def applies(policy: Policy, workload: Workload, root_namespace: str) -> bool:
    """The policy is in force at this workload's sidecar (targetRef(s) policies never are;
    a dry-run policy is only logged by Envoy, never enforced)."""
    if policy.target_refs or policy.dry_run:
        return False
    if policy.namespace not in (root_namespace, workload.namespace):
        return False
    if policy.selector is None:
        return True
    return policy.selector.items() <= dict(workload.labels).items()


# ---- three-valued matching -------------------------------------------------------------------


def _decided_by(parts: Iterable[Match], decisive: bool) -> Match:
    """The first ``decisive`` part decides; otherwise the first Unknown stays unknown;
    otherwise the opposite of ``decisive``."""
    unknown: Unknown | None = None
    for m in parts:
        if m is decisive:
            return decisive
        if isinstance(m, Unknown) and unknown is None:
            unknown = m
    return unknown if unknown is not None else not decisive


def _all(parts: Iterable[Match]) -> Match:
    """AND: one False decides; otherwise an Unknown stays unknown."""
    return _decided_by(parts, False)


def _any(parts: Iterable[Match]) -> Match:
    """OR: one True decides; otherwise an Unknown stays unknown."""
    return _decided_by(parts, True)


def _not(m: Match) -> Match:
    return m if isinstance(m, Unknown) else not m


def wildcard(pattern: str, value: str | None) -> bool:
    """Istio's string match: ``*`` presence (non-empty), ``*x`` suffix, ``x*`` prefix,
    else exact (pilot/pkg/security/authz/model/matcher: StringMatcher, HeaderMatcher)."""
    if value is None:
        return False
    if pattern == "*":
        return value != ""
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


_SPIFFE = "spiffe://"


def _principal(pattern: str, peer: str | None) -> Match:
    if peer is None:
        return False  # a plaintext request carries no principal
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        # istiod puts "spiffe://" in front of the pattern: a suffix pattern's effect is unclear.
        return Unknown(f"principal suffix pattern {pattern[:60]!r}")
    return wildcard(_SPIFFE + pattern, peer)


def _namespace(pattern: str, peer: str | None) -> Match:
    if peer is None:
        return False
    # istiod: the regex ".*/ns/<pattern, * as .*>/.*" on the peer's URI SAN.
    rx = ".*".join(re.escape(p) for p in pattern.split("*"))
    return re.fullmatch(rf".*/ns/{rx}/.*", peer) is not None


def _service_account(value: str, peer: str | None, policy_ns: str) -> Match:
    if peer is None:
        return False
    ns, sep, sa = value.partition("/")
    if not sep:
        ns, sa = policy_ns, value
    rx = rf"spiffe://.+/ns/{re.escape(ns)}/(.+/|)sa/{re.escape(sa)}(/.+)?"
    return re.fullmatch(rx, peer) is not None


def _path(pattern: str, path: str | None) -> Match:
    if "{" in pattern:
        return Unknown(f"paths template {pattern[:60]!r}")
    return path is not None and wildcard(pattern, path.split("?", 1)[0])


def _field(vals: tuple[str, ...], nots: tuple[str, ...], one: Callable[[str], Match]) -> Match:
    """One field: any of ``vals`` (when given) and none of ``nots``."""
    return _all(
        (
            _any(one(v) for v in vals) if vals else True,
            _not(_any(one(v) for v in nots)) if nots else True,
        )
    )


_PEER_FIELDS = (
    ("principals", "notPrincipals"),
    ("namespaces", "notNamespaces"),
    ("serviceAccounts", "notServiceAccounts"),
)


def _source(src: Mapping[str, tuple[str, ...]], req: Request, policy: Policy) -> Match:
    peer = req.peer
    match: dict[str, Callable[[str], Match]] = {
        "principals": lambda v: _principal(v, peer),
        "namespaces": lambda v: _namespace(v, peer),
        "serviceAccounts": lambda v: _service_account(v, peer, policy.namespace),
    }
    terms: list[Match] = [
        Unknown(f"from.source.{f}")
        for f in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks")
        if src.get(f)
    ]
    for key, not_key in _PEER_FIELDS:
        nots = src.get(not_key, ())
        if nots and peer is None:
            # Newer istiod makes a not-list on identity require an authenticated peer.
            terms.append(Unknown(f"from.source.{not_key} on a plaintext request"))
        else:
            terms.append(_field(src.get(key, ()), nots, match[key]))
    # The probe sends no JWT: no request principal matches, a not-list always does.
    terms.append(
        _field(src.get("requestPrincipals", ()), src.get("notRequestPrincipals", ()), _never)
    )
    return _all(terms)


def _never(_: str) -> Match:
    return False


def _operation(op: Mapping[str, tuple[str, ...]], req: Request) -> Match:
    g = op.get
    return _all(
        (
            _field(g("ports", ()), g("notPorts", ()), lambda v: v.strip() == str(req.port)),
            Unknown("to.operation.hosts") if g("hosts") or g("notHosts") else True,
            _field(g("methods", ()), g("notMethods", ()), lambda v: wildcard(v, req.method)),
            _field(g("paths", ()), g("notPaths", ()), lambda v: _path(v, req.path)),
        )
    )


def _condition(c: Condition, req: Request, policy: Policy) -> Match:
    one: Callable[[str], Match]
    if c.key in ("source.principal", "source.namespace"):
        if c.not_values and req.peer is None:
            return Unknown(f"when {c.key} notValues on a plaintext request")
        fn = _principal if c.key == "source.principal" else _namespace
        one = lambda v: fn(v, req.peer)  # noqa: E731
    elif c.key == "destination.port":
        one = lambda v: v.strip() == str(req.port)  # noqa: E731
    else:
        return Unknown(f"when key {c.key[:80]!r} (not modelled)")
    return _field(c.values, c.not_values, one)


def rule_matches(rule: Rule, req: Request, policy: Policy) -> Match:
    if req.tcp:
        kept = tcp_rule(rule, policy.action)
        if kept is None:
            return False
        rule = kept
    froms, tos = rule.froms, rule.tos
    return _all(
        (
            True if froms is None else _any(_source(s, req, policy) for s in froms),
            True if tos is None else _any(_operation(o, req) for o in tos),
            *(_condition(c, req, policy) for c in rule.when),
        )
    )


def policy_matches(policy: Policy, req: Request) -> Match:
    """Any rule matches (no rules: nothing does)."""
    if policy.problem is not None:
        return Unknown(policy.problem)
    return _any(rule_matches(r, req, policy) for r in policy.rules)


# ---- the decision ----------------------------------------------------------------------------


@dataclass
class PolicySet:
    """The policies of a snapshot and the mesh root namespace; ``for_workload`` is the
    set in force at one sidecar."""

    policies: list[Policy]
    root_namespace: str
    not_probed: list[tuple[Policy, str]] = field(default_factory=list)

    @classmethod
    def from_objects(cls, objs: Iterable[KubeObject], root_namespace: str) -> PolicySet:
        pols = read_policies(objs)
        skipped = [
            (p, "targetRef(s): attaches to a gateway or waypoint, not to sidecars; not probed")
            for p in pols
            if p.target_refs
        ] + [
            (p, f"annotation {DRY_RUN_ANNOTATION}: true: only logged, never enforced; not probed")
            for p in pols
            if p.dry_run and not p.target_refs
        ]
        return cls(pols, root_namespace, skipped)

    def for_workload(self, workload: Workload) -> list[Policy]:
        return [p for p in self.policies if applies(p, workload, self.root_namespace)]


def _first_match(
    policies: Sequence[Policy], req: Request
) -> tuple[Policy | None, tuple[Policy, Unknown] | None]:
    """The first of ``policies`` that matches ``req``; else the first that may match, with
    the field that cannot be decided (a later certain match still wins over it)."""
    maybe: tuple[Policy, Unknown] | None = None
    for p in policies:
        m = policy_matches(p, req)
        if m is True:
            return p, None
        if isinstance(m, Unknown) and maybe is None:
            maybe = (p, m)
    return None, maybe


def _undecided(action: str, policy: Policy, unknown: Unknown) -> Decision:
    return Decision(
        Outcome.SKIP,
        policy.ref,
        f"{action} policy {policy.ref} may match: {unknown.field} cannot be decided",
        unknown.field,
    )


def decide(policies: Sequence[Policy], req: Request) -> Decision:
    """What the sidecar of a workload in force with ``policies`` does with ``req``."""
    for p in policies:
        if p.action != "CUSTOM":
            continue
        m = policy_matches(p, req)
        if m is not False:
            prov = f" (provider {p.provider[:60]!r})" if p.provider else ""
            return Decision(
                Outcome.SKIP,
                p.ref,
                f"CUSTOM policy {p.ref}{prov} decides first: an external authorizer, not modelled",
                "action: CUSTOM",
            )
    denies = [p for p in policies if p.action == "DENY"]
    hit, maybe = _first_match(denies, req)
    if hit is not None:
        return Decision(Outcome.DENY, hit.ref, f"DENY policy {hit.ref} matches")
    if maybe is not None:
        return _undecided("DENY", *maybe)
    allows = [p for p in policies if p.action == "ALLOW"]
    if not allows:
        return Decision(Outcome.ALLOW, DEFAULT_POLICY, "no ALLOW or DENY policy decides: allowed")
    hit, maybe = _first_match(allows, req)
    if hit is not None:
        return Decision(Outcome.ALLOW, hit.ref, f"ALLOW policy {hit.ref} matches")
    if maybe is not None:
        return _undecided("ALLOW", *maybe)
    names = ", ".join(p.ref for p in allows[:5])
    return Decision(
        Outcome.DENY,
        allows[0].ref,
        f"ALLOW policies apply ({names}) and none matches: denied",
    )


__all__ = [
    "DEFAULT_POLICY",
    "HTTP_OPERATION_FIELDS",
    "Condition",
    "Decision",
    "Outcome",
    "Policy",
    "PolicySet",
    "Request",
    "Rule",
    "Unknown",
    "Workload",
    "applies",
    "decide",
    "is_http_only_condition",
    "policy_matches",
    "read_policies",
    "read_policy",
    "tcp_rule",
    "wildcard",
]
