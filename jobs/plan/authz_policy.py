"""AuthorizationPolicy objects as the decision engine (jobs.plan.authz) and the lab's RBAC
translation (jobs.lab.authz_rbac) read them: rules, sources, operations, conditions,
read once from the body with every field checked (istio.io reference "Authorization
Policy"). A field that cannot be read is kept as the policy's ``problem``: such a policy
is never guessed at. Also the tcp form of a rule (istiod's builder). Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from jobs.plan.objects import KubeObject, annotations_of, name, namespace, spec

ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
DRY_RUN_ANNOTATION = "istio.io/dry-run"

# Fields only an HTTP request carries (istio.io reference: "only supported for HTTP").
HTTP_SOURCE_FIELDS = ("requestPrincipals", "notRequestPrincipals")
HTTP_OPERATION_FIELDS = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
_SOURCE_FIELDS = (
    "principals",
    "notPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    *HTTP_SOURCE_FIELDS,
)
_OPERATION_FIELDS = ("ports", "notPorts", *HTTP_OPERATION_FIELDS)
MAX_VALUES = 4096  # per field: a policy is a config object, not a data set


@dataclass(frozen=True)
class Condition:
    key: str
    values: tuple[str, ...]
    not_values: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    """``froms``/``tos``: each a mapping field -> values (None: the list was absent,
    so any source / any operation)."""

    froms: tuple[Mapping[str, tuple[str, ...]], ...] | None
    tos: tuple[Mapping[str, tuple[str, ...]], ...] | None
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    action: str
    selector: Mapping[str, str] | None
    rules: tuple[Rule, ...]
    target_refs: bool = False
    dry_run: bool = False
    provider: str | None = None
    problem: str | None = None  # a field that could not be read; the policy is undecidable

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


# ---- reading policies ------------------------------------------------------------------------


class _Bad(ValueError):
    pass


def _strings(raw: object, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_VALUES:
        raise _Bad(f"{where} is not a list of strings")
    out: list[str] = []
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise _Bad(f"{where} is not a list of strings")
        out.append(str(v))
    return tuple(out)


def _fields(raw: object, allowed: tuple[str, ...], where: str) -> dict[str, tuple[str, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _Bad(f"{where} is not a mapping")
    unknown = set(raw) - set(allowed)
    if unknown:
        raise _Bad(f"{where}.{sorted(map(str, unknown))[0]} is not a field this engine knows")
    return {k: vals for k in allowed if (vals := _strings(raw.get(k), f"{where}.{k}"))}


def _entries(
    raw: object, key: str, allowed: tuple[str, ...], where: str
) -> tuple[dict[str, tuple[str, ...]], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise _Bad(f"{where} is not a non-empty list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _Bad(f"{where}[{i}] is not a mapping")
        out.append(_fields(item.get(key), allowed, f"{where}[{i}].{key}"))
    return tuple(out)


def _rule(raw: object, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise _Bad(f"{where} is not a mapping")
    when: list[Condition] = []
    raw_when = raw.get("when")
    if raw_when is not None and not isinstance(raw_when, list):
        raise _Bad(f"{where}.when is not a list")
    for j, c in enumerate(raw_when or ()):
        if not isinstance(c, dict) or not isinstance(c.get("key"), str):
            raise _Bad(f"{where}.when[{j}] has no key")
        when.append(
            Condition(
                c["key"],
                _strings(c.get("values"), f"{where}.when[{j}].values"),
                _strings(c.get("notValues"), f"{where}.when[{j}].notValues"),
            )
        )
    return Rule(
        froms=_entries(raw.get("from"), "source", _SOURCE_FIELDS, f"{where}.from"),
        tos=_entries(raw.get("to"), "operation", _OPERATION_FIELDS, f"{where}.to"),
        when=tuple(when),
    )


def read_policy(obj: KubeObject) -> Policy:
    """One AuthorizationPolicy body as the engine needs it. A field it cannot read makes
    ``problem`` say which; such a policy is never guessed at (its decisions skip)."""
    s = spec(obj)
    action = s.get("action") or "ALLOW"
    sel_raw = s.get("selector")
    selector: dict[str, str] | None = None
    ns, nm = namespace(obj), name(obj)
    refs = bool(s.get("targetRef") or s.get("targetRefs"))
    dry = annotations_of(obj).get(DRY_RUN_ANNOTATION, "").lower() == "true"
    provider = s.get("provider")
    prov = provider.get("name") if isinstance(provider, dict) else None
    try:
        if action not in ACTIONS:
            raise _Bad(f"action {str(action)[:40]!r} is not one of {', '.join(ACTIONS)}")
        if sel_raw is not None:
            labels = sel_raw.get("matchLabels") if isinstance(sel_raw, dict) else None
            if labels is not None and not (
                isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
            ):
                raise _Bad("selector.matchLabels is not a map of strings")
            selector = dict(labels or {})
        raw_rules = s.get("rules")
        if raw_rules is not None and not isinstance(raw_rules, list):
            raise _Bad("rules is not a list")
        rules = tuple(_rule(r, f"rules[{i}]") for i, r in enumerate(raw_rules or ()))
        problem = None
    except _Bad as exc:
        rules, problem = (), str(exc)
    return Policy(
        namespace=ns,
        name=nm,
        action=str(action)[:40],
        selector=selector,
        rules=rules,
        target_refs=refs,
        dry_run=dry,
        provider=prov if isinstance(prov, str) else None,
        problem=problem,
    )


def read_policies(objs: Iterable[KubeObject]) -> list[Policy]:
    """Sorted by namespace and name, so the policy a decision names is stable."""
    return sorted((read_policy(o) for o in objs), key=lambda p: (p.namespace, p.name))


# ---- tcp ports -----------------------------------------------------------------------------


def is_http_only_condition(key: str) -> bool:
    return key.startswith("request.")


def has_http_fields(rule: Rule) -> bool:
    froms = any(f in e for e in rule.froms or () for f in HTTP_SOURCE_FIELDS)
    tos = any(f in e for e in rule.tos or () for f in HTTP_OPERATION_FIELDS)
    return froms or tos or any(is_http_only_condition(c.key) for c in rule.when)


def _without(
    entries: tuple[Mapping[str, tuple[str, ...]], ...] | None, drop: tuple[str, ...]
) -> tuple[Mapping[str, tuple[str, ...]], ...] | None:
    if entries is None:
        return None
    return tuple({k: v for k, v in e.items() if k not in drop} for e in entries)


def tcp_rule(rule: Rule, action: str) -> Rule | None:
    """The rule as istiod builds it for a tcp port: an ALLOW rule with HTTP-only fields is
    dropped (None: it never matches); a DENY/AUDIT rule loses those fields and the rest
    still applies."""
    if not has_http_fields(rule):
        return rule
    if action == "ALLOW":
        return None
    return Rule(
        froms=_without(rule.froms, HTTP_SOURCE_FIELDS),
        tos=_without(rule.tos, HTTP_OPERATION_FIELDS),
        when=tuple(c for c in rule.when if not is_http_only_condition(c.key)),
    )
