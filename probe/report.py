"""Report formats: table (people), json (the contract), jsonl (pod logs), junit (CI UIs)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from probe.results import Result, Verdict, summarize
from probe.textsafe import escape

FORMATS = ("table", "json", "jsonl", "junit")

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
_NOT_XML = re.compile(r"[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def _visible(text: str) -> str:
    """For the table: one line, nothing that drives or breaks a terminal."""
    return escape(text)


def _xml_safe(text: str) -> str:
    return _NOT_XML.sub(_escape, text)


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
    results: Sequence[Result], fmt: str, *, colour: bool = False, timing: bool = False
) -> str:
    """``timing`` adds each result's start/end to json and jsonl (``check --timing``)."""
    if fmt == "json":
        return render_json(results, timing=timing)
    if fmt == "jsonl":
        return render_jsonl(results, timing=timing)
    if fmt == "junit":
        return render_junit(results)
    if fmt == "table":
        return render_table(results, colour=colour)
    raise ValueError(f"unknown output format {fmt!r} (known: {', '.join(FORMATS)})")


def render_json(results: Sequence[Result], *, timing: bool = False) -> str:
    doc = {
        "results": [utf8_safe(r.to_dict(timing=timing)) for r in results],
        "summary": summarize(results),
    }
    return json.dumps(doc, indent=2, default=_json_default) + "\n"


def render_jsonl(results: Sequence[Result], *, timing: bool = False) -> str:
    return "".join(
        json.dumps(
            utf8_safe(r.to_dict(timing=timing)), default=_json_default, separators=(",", ":")
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
            _visible(r.endpoint or "-"),
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
    counts = summarize(results)
    lines.append("")
    lines.append(
        f"{len(results)} results: {counts['pass']} pass, {counts['fail']} fail, "
        f"{counts['error']} error, {counts['skip']} skip"
    )
    return "\n".join(lines) + "\n"


def render_junit(results: Sequence[Result]) -> str:
    """One testsuite per check, one testcase per result."""
    from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite

    xml = JUnitXml(name="mtlsprobe")
    suites: dict[str, TestSuite] = {}
    for r in results:
        suite = suites.get(r.check)
        if suite is None:
            suite = suites[r.check] = TestSuite(f"mtlsprobe.{r.check}")
        name = r.shown_target if r.endpoint is None else f"{r.shown_target} {r.endpoint}"
        case = TestCase(_xml_safe(name), classname=_xml_safe(f"mtlsprobe.{r.check}"))
        case.time = max(0.0, (r.end_ns - r.start_ns) / 1e9) if r.start_ns else 0.0
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
