"""The HTML report without a browser: the data block cannot end the script, the CSP
pins the template's own script and style, rows and columns come out of the results
as documented, ``-o html`` / ``--out x.html`` on the CLI, and the agent's page."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from probe.html_report import (
    RunInfo,
    TrendPoint,
    build_model,
    column_of,
    content_security_policy,
    data_json,
    pem_fingerprints,
    render_html,
    source_of,
)
from probe.results import Result, Verdict
from tests.agenthelp import get, running_agent, target, wait_for, write_targets
from tests.tlsservers import MeshPKI, plaintext_http, serving

HOSTILE = "</script><script>window.pwned=1</script><!--<img src=x onerror=alert(1)>&amp;"
DATA_RE = re.compile(r'<script type="application/json" id="mtlsprobe-data">(.*?)</script>', re.S)


def hostile_results() -> list[Result]:
    return [
        Result("plaintext", f"ns-a/{HOSTILE}:80", Verdict.FAIL, HOSTILE, endpoint="10.0.0.1:80",
               evidence={HOSTILE: HOSTILE, "nested": [HOSTILE, {"x": HOSTILE}]}),
        Result("mesh", "ns-a/ok:80", Verdict.PASS, "mtls \u2028 line\u2029 sep \ud800 lone"),
        Result("policy", HOSTILE, Verdict.FAIL, HOSTILE, evidence={"policy": HOSTILE}),
    ]  # fmt: skip


def test_hostile_text_cannot_leave_the_data_block() -> None:
    page = render_html(hostile_results(), RunInfo(cluster=HOSTILE, trust_domain=HOSTILE))
    scripts = re.findall(r"<script\b", page, re.I)
    assert len(scripts) == 2  # the data block and the template's own code, nothing else
    block = DATA_RE.search(page)
    assert block is not None
    data = block.group(1)
    assert "<" not in data and ">" not in data and "&" not in data
    assert "\u2028" not in data and "\u2029" not in data
    doc = json.loads(data)  # still the exact text, once parsed
    assert doc["results"][0][5] == HOSTILE
    assert doc["info"]["cluster"] == HOSTILE
    assert doc["findings"][0]["target"] == HOSTILE
    page.encode("utf-8")  # the lone surrogate was escaped, not emitted


def test_csp_pins_the_template_script_and_style_by_hash() -> None:
    page = render_html([])
    csp = content_security_policy()
    assert f'content="{csp}"' in page
    code = page.split("<script>", 1)[1].split("</script>", 1)[0]
    style = page.split("<style>", 1)[1].split("</style>", 1)[0]
    for text, directive in ((code, "script-src"), (style, "style-src")):
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp  # no network: nothing to fetch, nothing to send
    assert "unsafe-inline" not in csp
    assert not re.search(r"\b(src|href)=\"?(https?:)?//", page)  # self-contained


def test_rows_are_sources_and_columns_targets() -> None:
    rs = [
        Result("plaintext", "ns-a/web:80", Verdict.PASS, "r", endpoint="10.0.0.1:80"),
        Result("peer-cert", "ns-a/web:80", Verdict.FAIL, "r", endpoint="10.0.0.1:80"),
        Result("mesh", "ns-a/web:80", Verdict.PASS, "r"),
        Result("self", "source", Verdict.PASS, "r"),
        Result("control", "mtlsprobe/plain:80", Verdict.PASS, "r",
               evidence={"detector": "plaintext"}),
        Result("mesh", "ns-b/api:80 (from team-a)", Verdict.PASS, "r",
               evidence={"sourceNamespace": "team-a"}),
        Result("authz", "ns-b/api:80", Verdict.FAIL, "r",
               evidence={"source": "spiffe://cluster.local/ns/x/sa/y"}),
        Result("require-strict", "ns-c/db:5432", Verdict.FAIL, "PERMISSIVE"),
        Result("discovery", "cluster", Verdict.ERROR, "API down"),
    ]  # fmt: skip
    model = build_model(rs, RunInfo())
    assert model["sources"] == [
        "plain probe",
        "sidecar probe",
        "sidecar probe (team-a)",
        "spiffe://cluster.local/ns/x/sa/y",
    ]
    assert model["columns"] == [
        ["ns-a", "ns-a/web:80"],
        ["(probe and cluster)", "source"],
        ["mtlsprobe", "mtlsprobe/plain:80"],
        ["ns-b", "ns-b/api:80"],
    ]
    assert [f["check"] for f in model["findings"]] == ["require-strict", "discovery"]
    assert model["info"]["exitCode"] == 1
    assert model["summary"] == {"pass": 5, "fail": 3, "error": 1, "skip": 0}
    assert source_of(rs[4]) == "plain probe" and column_of(rs[5])[1] == "ns-b/api:80"


def test_trend_and_round_identity_ride_along() -> None:
    trend = (
        TrendPoint(1, 1000.0, {"pass": 3, "fail": 1, "error": 0, "skip": 2}),
        TrendPoint(2, 1060.0, {"pass": 4, "fail": 0, "error": 0, "skip": 2}, failed=False),
    )
    doc = json.loads(data_json(build_model([], RunInfo(round=2, trend=trend))))
    assert doc["trend"] == [[1, 1000.0, 3, 1, 0, 2, False], [2, 1060.0, 4, 0, 0, 2, False]]
    assert doc["info"]["round"] == 2


def test_root_fingerprint_is_the_sha256_of_the_der(tmp_path: Path) -> None:
    pki = MeshPKI(tmp_path)
    from cryptography.hazmat.primitives.serialization import Encoding

    der = pki.ca.root.public_bytes(Encoding.DER)
    want = hashlib.sha256(der).hexdigest().upper()
    (got,) = pem_fingerprints(pki.ca.root_pem())
    assert got.replace("SHA256:", "").replace(":", "") == want
    assert pem_fingerprints(b"not a pem") == ()


def _mtlsprobe(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_writes_html_to_stdout_and_by_suffix(tmp_path: Path) -> None:
    with serving(plaintext_http) as srv:
        f = write_targets(tmp_path / "t.yaml", [target("ns-a/plain", [srv.endpoint], "NONE")])
        out = tmp_path / "report.html"
        proc = _mtlsprobe("check", "-f", str(f), "--checks", "plaintext", "-o", "json",
                          "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["pass"] == 1  # stdout keeps -o
    page = out.read_text(encoding="utf-8")
    block = DATA_RE.search(page)
    assert block is not None
    doc = json.loads(block.group(1))
    assert doc["info"]["command"] == "check"
    assert doc["info"]["trustDomain"] == "cluster.local"
    assert doc["info"]["exitCode"] == 0
    assert doc["columns"] == [["ns-a", "ns-a/plain"]]
    with serving(plaintext_http) as srv:
        f = write_targets(tmp_path / "t.yaml", [target("ns-a/plain", [srv.endpoint], "STRICT")])
        proc = _mtlsprobe("check", "-f", str(f), "--checks", "plaintext", "-o", "html")
    assert proc.returncode == 1  # STRICT port accepted plaintext: the page says exit 1
    assert proc.stdout.startswith("<!DOCTYPE html>")
    block = DATA_RE.search(proc.stdout)
    assert block is not None and json.loads(block.group(1))["info"]["exitCode"] == 1


def test_unwritable_out_is_a_usage_error(tmp_path: Path) -> None:
    f = write_targets(tmp_path / "t.yaml", [])
    proc = _mtlsprobe("check", "-f", str(f), "-o", "json", "--out", str(tmp_path / "no/x.html"))
    assert proc.returncode == 64
    assert proc.stderr.count("\n") == 1 and "--out" in proc.stderr


def test_agent_serves_the_matrix_with_the_trend(tmp_path: Path) -> None:
    with serving(plaintext_http) as srv:
        f = write_targets(tmp_path / "t.yaml", [target("ns-a/plain", [srv.endpoint], "NONE")])
        with running_agent(
            "--kind", "plain", "--targets", str(f), "--interval", "30", start_rounds=False
        ) as built:
            status, body = get(built, "/")
            assert status == 503 and "No round completed yet" in body
            built.agent.start()
            wait_for(lambda: get(built, "/")[0] == 200, what="a page")
            for path in ("/", "/report.html", "/report.html?x=1"):
                status, body = get(built, path)
                assert status == 200
                block = DATA_RE.search(body)
                assert block is not None
                doc = json.loads(block.group(1))
                assert doc["info"]["command"] == "agent"
                assert doc["info"]["round"] == 1
                assert len(doc["trend"]) == 1
                assert doc["columns"] == [["ns-a", "ns-a/plain"]]
            assert get(built, "/report.html", method="POST")[0] == 405
            req = urllib.request.Request(
                f"http://127.0.0.1:{built.server.port}/",
                headers={"accept-encoding": "br;q=1, gzip;q=0.8"},
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.headers["content-encoding"] == "gzip"
                assert "script-src 'sha256-" in resp.headers["content-security-policy"]
                assert gzip.decompress(resp.read()).decode() == body
            req = urllib.request.Request(
                f"http://127.0.0.1:{built.server.port}/", headers={"accept-encoding": "gzip;q=0"}
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.headers["content-encoding"] is None
                assert resp.read().decode() == body


def test_agent_trend_keeps_the_last_rounds(tmp_path: Path) -> None:
    from jobs.agent.state import AgentState, RoundReport

    state = AgentState(failure_threshold=3, stale_after_s=60, trend_rounds=3)
    ok = Result("plaintext", "ns/a:80", Verdict.PASS, "r")
    bad = Result("plaintext", "ns/a:80", Verdict.FAIL, "r")
    for n in range(1, 6):
        state.round_started()
        state.round_finished(RoundReport(n, 100.0 * n, 1.0, (ok, bad) if n % 2 else (ok,), False))
    last, trend = state.last_with_trend()
    assert last is not None and last.number == 5
    assert [(p.round, p.counts["pass"], p.counts["fail"]) for p in trend] == [
        (3, 1, 1),
        (4, 1, 0),
        (5, 1, 1),
    ]


@pytest.mark.parametrize("fmt", ["html"])
def test_render_dispatches_html(fmt: str) -> None:
    from probe.report import FORMATS, render

    assert fmt in FORMATS
    assert render([], fmt).startswith("<!DOCTYPE html>")


def test_missing_chromium_skips_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the browser the browser tests skip with a reason and a warning: never a
    silent pass."""
    import shutil

    from tests import htmlbrowser

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with (
        pytest.warns(UserWarning, match="NOT checked in a browser"),
        pytest.raises(pytest.skip.Exception, match="make browser"),
    ):
        htmlbrowser.skip_without_chromium()
