"""Report formats: table (people), json (the contract), jsonl (pod logs), junit (CI UIs),
html (the verdict matrix, ``probe.html_report``)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from probe.results import Result, Verdict, summarize
from probe.textsafe import escape

if TYPE_CHECKING:
    from probe.compliance import ControlMap
    from probe.html_report import RunInfo

FORMATS = ("table", "json", "jsonl", "junit", "policyreport", "html")

_COLOURS = {
    Verdict.PASS: "\033[32m",
    Verdict.FAIL: "\033[31;1m",
    Verdict.ERROR: "\033[33;1m",
    Verdict.SKIP: "\033[2m",
}
_RESET = "\033[0m"
# Names and reasons quote what files and servers sent (status lines, alerts, SANs).
# On a terminal a control character would drive it and U+2028/U+2029 break lines;
# lone surrogates are not UTF-8 at all; in XML 1.0 most control characters are not
# allowed. Each format escapes what it cannot carry as ``\xNN``/``\uNNNN`` text.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Compiled on first use (re caches it): this class spans most of Unicode and costs ~6 ms
# to compile, which only the junit format should pay.
_NOT_XML = r"[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def _visible(text: str) -> str:
    """For the table: one line, nothing that drives or breaks a terminal."""
    return escape(text)


def _xml_safe(text: str) -> str:
    return re.sub(_NOT_XML, _escape, text)


def utf8_safe(value: Any) -> Any:
    """``value`` (a JSON-able tree) with lone surrogates in its strings written as
    ``\\udXXX`` text, so ``json.dumps`` never emits an unpaired ``\\ud800`` escape:
    the output is strict UTF-8 whatever a server or a file put in a name."""
    if isinstance(value, str):
        return value if value.isascii() else _SURROGATE.sub(_escape, value)
    if isinstance(value, dict):
        return {utf8_safe(k): utf8_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [utf8_safe(v) for v in value]
    return value


def _json_default(value: object) -> str:
    return str(utf8_safe(str(value)))


def render(
    results: Sequence[Result],
    fmt: str,
    *,
    colour: bool = False,
    timing: bool = False,
    controls: ControlMap | None = None,
    report_kind: str = "policyreport",
    info: RunInfo | None = None,
) -> str:
    """``timing`` adds each result's start/end to json and jsonl (``check --timing``);
    ``controls`` (a compliance mapping) adds control IDs to json/jsonl/junit/policyreport;
    ``report_kind`` picks the policy report API (probe.policyreport.KINDS); ``info`` (the
    run's identity) is only drawn by the html format."""
    if fmt == "json":
        return render_json(results, timing=timing, controls=controls)
    if fmt == "jsonl":
        return render_jsonl(results, timing=timing, controls=controls)
    if fmt == "junit":
        return render_junit(results, controls=controls)
    if fmt == "policyreport":
        from probe.policyreport import render_reports

        return render_reports(results, kind=report_kind, controls=controls)
    if fmt == "table":
        return render_table(results, colour=colour)
    if fmt == "html":
        from probe.html_report import render_html

        return render_html(results, info)
    raise ValueError(f"unknown output format {fmt!r} (known: {', '.join(FORMATS)})")


def _with_controls(r: Result, controls: ControlMap | None, timing: bool = False) -> dict[str, Any]:
    """The contract's object; with a compliance mapping, plus ``controls`` (labels)."""
    out = r.to_dict(timing=timing)
    if controls is not None:
        out["controls"] = controls.labels(r.check)
    return out


def _json_document(
    results: Sequence[Result], controls: ControlMap | None, timing: bool = False
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "results": [utf8_safe(_with_controls(r, controls, timing)) for r in results],
        "summary": summarize(results),
    }
    if controls is not None:
        doc["compliance"] = utf8_safe({"name": controls.name, "controls": controls.status(results)})
    return doc


def render_json(
    results: Sequence[Result], *, timing: bool = False, controls: ControlMap | None = None
) -> str:
    doc = _json_document(results, controls, timing)
    return json.dumps(doc, indent=2, default=_json_default) + "\n"


def json_tree(results: Sequence[Result], *, controls: ControlMap | None = None) -> Any:
    """What ``render_json`` prints, parsed back (plain JSON values only): for the
    attestation, without the indented encoder's cost."""
    text = json.dumps(_json_document(results, controls), default=_json_default)
    return json.loads(text)


def render_jsonl(
    results: Sequence[Result], *, timing: bool = False, controls: ControlMap | None = None
) -> str:
    return "".join(
        json.dumps(
            utf8_safe(_with_controls(r, controls, timing)),
            default=_json_default,
            separators=(",", ":"),
        )
        + "\n"
        for r in results
    )


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(
    results: Sequence[Result], *, colour: bool = False, reason_width: int = 100
) -> str:
    headers = ("VERDICT", "CHECK", "TARGET", "ENDPOINT", "REASON")
    rows = [
        (
            r.verdict.value.upper(),
            _visible(r.check),
            _visible(r.shown_target),
            _visible(r.endpoint or _case(r) or "-"),
            _truncate(_visible(" ".join(r.reason.split("\n"))), reason_width),
        )
        for r in results
    ]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers[:-1], widths, strict=True)) + "  REASON"]
    for r, row in zip(results, rows, strict=True):
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        if colour:
            cells[0] = f"{_COLOURS[r.verdict]}{cells[0]}{_RESET}"
        lines.append("  ".join(cells) + "  " + row[-1])
    lines.extend(authz_matrix(results))
    counts = summarize(results)
    lines.append("")
    lines.append(
        f"{len(results)} results: {counts['pass']} pass, {counts['fail']} fail, "
        f"{counts['error']} error, {counts['skip']} skip"
    )
    return "\n".join(lines) + "\n"


def _case(r: Result) -> str | None:
    """An authz row's request and caller: ``GET /x by ns/sa`` (the SPIFFE path, short)."""
    if r.request is None:
        return None
    who = r.source or "?"
    parts = who.split("/")
    if len(parts) == 7 and parts[3] == "ns" and parts[5] == "sa":
        who = f"{parts[4]}/{parts[6]}"
    return f"{r.request} by {who}"


def authz_matrix(results: Sequence[Result]) -> list[str]:
    """``authz`` results as a matrix, source identity x target: per cell what was observed
    (allow/deny counts) and how many did not pass, so a person sees who can reach what.
    Cases left to another probe (skips) are not in it."""
    cells: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        if r.check == "authz" and r.source is not None and r.verdict is not Verdict.SKIP:
            cells.setdefault((r.source, r.target), []).append(r)
    if not cells:
        return []
    sources = list(dict.fromkeys(s for s, _ in cells))
    targets = list(dict.fromkeys(t for _, t in cells))

    def cell(rs: list[Result] | None) -> str:
        if not rs:
            return "-"
        seen = [r.observed for r in rs]
        parts = [f"{seen.count(o)} {o}" for o in ("allow", "deny") if o in seen]
        bad = {v: sum(r.verdict is v for r in rs) for v in (Verdict.FAIL, Verdict.ERROR)}
        parts += [f"{n} {v.value.upper()}" for v, n in bad.items() if n]
        return ", ".join(parts) or "-"

    head = ["SOURCE \\ TARGET", *(_visible(t) for t in targets)]
    rows = [[_visible(s), *(cell(cells.get((s, t))) for t in targets)] for s in sources]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    out = ["", "authz (observed per source identity and target; FAIL/ERROR: cases not passing)"]
    for row in [head, *rows]:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return out


def render_junit(results: Sequence[Result], *, controls: ControlMap | None = None) -> str:
    """One testsuite per check, one testcase per result; control IDs as ``control``
    properties of each testcase."""
    from junitparser import (
        Error,
        Failure,
        JUnitXml,
        Properties,
        Property,
        Skipped,
        TestCase,
        TestSuite,
    )

    xml = JUnitXml(name="mtlsprobe")
    suites: dict[str, TestSuite] = {}
    for r in results:
        suite = suites.get(r.check)
        if suite is None:
            suite = suites[r.check] = TestSuite(f"mtlsprobe.{r.check}")
        name = r.shown_target if r.endpoint is None else f"{r.shown_target} {r.endpoint}"
        if r.request is not None:
            name = f"{r.shown_target} {r.request} from {r.source}"
        case = TestCase(_xml_safe(name), classname=_xml_safe(f"mtlsprobe.{r.check}"))
        case.time = max(0.0, (r.end_ns - r.start_ns) / 1e9) if r.start_ns else 0.0
        labels = controls.labels(r.check) if controls is not None else []
        if labels:
            props = Properties()  # type: ignore[no-untyped-call]
            for label in labels:
                props.add_property(Property("control", _xml_safe(label)))
            case.append(props)  # type: ignore[no-untyped-call]
        detail = json.dumps(utf8_safe(r.to_dict()), indent=2, default=_json_default)
        if r.verdict is Verdict.FAIL:
            fail = Failure(_xml_safe(r.reason), type_="fail")
            fail.text = detail
            case.result = [fail]
        elif r.verdict is Verdict.ERROR:
            err = Error(_xml_safe(r.reason), type_=_xml_safe(str(r.evidence.get("error", "error"))))
            err.text = detail
            case.result = [err]
        elif r.verdict is Verdict.SKIP:
            case.result = [Skipped(_xml_safe(r.reason))]
        else:
            case.system_out = detail
        suite.add_testcase(case)
    for suite in suites.values():
        suite.update_statistics()  # type: ignore[no-untyped-call]
        xml.add_testsuite(suite)
    xml.update_statistics()  # type: ignore[no-untyped-call]
    body: bytes = xml.tostring()  # type: ignore[no-untyped-call]
    return '<?xml version="1.0" encoding="utf-8"?>\n' + body.decode("utf-8") + "\n"
