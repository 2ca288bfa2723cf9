"""The HTML report: one self-contained page with the verdict matrix.

Rows are sources (the plain probe, the sidecar probe(s), authz identities), columns
are targets grouped by namespace; a cell is coloured by the worst verdict of its
results and opens them on click. Plan findings and round-level notes get their own
section.

Target names, reasons and evidence come from files and servers we do not trust, so
none of it is ever written into markup: the page is a fixed template (CSS and JS in
``html_report.html``) plus one ``<script type="application/json">`` data block in
which every ``<``, ``>`` and ``&`` is a JSON escape; the script renders it with
``textContent``. A Content-Security-Policy in the page allows only the template's
own script and style (by hash) and no network at all, so even a broken escape could
not run injected code or fetch anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from probe import __version__
from probe.checks import PLAIN_CHECKS, REGISTRY, SIDECAR_CHECKS
from probe.results import Result, exit_code, summarize

#: Checks drawn in the matrix; any other check (plan findings ``policy`` and
#: ``require-*``, an agent's ``discovery`` error) is listed in the findings section.
MATRIX_CHECKS = frozenset({*REGISTRY, "control", "authz"})
_SIDECAR_CONTROL = "mesh"  # a control's detector, from its evidence ``detector``

_TEMPLATE = "html_report.html"
_DATA_MARK = "/*__MTLSPROBE_DATA__*/"
_CSP_MARK = "__MTLSPROBE_CSP__"
_ORDER = ("pass", "fail", "error", "skip")  # the trend's columns, as the page reads them
_FROM_SUFFIX = re.compile(r" \(from [^()]*\)$")


@dataclass(frozen=True)
class TrendPoint:
    """One round's counts, for the agent's page."""

    round: int
    started: float  # epoch seconds
    counts: Mapping[str, int]
    failed: bool = False


@dataclass(frozen=True)
class RunInfo:
    """The run's identity in the page header; every field is optional."""

    generated: float = field(default_factory=time.time)  # epoch seconds
    command: str | None = None  # check | run | lab | agent
    cluster: str | None = None  # kube context, "in-cluster", "lab: healthy, broken"
    trust_domain: str | None = None
    root_fingerprints: tuple[str, ...] = ()  # SHA-256 of each mesh root (DER)
    source_identity: str | None = None  # the sidecar probe's SPIFFE ID
    exit_code: int | None = None  # None: from the results
    round: int | None = None
    round_started: float | None = None
    trend: tuple[TrendPoint, ...] = ()
    notes: tuple[tuple[str, str], ...] = ()  # more header rows (label, value)


def root_fingerprints(path: Path | None) -> tuple[str, ...]:
    """``SHA256:AA:BB:…`` of each certificate in a PEM bundle file; nothing when it is
    absent or unreadable (the header then shows no root)."""
    if path is None:
        return ()
    try:
        return pem_fingerprints(path.read_bytes())
    except OSError:
        return ()


def pem_fingerprints(pem: bytes | str | None) -> tuple[str, ...]:
    if not pem:
        return ()
    if isinstance(pem, str):
        pem = pem.encode("utf-8", "replace")
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        return ()
    out = []
    for c in certs:
        digest = hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest().upper()
        out.append("SHA256:" + ":".join(digest[i : i + 2] for i in range(0, 64, 2)))
    return tuple(out)


def source_of(r: Result) -> str:
    """Which row a result belongs to. An explicit ``source`` (authz identities, and
    future results that carry one) wins; else the probe kind that runs the check,
    with the source namespace when ``mtlsprobe run`` probed from several."""
    explicit = getattr(r, "source", None) or r.evidence.get("source")
    if isinstance(explicit, str) and explicit:
        return explicit
    check = r.check
    if check == "control":
        check = str(r.evidence.get("detector", ""))
    if check in PLAIN_CHECKS:
        kind = "plain probe"
    elif check in SIDECAR_CHECKS or check == _SIDECAR_CONTROL:
        kind = "sidecar probe"
    else:
        kind = "probe"
    ns = r.evidence.get("sourceNamespace")
    return f"{kind} ({ns})" if isinstance(ns, str) and ns else kind


def column_of(r: Result) -> tuple[str, str]:
    """(namespace group, target) of a result's column. Names are ``ns/svc:port``
    (the lab prefixes the scenario: ``scenario/ns/svc:port``); ``run`` with several
    source namespaces appends `` (from ns)``, which the row already says."""
    target = r.target
    if r.evidence.get("sourceNamespace"):
        target = _FROM_SUFFIX.sub("", target)
    ns, sep, _ = target.rpartition("/")
    return (ns if sep else "(probe and cluster)"), target


def build_model(results: Sequence[Result], info: RunInfo) -> dict[str, Any]:
    """The page's data: indexes into shared tables keep a 5,000-target page small."""
    sources: dict[str, int] = {}
    columns: dict[tuple[str, str], int] = {}
    checks: dict[str, int] = {}
    rows: list[list[Any]] = []
    findings: list[dict[str, Any]] = []
    for r in results:
        if r.check not in MATRIX_CHECKS and not getattr(r, "source", None):
            findings.append(r.to_dict())
            continue
        s = sources.setdefault(source_of(r), len(sources))
        c = columns.setdefault(column_of(r), len(columns))
        k = checks.setdefault(r.check, len(checks))
        ev = dict(r.evidence)
        rows.append([s, c, k, r.verdict.value, r.endpoint, r.reason, r.expected, r.observed, ev])
    counts = summarize(results)
    doc = {
        "info": {
            "generated": info.generated,
            "command": info.command,
            "cluster": info.cluster,
            "trustDomain": info.trust_domain,
            "roots": list(info.root_fingerprints),
            "sourceIdentity": info.source_identity,
            "version": __version__,
            "exitCode": exit_code(results) if info.exit_code is None else info.exit_code,
            "round": info.round,
            "roundStarted": info.round_started,
            "notes": [list(n) for n in info.notes],
        },
        "summary": counts,
        "total": len(results),
        "sources": list(sources),
        "columns": [list(c) for c in columns],
        "checks": list(checks),
        "results": rows,
        "findings": findings,
        "trend": [
            [p.round, p.started, *(p.counts.get(v, 0) for v in _ORDER), p.failed]
            for p in info.trend
        ],
    }
    return doc


def data_json(model: Mapping[str, Any]) -> str:
    """JSON safe inside ``<script>``: no ``<`` (so no ``</script>`` or ``<!--``),
    ``>`` or ``&`` survives. ASCII only: every other character (U+2028, a lone
    surrogate a server sent) is a ``\\uXXXX`` escape, so the page is valid UTF-8."""
    text = json.dumps(model, separators=(",", ":"), ensure_ascii=True, default=str)
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, esc)
    return text


@cache
def _template() -> tuple[str, str]:
    """(page with the CSP filled in, the CSP); hashed once per process."""
    page = resources.files("probe").joinpath(_TEMPLATE).read_text(encoding="utf-8")
    script = _between(page, "<script>", "</script>")
    style = _between(page, "<style>", "</style>")
    csp = (
        "default-src 'none'; "
        f"script-src '{_sha256(script)}'; "
        f"style-src '{_sha256(style)}'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    return page.replace(_CSP_MARK, csp), csp


def content_security_policy() -> str:
    """The page's policy, for servers that also send it as a header."""
    return _template()[1]


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i : text.index(end, i)]


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def render_html(results: Sequence[Result], info: RunInfo | None = None) -> str:
    page, _ = _template()
    model = build_model(results, info or RunInfo())
    head, _, tail = page.partition(_DATA_MARK)
    return head + data_json(model) + tail
