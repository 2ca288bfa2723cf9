"""The lab's Envoy RBAC filters, translated from a scenario's AuthorizationPolicies the
way istiod translates them for a sidecar's inbound (istio/istio
pilot/pkg/security/authz/builder and model; never copied):

- one RBAC filter with action DENY for the DENY policies in force, then one with action
  ALLOW when any ALLOW policy is in force (with no ALLOW rule at all it denies
  everything: "allow-nothing"); AUDIT and dry-run policies enforce nothing; targetRef(s)
  policies are not a sidecar's;
- a rule is one Envoy policy: its ``to`` entries become OR-ed permissions, its ``from``
  entries OR-ed principals, each entry the AND of its fields, ``when`` conditions added to
  every entry; ``principals`` match the peer certificate's URI SAN with ``spiffe://`` in
  front, ``namespaces`` the regex ``.*/ns/<ns>/.*`` on it;
- on tcp ports the network RBAC filter gets the rules with HTTP-only fields dropped (DENY)
  or the rule left out (ALLOW), exactly as the decision engine (jobs.plan.authz) models.

What the lab cannot translate (CUSTOM providers, JWT claims, path templates) is a
ScenarioError naming the policy and the field. Pure: JSON out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from jobs.plan.authz import Policy, Rule, Workload, tcp_rule

Json = dict[str, Any]
_T = "type.googleapis.com/envoy."
_SPIFFE = "spiffe://"


class UntranslatableError(ValueError):
    """A policy the lab cannot enforce as Istio would; the message names it and the field."""


def _string(pattern: str, prefix: str = "") -> Json:
    """istiod's StringMatcherWithPrefix: ``*`` presence (``.+``), ``*x`` suffix, ``x*``
    prefix, else exact."""
    if pattern == "*":
        return {"safe_regex": {"regex": ".+"}}
    if pattern.startswith("*"):
        return {"suffix": prefix + pattern[1:]}
    if pattern.endswith("*"):
        return {"prefix": prefix + pattern[:-1]}
    return {"exact": prefix + pattern}


def _header(name: str, pattern: str) -> Json:
    if pattern == "*":
        return {"header": {"name": name, "present_match": True}}
    return {"header": {"name": name, "string_match": _string(pattern)}}


def _cidr(value: str) -> Json:
    addr, _, length = value.partition("/")
    bits = 128 if ":" in addr else 32
    return {"address_prefix": addr, "prefix_len": int(length) if length else bits}


def _or_ids(ids: list[Json]) -> Json:
    return ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}}


def _or_rules(rules: list[Json]) -> Json:
    return rules[0] if len(rules) == 1 else {"or_rules": {"rules": rules}}


def _ns_regex(pattern: str) -> str:
    return ".*/ns/" + ".*".join(re.escape(p) for p in pattern.split("*")) + "/.*"


def _sa_regex(value: str, policy_ns: str) -> str:
    ns, sep, sa = value.partition("/")
    if not sep:
        ns, sa = policy_ns, value
    return rf"spiffe://.+/ns/{re.escape(ns)}/(.+/|)sa/{re.escape(sa)}(/.+)?"


def _principal_id(key: str, value: str, policy: Policy) -> Json:
    if key in ("principals", "source.principal"):
        return {
            "authenticated": {"principal_name": _string(value, _SPIFFE if value != "*" else "")}
        }
    if key in ("namespaces", "source.namespace"):
        return {"authenticated": {"principal_name": {"safe_regex": {"regex": _ns_regex(value)}}}}
    if key == "serviceAccounts":
        regex = _sa_regex(value, policy.namespace)
        return {"authenticated": {"principal_name": {"safe_regex": {"regex": regex}}}}
    if key in ("ipBlocks", "source.ip"):
        return {"direct_remote_ip": _cidr(value)}
    if key in ("remoteIpBlocks", "remote.ip"):
        return {"remote_ip": _cidr(value)}
    if key == "requestPrincipals":
        return {"not_id": {"any": True}}  # the lab's probes send no JWT: never matches
    if key.startswith("request.headers[") and key.endswith("]"):
        return _header(key[len("request.headers[") : -1], value)
    raise UntranslatableError(
        f"AuthorizationPolicy {policy.ref}: {key} is not translated by the lab"
    )


def _permission(key: str, value: str, policy: Policy) -> Json:
    if key in ("ports", "destination.port"):
        return {"destination_port": int(value)}
    if key == "methods":
        return _header(":method", value)
    if key == "hosts":
        return {
            "header": {
                "name": ":authority",
                "string_match": {**_string(value), "ignore_case": True},
            }
        }
    if key == "paths":
        if "{" in value:
            raise UntranslatableError(f"AuthorizationPolicy {policy.ref}: path template {value!r}")
        return {"url_path": {"path": _string(value)}}
    raise UntranslatableError(
        f"AuthorizationPolicy {policy.ref}: {key} is not translated by the lab"
    )


_PRINCIPAL_KEYS = {
    "principals",
    "namespaces",
    "serviceAccounts",
    "ipBlocks",
    "remoteIpBlocks",
    "requestPrincipals",
}
_WHEN_PRINCIPAL = ("source.principal", "source.namespace", "source.ip", "remote.ip")


def _ids(fields: Mapping[str, tuple[str, ...]], policy: Policy) -> list[Json]:
    out: list[Json] = []
    for key in sorted(_PRINCIPAL_KEYS):
        vals = fields.get(key, ())
        nots = fields.get("not" + key[0].upper() + key[1:], ())
        if vals:
            out.append(_or_ids([_principal_id(key, v, policy) for v in vals]))
        if nots:
            out.append({"not_id": _or_ids([_principal_id(key, v, policy) for v in nots])})
    return out


def _perms(fields: Mapping[str, tuple[str, ...]], policy: Policy) -> list[Json]:
    out: list[Json] = []
    for key in ("ports", "hosts", "methods", "paths"):
        vals = fields.get(key, ())
        nots = fields.get("not" + key[0].upper() + key[1:], ())
        if vals:
            out.append(_or_rules([_permission(key, v, policy) for v in vals]))
        if nots:
            out.append({"not_rule": _or_rules([_permission(key, v, policy) for v in nots])})
    return out


def _envoy_policy(rule: Rule, policy: Policy) -> Json:
    when_ids: list[Json] = []
    when_perms: list[Json] = []
    for c in rule.when:
        is_principal = c.key in _WHEN_PRINCIPAL or c.key.startswith("request.headers[")
        if not (is_principal or c.key == "destination.port"):
            raise UntranslatableError(
                f"AuthorizationPolicy {policy.ref}: when key {c.key!r} is not translated by the lab"
            )
        make = _principal_id if is_principal else _permission
        terms = []
        if c.values:
            terms.append(
                (_or_ids if is_principal else _or_rules)([make(c.key, v, policy) for v in c.values])
            )
        if c.not_values:
            inner = (_or_ids if is_principal else _or_rules)(
                [make(c.key, v, policy) for v in c.not_values]
            )
            terms.append({"not_id": inner} if is_principal else {"not_rule": inner})
        (when_ids if is_principal else when_perms).extend(terms)
    principals = [
        {"and_ids": {"ids": _ids(f, policy) + when_ids or [{"any": True}]}}
        for f in (rule.froms if rule.froms is not None else ({},))
    ]
    permissions = [
        {"and_rules": {"rules": _perms(f, policy) + when_perms or [{"any": True}]}}
        for f in (rule.tos if rule.tos is not None else ({},))
    ]
    return {"permissions": permissions, "principals": principals}


def rbac_filters(policies: Sequence[Policy], tcp: bool, stat: str) -> list[Json]:
    """The RBAC filters for one inbound port of a workload with ``policies`` in force
    (jobs.plan.authz.PolicySet.for_workload): DENY first, then ALLOW. Empty: no filter."""
    out: list[Json] = []
    for action in ("DENY", "ALLOW"):
        mine = [p for p in policies if p.action == action]
        if not mine:
            continue
        rules: dict[str, Json] = {}
        for p in mine:
            if p.problem is not None:
                raise UntranslatableError(f"AuthorizationPolicy {p.ref}: {p.problem}")
            for i, rule in enumerate(p.rules):
                r = tcp_rule(rule, action) if tcp else rule
                if r is not None:
                    rules[f"ns[{p.namespace}]-policy[{p.name}]-rule[{i}]"] = _envoy_policy(r, p)
        kind = "network" if tcp else "http"
        cfg: Json = {
            "@type": f"{_T}extensions.filters.{kind}.rbac.v3.RBAC",
            "rules": {"action": action, "policies": rules},
        }
        if tcp:
            cfg["stat_prefix"] = f"{stat}_rbac_{action.lower()}"
        out.append({"name": f"envoy.filters.{kind}.rbac", "typed_config": cfg})
    return out


def for_inbound(
    policies: Sequence[Policy], workload: Workload, tcp: bool, stat: str, root_namespace: str
) -> str:
    """The filters as JSON text (what spec.InboundPort carries), after checking that no
    CUSTOM policy is in force (an external authorizer the lab does not run)."""
    from jobs.plan.authz import applies

    in_force = [p for p in policies if applies(p, workload, root_namespace)]
    for p in in_force:
        if p.action == "CUSTOM":
            raise UntranslatableError(
                f"AuthorizationPolicy {p.ref}: action CUSTOM (an external authorizer) is not "
                "run by the lab"
            )
    filters = rbac_filters(in_force, tcp, stat)
    return json.dumps(filters) if filters else ""
