"""The ``authz`` check: pure verdicts over what came back, the servers written to make it
lie (none gets a pass), the engine's per-case work, reports (JSON keys, the matrix) and
check selection."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from probe.authzmodel import AuthzCase, AuthzExpect
from probe.checks import DEFAULT_CHECKS, load_check
from probe.checks.authz import HttpAnswer, judge_http, judge_tcp
from probe.checks.base import RunContext, Settings
from probe.checks.meshtcp import TcpMeshResponse
from probe.clusterstats import Transport, TransportSeen
from probe.engine import plan_work, run_checks
from probe.model import Expect, Protocol, Target, TargetsFile
from probe.report import render_json, render_jsonl, render_junit, render_table
from probe.results import Result, Verdict
from tests.meshlab import ECHO, head, workload

ME = "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"
OTHER = "spiffe://cluster.local/ns/other/sa/mtlsprobe"
TLS = TransportSeen(Transport.TLS, "TLS handshake seen", {})
PLAIN = TransportSeen(Transport.PLAINTEXT, "no TLS handshake", {})
UNKNOWN = TransportSeen(Transport.UNKNOWN, "no stats", {})


def case(expect: str = "deny", tcp: bool = False) -> AuthzCase:
    return AuthzCase(ME, AuthzExpect(expect), "ns/p", None if tcp else "GET", None if tcp else "/x")


def ans(status: int, body: bytes, reflected: bool = False) -> HttpAnswer:
    return HttpAnswer(status, body, "m", reflected=reflected)


# ---- pure verdicts -----------------------------------------------------------------------------


def test_envoy_rbac_denial_over_tls_is_deny() -> None:
    j = judge_http(case("deny"), ans(403, b"RBAC: access denied"), TLS)
    assert (j.verdict, j.observed) == (Verdict.PASS, "deny")
    j = judge_http(case("allow"), ans(403, b"RBAC: access denied"), TLS)
    assert (j.verdict, j.observed) == (Verdict.FAIL, "deny")
    assert "ns/p" in j.reason


def test_rbac_words_from_a_non_echo_app_are_not_a_denial() -> None:
    # A real app behind a real sidecar may write Envoy's words itself.
    j = judge_http(case("deny"), ans(403, b"RBAC: access denied"), TLS, echo=False)
    assert j.verdict is Verdict.ERROR and "not a header-reflecting echo" in j.reason


def test_reflection_is_allow() -> None:
    j = judge_http(case("allow"), ans(200, b"{}", reflected=True), None)
    assert (j.verdict, j.observed) == (Verdict.PASS, "allow")
    j = judge_http(case("deny"), ans(404, b"{}", reflected=True), None)
    assert (j.verdict, j.observed) == (Verdict.FAIL, "allow")


@pytest.mark.parametrize("expect", ["allow", "deny"])
@pytest.mark.parametrize(
    ("answer", "seen", "words"),
    [
        # an app without a sidecar saying Envoy's words: not shown to be over TLS
        (ans(403, b"RBAC: access denied"), PLAIN, "not shown to come from"),
        (ans(403, b"RBAC: access denied"), UNKNOWN, "not shown to come from"),
        (ans(403, b"RBAC: access denied"), None, "not shown to come from"),
        # a 200 page reading the RBAC words
        (ans(200, b"RBAC: access denied"), TLS, "is a 403"),
        # a 403 with another body
        (ans(403, b"Forbidden"), TLS, "without Envoy's RBAC body"),
        # 200 to everything, no reflection
        (ans(200, b"ok"), TLS, "does not reflect"),
        (ans(503, b"upstream connect error"), TLS, "never reached a decision"),
    ],
)
def test_liars_never_pass(
    expect: str, answer: HttpAnswer, seen: TransportSeen | None, words: str
) -> None:
    j = judge_http(case(expect), answer, seen)
    assert j.verdict is Verdict.ERROR and words in j.reason, j


def tcp_target(echo: bool = True) -> Target:
    return Target(
        "t", "h.ns.svc.cluster.local", 9000, Expect.STRICT, protocol=Protocol.TCP, echo=echo
    )


def test_tcp_verdicts() -> None:
    sent = b"abc"
    echoed = TcpMeshResponse(sent=sent, reply=sent)
    closed = TcpMeshResponse(sent=sent, closed=True)
    j = judge_tcp(case("allow", tcp=True), tcp_target(), echoed, None)
    assert (j.verdict, j.observed) == (Verdict.PASS, "allow")
    j = judge_tcp(case("deny", tcp=True), tcp_target(), closed, TLS)
    assert (j.verdict, j.observed) == (Verdict.PASS, "deny")
    # closed by a plaintext app, by an app that is no echo, or with nothing known: error
    for tgt, seen in ((tcp_target(), PLAIN), (tcp_target(), UNKNOWN), (tcp_target(False), TLS)):
        j = judge_tcp(case("deny", tcp=True), tgt, closed, seen)
        assert j.verdict is Verdict.ERROR, j
    other = TcpMeshResponse(sent=sent, reply=b"xyz")
    assert judge_tcp(case("allow", tcp=True), tcp_target(), other, TLS).verdict is Verdict.ERROR
    refused = TcpMeshResponse(sent=sent, sidecar_error="upstream connect error")
    assert judge_tcp(case("deny", tcp=True), tcp_target(), refused, TLS).verdict is Verdict.ERROR


# ---- engine, reports, selection ------------------------------------------------------------------


def targets(*cases: AuthzCase) -> TargetsFile:
    with_cases = Target("ns/a:80", "a.ns.svc.cluster.local", 80, Expect.STRICT, authz=cases)
    without = Target("ns/b:80", "b.ns.svc.cluster.local", 80, Expect.STRICT)
    return TargetsFile("cluster.local", (with_cases, without))


def test_one_work_item_per_case_none_without_cases() -> None:
    tf = targets(case("allow"), replace(case("deny"), path="/y"))
    work, skips = plan_work([load_check("authz")], RunContext(tf))
    assert [(w.target.name if w.target else None, w.case.request) for w in work] == [
        ("ns/a:80", "GET /x"),
        ("ns/a:80", "GET /y"),
    ]
    assert skips == []


def test_errors_the_engine_makes_name_source_and_request() -> None:
    # No sidecar at all (no proxy, no admin on this port): every case is an error that
    # still names its source and request.
    tf = replace(
        targets(case("allow")),
        source=replace(TargetsFile("x", ()).source, sidecar_admin="http://127.0.0.1:9"),
    )
    ctx = RunContext(tf, Settings(timeout=1))
    try:
        (r,) = run_checks([load_check("authz")], ctx)
    finally:
        ctx.close()
    assert r.verdict is Verdict.ERROR and (r.source, r.request) == (ME, "GET /x"), r


def result(
    source: str, target: str, observed: str, verdict: Verdict, request: str = "GET /x"
) -> Result:
    return Result(
        "authz",
        target,
        verdict,
        "why",
        expected="allow",
        observed=observed,
        source=source,
        request=request,
    )


def test_json_keys_and_matrix() -> None:
    rs = [
        result(ME, "ns/a:80", "allow", Verdict.PASS),
        result(ME, "ns/a:80", "deny", Verdict.FAIL, "POST /x"),
        result(ME, "ns/b:9000", "deny", Verdict.PASS, "tcp"),
        result(OTHER, "ns/a:80", "deny", Verdict.PASS),
        Result("authz", "ns/a:80", Verdict.SKIP, "other probe", source=OTHER, request="GET /y"),
    ]
    doc = json.loads(render_json(rs))
    first = doc["results"][0]
    assert list(first) == [
        "check",
        "target",
        "source",
        "request",
        "expected",
        "observed",
        "verdict",
        "reason",
        "evidence",
    ]
    assert (first["source"], first["request"]) == (ME, "GET /x")
    assert json.loads(render_jsonl(rs).splitlines()[2])["request"] == "tcp"
    table = render_table(rs)
    assert "SOURCE \\ TARGET" in table
    row = next(line for line in table.splitlines() if line.startswith(ME))
    assert "1 allow, 1 deny, 1 FAIL" in row and "1 deny" in row
    other_row = next(line for line in table.splitlines() if line.startswith(OTHER))
    assert other_row.split()[-1] == "-"  # no case of OTHER's at ns/b
    assert f"ns/a:80 GET /x from {ME}" in render_junit(rs)
    # Results of other checks keep exactly the contract's keys.
    plain = json.loads(render_json([Result("mesh", "t", Verdict.PASS, "r")]))["results"][0]
    assert "source" not in plain and "request" not in plain


def test_authz_joins_default_checks_only_with_cases(tmp_path: Path) -> None:
    import argparse

    from probe.cli import configure, main

    body = (
        "trustDomain: cluster.local\nsource: {sidecarAdmin: 'http://127.0.0.1:9', sidecarProxy: 'http://127.0.0.1:9'}\n"
        "targets:\n  - {name: a, host: a.b.svc.cluster.local, port: 80, expect: STRICT%s}\n"
    )
    seen: dict[str, set[str]] = {}
    for label, extra in (
        (
            "with",
            f', authz: [{{source: "{ME}", method: GET, path: /x, expect: allow, policy: default}}]',
        ),
        ("without", ""),
    ):
        f = tmp_path / f"{label}.yaml"
        f.write_text(body % extra)
        p = argparse.ArgumentParser()
        configure(p)
        out = tmp_path / f"{label}.json"
        args = p.parse_args(["-f", str(f), "-o", "json", "--out", str(out), "--timeout", "0.5"])
        main(args)
        seen[label] = {r["check"] for r in json.loads(out.read_text())["results"]}
    assert "authz" in seen["with"] and "authz" not in seen["without"]
    assert "authz" not in DEFAULT_CHECKS


# ---- the liars behind the lab's real Envoy ----------------------------------------------------


def _argv(apps: Sequence[object]) -> list[str]:
    out = [sys.executable, "-m", "tests.authz_liars"]
    for a in apps:
        out += ["--listen" if a.http else "--tcp-listen", f"{a.ip}:{a.port}={a.name}"]  # type: ignore[attr-defined]
    return out


@pytest.mark.envoy
def test_liars_behind_real_envoy_never_pass(tmp_path: Path) -> None:
    from jobs.lab.runner import running
    from jobs.lab.scenarios import from_files

    workloads = [
        ("web", 8080, "http", "true"),  # honest echo behind a sidecar
        ("rbac-naked", 8080, "http", "false"),  # 403 "RBAC: access denied", no sidecar
        ("fake-app", 8080, "http", "true"),  # 200 "RBAC: access denied"
        ("ok-app", 8080, "http", "true"),  # 200 "ok" to everything
        ("reset-app", 8080, "http", "true"),  # resets every request
        ("pg", 5432, "tcp-pg", "true"),  # honest tcp echo
        ("shut-naked", 5432, "tcp-pg", "false"),  # closes like a denial, no sidecar
    ]
    text = head() + "".join(
        workload(n, [(pn, p, p)], labels={**ECHO, "sidecar.istio.io/inject": inj})
        for n, p, pn, inj in workloads
    )
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    with running(from_files([path]), tmp_path / "lab", serve_argv=_argv) as lab:
        me = lab.targets.source.identity
        assert me is not None
        with_cases = []
        for t in lab.targets.targets:
            tcp = t.protocol is Protocol.TCP
            cs = [
                AuthzCase(
                    me, AuthzExpect.ALLOW, "default", None if tcp else "GET", None if tcp else "/a"
                ),
                AuthzCase(
                    me, AuthzExpect.DENY, "data/p", None if tcp else "POST", None if tcp else "/b"
                ),
                AuthzCase(
                    OTHER, AuthzExpect.DENY, "data/p", None if tcp else "GET", None if tcp else "/c"
                ),
            ]
            with_cases.append(replace(t, authz=tuple(cs), echo=True))
        tf = replace(lab.targets, targets=tuple(with_cases))
        ctx = RunContext(tf, Settings(timeout=3, concurrency=8))
        try:
            results = [r for r in run_checks([load_check("authz")], ctx) if r.check == "authz"]
        finally:
            ctx.close()
        # A targets file that says the probe is someone it is not: its sidecar holds `me`,
        # so running OTHER's cases as OTHER would be a lie; every case is an error.
        posing = replace(tf, source=replace(tf.source, identity=OTHER))
        ctx = RunContext(posing, Settings(timeout=3, concurrency=8))
        try:
            posed = [r for r in run_checks([load_check("authz")], ctx) if r.check == "authz"]
        finally:
            ctx.close()
    assert posed and all(r.verdict is Verdict.ERROR for r in posed), posed
    assert f"not source.identity {OTHER}" in posed[0].reason
    assert len(results) == 3 * len(workloads), results
    mine = {}
    for r in results:
        if r.source == OTHER:
            assert r.verdict is Verdict.SKIP and "run by the probe with identity" in r.reason
            continue
        target = r.target.split(":")[0]
        mine[(target, r.expected)] = r
        if target not in ("data/web", "data/pg"):
            assert r.verdict is Verdict.ERROR, r  # a lie is never a pass, nor a fail
            continue
        # honest apps, no RBAC filter in front: every request gets through
        assert r.observed == "allow", r
        assert r.verdict is (Verdict.PASS if r.expected == "allow" else Verdict.FAIL), r
    naked = mine[("data/rbac-naked", "deny")]
    assert "not shown to come from" in naked.reason, naked
    assert naked.evidence["transport"]["seen"] == "plaintext"
    assert "is a 403" in mine[("data/fake-app", "deny")].reason
    assert "does not reflect" in mine[("data/ok-app", "allow")].reason
    assert "not shown to be over TLS" in mine[("data/shut-naked", "deny")].reason
