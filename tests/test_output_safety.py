"""Reports carry what servers and files sent (names, reasons, evidence): every format
stays well-formed whatever those strings hold (issue 10 rule 10).

- json / jsonl: strict UTF-8, no unpaired surrogate escapes, parseable;
- table: one line per result, no control characters, no U+2028/U+2029, no bidi
  overrides reaching the terminal;
- junit: well-formed XML 1.0.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.report import render_json, render_jsonl, render_junit, render_table
from probe.results import Result, Verdict

NASTY = [
    "ns/\ud800lone",  # lone high surrogate (e.g. from surrogateescape'd bytes)
    "ns/\udcff",
    "ns/\u2028line\u2029para",
    "ns/\x1b[2J\x1b]0;title\x07",
    "ns/\u202eevil\u202c",
    "ns/\x85nel\x00nul\r\n",
    "ns/ok-é-ß-😀",
]


def _result(text: str, verdict: Verdict = Verdict.FAIL) -> Result:
    return Result(
        check="peer-cert",
        target=text,
        verdict=verdict,
        reason=f"server sent {text}",
        endpoint="127.0.0.1:80",
        evidence={"san": text, text: [text, {"nested": text}], "n": 1},
    )


def _strict_utf8(out: str) -> bytes:
    # Raises on a lone surrogate in the text itself; an unpaired ``\\ud800`` escape
    # shows up as a surrogate in what json.loads returns (_no_surrogates).
    return out.encode("utf-8")


def _no_surrogates(value: Any) -> None:
    if isinstance(value, str):
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in value), repr(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_surrogates(k)
            _no_surrogates(v)
    elif isinstance(value, list):
        for v in value:
            _no_surrogates(v)


@pytest.mark.parametrize("text", NASTY)
def test_json_is_strict_utf8(text: str) -> None:
    out = render_json([_result(text)])
    doc = json.loads(_strict_utf8(out))
    _no_surrogates(doc)
    assert doc["summary"]["fail"] == 1
    for line in render_jsonl([_result(text), _result(text)]).splitlines():
        _no_surrogates(json.loads(_strict_utf8(line)))


def test_json_keeps_ordinary_unicode() -> None:
    doc = json.loads(render_json([_result("ns/ok-é-ß-😀")]))
    assert doc["results"][0]["target"] == "ns/ok-é-ß-😀"
    doc = json.loads(render_json([_result("ns/\ud800x")]))
    assert doc["results"][0]["target"] == "ns/\\ud800x"  # visible, not lost


@pytest.mark.parametrize("text", NASTY)
def test_table_neutralises_control_and_separators(text: str) -> None:
    out = render_table([_result(text), _result("plain", Verdict.PASS)])
    lines = out.split("\n")
    assert len(lines) == 6  # header, two results, blank, summary, "" after the last newline
    for line in lines:
        assert line.isprintable(), repr(line)  # no C0/C1, U+2028/9, bidi, surrogates
    out.encode("utf-8")


def test_table_colour_codes_are_ours_only() -> None:
    out = render_table([_result("ns/\x1b[31mred")], colour=True)
    assert out.count("\x1b") == 2  # the verdict's colour and its reset


@pytest.mark.parametrize("text", NASTY)
def test_junit_is_well_formed_xml(text: str) -> None:
    out = render_junit([_result(text), _result(text, Verdict.ERROR), _result(text, Verdict.SKIP)])
    out.encode("utf-8")
    root = ET.fromstring(out.encode("utf-8"))
    assert root.tag == "testsuites"


_any_text = st.text(st.characters(), max_size=40)


@settings(max_examples=200)
@given(target=_any_text, reason=_any_text, ev=st.dictionaries(_any_text, _any_text, max_size=3))
def test_every_format_survives_any_string(target: str, reason: str, ev: dict[str, str]) -> None:
    r = Result(check="mesh", target=target, verdict=Verdict.ERROR, reason=reason, evidence=ev)
    _no_surrogates(json.loads(_strict_utf8(render_json([r]))))
    _no_surrogates(json.loads(_strict_utf8(render_jsonl([r]))))
    table = render_table([r])
    assert all(line.isprintable() for line in table.split("\n"))
    ET.fromstring(render_junit([r]).encode("utf-8"))


def test_cli_table_survives_a_non_utf8_terminal(tmp_path: Path) -> None:
    """A table with non-ASCII names printed where stdout is ASCII: escaped, no crash."""
    code = (
        "import sys\n"
        "from probe.cliargs import emit_report\n"
        "from probe.results import Result, Verdict\n"
        "r = Result(check='mesh', target='ns/caf\\u00e9', verdict=Verdict.PASS, reason='ok')\n"
        "emit_report([r], 'table', None)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        env={"PYTHONIOENCODING": "ascii", "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parent.parent,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"ns/caf\\xe9" in proc.stdout
