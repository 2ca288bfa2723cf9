"""What a result looks like to OpenTelemetry: span attributes and metric labels.

Pure functions, no SDK objects, so the mapping is tested on its own. Names follow
the OTel semantic conventions where one fits (``test.*``, ``server.*``, ``tls.*``,
``error.type``, ``k8s.namespace.name``); the rest live under ``mtlsprobe.*``.
Evidence is copied generically (scalars and short lists of scalars) after a
defensive filter: nothing that looks like key material ever leaves the process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from opentelemetry.semconv._incubating.attributes import test_attributes as test
from opentelemetry.semconv._incubating.attributes import tls_attributes as tls
from opentelemetry.semconv.attributes import error_attributes as error
from opentelemetry.semconv.attributes import server_attributes as server

from probe.model import Target, TargetsFile
from probe.results import Result, Verdict
from probe.spiffe import SpiffeIdError, parse_spiffe_id

MAX_STRING = 512  # per attribute value: evidence can carry long hostile strings
MAX_LIST = 16
SUITE_NAME = "mtlsprobe"

# Checks whose certificate evidence is the *server's* certificate (the peer we called).
_SERVER_CERT_CHECKS = frozenset({"peer-cert"})
# The probe's own sidecar certificate: what it presents as a client in mesh calls.
_CLIENT_CERT_CHECKS = frozenset({"self"})

_SECRET_KEY = re.compile(r"(private|secret|passw|token|credential|(^|_)key($|_pem|_der))", re.I)
_SECRET_VALUE = re.compile(r"PRIVATE KEY|-----BEGIN [A-Z ]*KEY-----")
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.-]")  # evidence keys become attribute names


def looks_secret(key: str, value: object) -> bool:
    """Key material must never be exported, whatever a check put in its evidence.
    ``key_type``/``key_size``/``key_usage`` describe a public key and are kept."""
    if _SECRET_KEY.search(key):
        return True
    if isinstance(value, str | bytes):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        return bool(_SECRET_VALUE.search(text))
    if isinstance(value, list | tuple):
        return any(looks_secret("", v) for v in value)
    return False


def spiffe_namespace(spiffe_id: str | None) -> str | None:
    """Istio's namespace from ``spiffe://<td>/ns/<ns>/sa/<sa>``; None for other shapes."""
    if not spiffe_id:
        return None
    try:
        return parse_spiffe_id(spiffe_id).namespace
    except SpiffeIdError:
        return None


def source_identity_of(result: Result, source_identity: str | None) -> str | None:
    """The probe that observed ``result``: its own ``origin`` (``mtlsprobe run``
    collects from probe pods), else the run's ``source_identity``."""
    if result.origin is not None and result.origin.identity:
        return result.origin.identity
    return source_identity


def source_namespace_of(result: Result, source_identity: str | None) -> str | None:
    if result.origin is not None:
        return result.origin.namespace
    return spiffe_namespace(source_identity)


def destination_namespace(
    result: Result, target: Target | None, source_identity: str | None = None
) -> str:
    """The destination's namespace, bounded: from its Istio-shaped SPIFFE ID, else from
    the ``<ns>/<name>`` target name the planner writes, else ``-``. Run-scoped checks
    (``self``: target ``source``) are about the probe itself: its own namespace."""
    if target is None and result.target == "source" and result.endpoint is None:
        return source_namespace_of(result, source_identity) or "-"
    ns = spiffe_namespace(target.identity if target is not None else None)
    if ns:
        return ns
    prefix, sep, _ = result.target.partition("/")
    return clean(prefix, 64) if sep and prefix else "-"


def case_status(verdict: Verdict) -> str | None:
    """``test.case.result.status`` knows only pass and fail. An ``error`` is not a pass
    (fail closed), so it reports ``fail``; a skipped case has no result status.
    ``mtlsprobe.verdict`` always carries the exact verdict."""
    if verdict is Verdict.PASS:
        return test.TestCaseResultStatusValues.PASS.value
    if verdict in (Verdict.FAIL, Verdict.ERROR):
        return test.TestCaseResultStatusValues.FAIL.value
    return None


def suite_status(results: Sequence[Result]) -> str:
    """``test.suite.run.status`` of the whole run."""
    values = test.TestSuiteRunStatusValues
    if any(r.observed == "interrupted" for r in results):
        return values.ABORTED.value
    verdicts = {r.verdict for r in results}
    if verdicts & {Verdict.FAIL, Verdict.ERROR}:
        return values.FAILURE.value
    if verdicts == {Verdict.SKIP}:
        return values.SKIPPED.value
    return values.SUCCESS.value


def clean(text: str, limit: int = MAX_STRING) -> str:
    """Bounded and valid UTF-8: one lone surrogate (a hostile JSON ``\\udXXX``) would
    make protobuf refuse the whole export batch."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _clip(value: Any) -> Any:
    return clean(value) if isinstance(value, str) else value


def _scalar(value: object) -> bool:
    return isinstance(value, str | bool | int | float)


def _attr_value(value: object) -> Any:
    """A value OTel can carry (scalar or homogeneous list), or None to drop it."""
    if _scalar(value):
        return _clip(value)
    if isinstance(value, list | tuple) and value and len(value) <= MAX_LIST:
        kinds = {type(v) for v in value}
        if len(kinds) == 1 and _scalar(value[0]):
            return [_clip(v) for v in value]
    return None


def _utc(text: str) -> str:
    """ISO 8601 in UTC with a ``Z``, as the tls.* conventions show their dates."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return text
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _tls_version(text: str) -> tuple[str, str] | None:
    """``TLSv1.3`` → (``tls``, ``1.3``): the conventions split name and numeric version."""
    m = re.fullmatch(r"(TLS|SSL)v?(\d(?:\.\d)?)", text.strip(), re.I)
    return (m.group(1).lower(), m.group(2)) if m else None


def _certificate_attrs(check: str, ev: Mapping[str, Any]) -> dict[str, Any]:
    if check in _SERVER_CERT_CHECKS:
        hash_, issuer, subject = (
            tls.TLS_SERVER_HASH_SHA256,
            tls.TLS_SERVER_ISSUER,
            tls.TLS_SERVER_SUBJECT,
        )
        not_after, not_before = tls.TLS_SERVER_NOT_AFTER, tls.TLS_SERVER_NOT_BEFORE
    elif check in _CLIENT_CERT_CHECKS:
        hash_, issuer, subject = (
            tls.TLS_CLIENT_HASH_SHA256,
            tls.TLS_CLIENT_ISSUER,
            tls.TLS_CLIENT_SUBJECT,
        )
        not_after, not_before = tls.TLS_CLIENT_NOT_AFTER, tls.TLS_CLIENT_NOT_BEFORE
    else:
        return {}
    out: dict[str, Any] = {}
    if isinstance(ev.get("fingerprint_sha256"), str):
        out[hash_] = ev["fingerprint_sha256"].replace(":", "").upper()
    for key, attr in (("issuer", issuer), ("subject", subject)):
        if isinstance(ev.get(key), str):
            out[attr] = _clip(ev[key])
    for key, attr in (("not_after", not_after), ("not_before", not_before)):
        if isinstance(ev.get(key), str):
            out[attr] = _utc(ev[key])
    return out


def _endpoint_address(endpoint: str) -> tuple[str, int | None]:
    host, _, port = endpoint.rpartition(":")
    if not host:
        return endpoint, None
    return host.strip("[]"), int(port) if port.isdigit() else None


def span_name(result: Result) -> str:
    return f"mtlsprobe.check {result.check}"


def span_attributes(
    result: Result, source_identity: str | None = None, target: Target | None = None
) -> dict[str, Any]:
    """Attributes of one check span. ``target`` (from the targets file) adds the
    destination's expected SPIFFE ID and, for per-target checks, the service address.
    The source is the result's ``origin`` when it has one, else ``source_identity``."""
    source_ns = source_namespace_of(result, source_identity)
    source_identity = source_identity_of(result, source_identity)
    case = f"{result.check} {result.shown_target}" + (
        f" {result.endpoint}" if result.endpoint else ""
    )
    attrs: dict[str, Any] = {
        test.TEST_SUITE_NAME: SUITE_NAME,
        test.TEST_CASE_NAME: _clip(case),
        "mtlsprobe.check": _clip(result.check),
        "mtlsprobe.target": _clip(result.target),
        "mtlsprobe.verdict": result.verdict.value,
        "mtlsprobe.reason": _clip(result.reason),
        "k8s.namespace.name": destination_namespace(result, target, source_identity),
    }
    status = case_status(result.verdict)
    if status is not None:
        attrs[test.TEST_CASE_RESULT_STATUS] = status
    if result.expected is not None:
        attrs["mtlsprobe.expected"] = _clip(result.expected)
    if result.observed is not None:
        attrs["mtlsprobe.observed"] = _clip(result.observed)
    if source_identity:
        attrs["mtlsprobe.source.spiffe_id"] = _clip(source_identity)
    if source_ns:
        attrs["mtlsprobe.source.namespace"] = clean(source_ns, 64)
    if target is not None and target.identity:
        attrs["mtlsprobe.destination.spiffe_id"] = _clip(target.identity)
    if result.endpoint:
        host, port = _endpoint_address(result.endpoint)
        attrs[server.SERVER_ADDRESS] = host
        if port is not None:
            attrs[server.SERVER_PORT] = port
    elif target is not None and result.target == target.name:
        attrs[server.SERVER_ADDRESS] = target.host
        attrs[server.SERVER_PORT] = target.port
    attrs.update(_evidence_attrs(result))
    return attrs


def _evidence_attrs(result: Result) -> dict[str, Any]:
    ev: Mapping[str, Any] = {
        str(k): v for k, v in result.evidence.items() if not looks_secret(str(k), v)
    }
    attrs: dict[str, Any] = {}
    for key, value in ev.items():
        safe = _attr_value(value)
        if safe is not None:
            attrs[f"mtlsprobe.evidence.{_KEY_CHARS.sub('_', key)[:64]}"] = safe
    attrs.update(_certificate_attrs(result.check, ev))
    version = ev.get("tls_version")
    if isinstance(version, str) and (parsed := _tls_version(version)):
        attrs[tls.TLS_PROTOCOL_NAME], attrs[tls.TLS_PROTOCOL_VERSION] = parsed
        attrs[tls.TLS_ESTABLISHED] = True
    if isinstance(ev.get("alpn"), str):
        attrs[tls.TLS_NEXT_PROTOCOL] = _clip(ev["alpn"])
    if isinstance(ev.get("status"), int) and not isinstance(ev.get("status"), bool):
        attrs["http.response.status_code"] = ev["status"]
    if result.verdict is Verdict.ERROR and isinstance(ev.get("error"), str):
        attrs[error.ERROR_TYPE] = _clip(ev["error"])
    return attrs


def run_attributes(results: Sequence[Result], source_identity: str | None = None) -> dict[str, Any]:
    """Attributes of the root span ``mtlsprobe.run``. Without a ``source_identity``, the
    results' own origins name it when they agree on one probe."""
    if source_identity is None:
        seen = {r.origin.identity for r in results if r.origin is not None and r.origin.identity}
        source_identity = seen.pop() if len(seen) == 1 else None
    counts = {v: 0 for v in Verdict}
    for r in results:
        counts[r.verdict] += 1
    attrs: dict[str, Any] = {
        test.TEST_SUITE_NAME: SUITE_NAME,
        test.TEST_SUITE_RUN_STATUS: suite_status(results),
        "mtlsprobe.results": len(results),
        **{f"mtlsprobe.results.{v.value}": n for v, n in counts.items()},
    }
    if source_identity:
        attrs["mtlsprobe.source.spiffe_id"] = _clip(source_identity)
        src_ns = spiffe_namespace(source_identity)
        if src_ns:
            attrs["mtlsprobe.source.namespace"] = src_ns
    return attrs


def check_labels(
    result: Result, target: Target | None, source_identity: str | None = None
) -> dict[str, str]:
    """Labels of the checks counter: bounded (no endpoints, reasons or targets)."""
    source_identity = source_identity_of(result, source_identity)
    return {
        "mtlsprobe.check": result.check,
        "mtlsprobe.verdict": result.verdict.value,
        "k8s.namespace.name": destination_namespace(result, target, source_identity),
    }


def certificate_expiry(
    results: Iterable[Result], targets: Mapping[str, Target], source_identity: str | None = None
) -> dict[tuple[str, str, str], float]:
    """When (Unix seconds) the soonest-expiring certificate seen per (check, target,
    namespace) expires: one series per target, not per pod. Only results where a
    certificate was actually read (pass or fail) count."""
    out: dict[tuple[str, str, str], float] = {}
    for r in results:
        if r.check not in _SERVER_CERT_CHECKS | _CLIENT_CERT_CHECKS:
            continue
        if r.verdict not in (Verdict.PASS, Verdict.FAIL):
            continue
        when = _expires_at(r)
        if when is None:
            continue
        ns = destination_namespace(r, targets.get(r.target), source_identity_of(r, source_identity))
        key = (r.check, r.target, ns)
        out[key] = min(when, out.get(key, when))
    return out


def _expires_at(r: Result) -> float | None:
    raw = r.evidence.get("not_after")
    if isinstance(raw, str):
        try:
            na = datetime.fromisoformat(raw)
        except ValueError:
            na = None
        if na is not None:
            return (na if na.tzinfo else na.replace(tzinfo=UTC)).timestamp()
    remaining = r.evidence.get("remaining_seconds")
    if isinstance(remaining, int | float) and not isinstance(remaining, bool):
        seen = r.end_ns / 1e9 if r.end_ns else datetime.now(UTC).timestamp()
        return seen + float(remaining)
    return None


def targets_by_name(targets: TargetsFile | None) -> dict[str, Target]:
    return {} if targets is None else {t.name: t for t in targets.targets}
