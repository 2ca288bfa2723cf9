"""Results as Kubernetes policy reports, so mTLS verdicts show up where platform teams
already look (Kyverno's Policy Reporter UI, ``kubectl get polr``).

One report per target namespace, named ``mtlsprobe``: each result becomes a report
result with ``policy: mtlsprobe``, ``rule: <check>``, ``result: pass|fail|error|skip``,
``source: mtlsprobe``, ``resources`` pointing at the Service (and the Pod, when the
caller knows which pod an endpoint is), and ``properties`` carrying the evidence as
strings (the CRDs allow only string values). Two kinds:

- ``wgpolicyk8s.io/v1alpha2`` ``PolicyReport`` (the Kubernetes policy WG's, what
  Kyverno and Policy Reporter read today);
- ``openreports.io/v1alpha1`` ``Report`` (its successor, behind ``kind="openreports"``).

Pure: no cluster here. jobs.launch.policyreports writes these objects; ``-o
policyreport`` prints them as a YAML stream (``kubectl apply -f -`` takes it).
An object stays under etcd's 1.5 MiB request limit: every property is bounded, and past
``MAX_RESULTS`` results or ``MAX_BYTES`` of them a report keeps fails and errors first
and says how many it dropped (the summary still counts every result).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from probe.results import Result, Verdict

if TYPE_CHECKING:
    from probe.compliance import ControlMap

POLICY = "mtlsprobe"
SOURCE = "mtlsprobe"
REPORT_NAME = "mtlsprobe"
CATEGORY = "mTLS"
MANAGED_BY = {"app.kubernetes.io/managed-by": "mtlsprobe"}
REPORT_LABEL = "mtlsprobe.dev/report"
TRUNCATED = "mtlsprobe.dev/dropped-results"


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    group: str
    version: str
    plural: str


KINDS: dict[str, Kind] = {
    "policyreport": Kind(
        "wgpolicyk8s.io/v1alpha2", "PolicyReport", "wgpolicyk8s.io", "v1alpha2", "policyreports"
    ),
    "openreports": Kind(
        "openreports.io/v1alpha1", "Report", "openreports.io", "v1alpha1", "reports"
    ),
}
MAX_RESULTS = 1000
MAX_BYTES = 1_000_000  # of results, as JSON: leaves room for metadata under 1.5 MiB
MAX_PROPERTY = 1024
MAX_EVIDENCE_KEYS = 32  # per result: with MAX_PROPERTY, a result stays under ~40 KB
MAX_MESSAGE = 1024
# Policy Reporter sorts and alerts by severity; a verdict that is not a pass matters.
_SEVERITY = {Verdict.FAIL: "high", Verdict.ERROR: "medium"}
_KEEP_FIRST = {Verdict.FAIL: 0, Verdict.ERROR: 1, Verdict.PASS: 2, Verdict.SKIP: 3}
_NS = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")

ObjectRef = dict[str, str]
# A result's Kubernetes objects (the Service, the Pod behind an endpoint).
Resolver = Callable[[Result], list[ObjectRef]]


def namespace_of(r: Result, fallback: str) -> str:
    """The target's namespace: ``ns/name`` targets (what the planner writes) and the
    plan's ``namespace ns`` findings, else ``fallback``."""
    head, sep, _ = r.target.partition("/")
    if sep and _NS.fullmatch(head):
        return head
    word, _, ns = r.target.partition(" ")
    if word == "namespace" and _NS.fullmatch(ns):
        return ns
    return fallback


def service_ref(r: Result) -> list[ObjectRef]:
    """The default resolver: ``ns/name`` targets are Services of that name."""
    ns, sep, name = r.target.partition("/")
    name = name.split(":", 1)[0]  # "ns/svc:port" targets name the port too
    if sep and _NS.fullmatch(ns) and _NAME.fullmatch(name):
        return [{"apiVersion": "v1", "kind": "Service", "namespace": ns, "name": name}]
    return []


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def properties(r: Result, controls: ControlMap | None) -> dict[str, str]:
    """The evidence, flattened to the strings the CRDs allow, each bounded."""
    props: dict[str, str] = {"target": r.target}
    if r.endpoint is not None:
        props["endpoint"] = r.endpoint
    if r.expected is not None:
        props["expected"] = r.expected
    if r.observed is not None:
        props["observed"] = r.observed
    items = sorted(r.evidence.items(), key=lambda kv: str(kv[0]))
    for key, value in items[:MAX_EVIDENCE_KEYS]:
        props[f"evidence.{key}"] = _string(value)
    if len(items) > MAX_EVIDENCE_KEYS:
        props["evidence.omitted"] = f"{len(items) - MAX_EVIDENCE_KEYS} more evidence fields"
    if controls is not None:
        labels = controls.labels(r.check)
        if labels:
            props["controls"] = ", ".join(labels)
    return {_bounded(k, 253): _bounded(v, MAX_PROPERTY) for k, v in props.items()}


def report_result(
    r: Result, *, controls: ControlMap | None, resolve: Resolver, now_s: int
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "policy": POLICY,
        "rule": r.check,
        "result": r.verdict.value,
        "source": SOURCE,
        "category": CATEGORY,
        "message": _bounded(" ".join(r.reason.split()), MAX_MESSAGE),
        "scored": True,
        "timestamp": {"seconds": int(r.end_ns // 1_000_000_000) or now_s, "nanos": 0},
        "properties": properties(r, controls),
    }
    if r.verdict in _SEVERITY:
        out["severity"] = _SEVERITY[r.verdict]
    refs = resolve(r)
    if refs:
        out["resources"] = refs
    return out


def summary(results: Sequence[Result]) -> dict[str, int]:
    counts = {v.value: 0 for v in Verdict}
    for r in results:
        counts[r.verdict.value] += 1
    return {
        "pass": counts["pass"],
        "fail": counts["fail"],
        "warn": 0,
        "error": counts["error"],
        "skip": counts["skip"],
    }


def build_reports(
    results: Sequence[Result],
    *,
    kind: str = "policyreport",
    controls: ControlMap | None = None,
    resolve: Resolver = service_ref,
    fallback_namespace: str = "mtlsprobe",
    labels: Mapping[str, str] | None = None,
    now_s: int = 0,
) -> list[dict[str, Any]]:
    """One report object per target namespace, sorted by namespace."""
    k = KINDS[kind]
    by_ns: dict[str, list[Result]] = {}
    for r in results:
        by_ns.setdefault(namespace_of(r, fallback_namespace), []).append(r)
    out: list[dict[str, Any]] = []
    for ns in sorted(by_ns):
        rs = by_ns[ns]
        rendered = [report_result(r, controls=controls, resolve=resolve, now_s=now_s) for r in rs]
        kept: list[int] = []
        budget = MAX_BYTES
        for i in sorted(range(len(rs)), key=lambda i: _KEEP_FIRST[rs[i].verdict]):
            size = len(json.dumps(rendered[i], ensure_ascii=False)) + 1
            if len(kept) >= MAX_RESULTS:
                break
            if size > budget:
                continue  # a smaller one may still fit; the count says what was dropped
            budget -= size
            kept.append(i)
        kept.sort()  # back in the order they came
        metadata: dict[str, Any] = {
            "name": REPORT_NAME,
            "namespace": ns,
            "labels": {**MANAGED_BY, REPORT_LABEL: "true", **(labels or {})},
        }
        if len(kept) < len(rs):
            metadata["annotations"] = {TRUNCATED: str(len(rs) - len(kept))}
        obj: dict[str, Any] = {"apiVersion": k.api_version, "kind": k.kind, "metadata": metadata}
        if kind == "openreports":
            obj["source"] = SOURCE
        obj["summary"] = summary(rs)
        obj["results"] = [rendered[i] for i in kept]
        out.append(obj)
    return out


def render_reports(results: Sequence[Result], **kwargs: Any) -> str:
    """``-o policyreport``: the objects as a YAML stream, ready for ``kubectl apply -f -``."""
    import time

    import yaml

    from probe.report import utf8_safe

    kwargs.setdefault("now_s", int(time.time()))
    docs = [utf8_safe(o) for o in build_reports(results, **kwargs)]
    if not docs:
        return ""
    return yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=False, width=1000)


__all__ = [
    "KINDS",
    "MANAGED_BY",
    "POLICY",
    "REPORT_LABEL",
    "REPORT_NAME",
    "build_reports",
    "namespace_of",
    "render_reports",
    "service_ref",
]
