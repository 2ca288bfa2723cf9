"""The agent keeps the last round packed (jobs/agent/packed.py): what /results and the
page serve from the pack is exactly what the round produced."""

from __future__ import annotations

import gzip
import json
import pickle
import re
import urllib.request
from dataclasses import replace
from pathlib import Path

from jobs.agent.packed import PackedResults
from jobs.agent.server import _info
from jobs.agent.state import AgentState, RoundReport
from probe.html_report import RunInfo, render_html
from probe.report import render_json
from probe.results import Origin, Result, Verdict
from tests.agenthelp import (
    ECHO_ID,
    get,
    plain_flags,
    running_agent,
    target,
    wait_for,
    write_targets,
)
from tests.tlsservers import MeshPKI, plaintext_http, serving, tls_handler


def _mixed() -> tuple[Result, ...]:
    """Every field shape a result carries: None and set optionals, nested evidence
    (dict, list, tuple, int, bool, None), an authz case, timing, an origin."""
    return (
        Result(
            "peer-cert",
            "ns-a/echo",
            Verdict.PASS,
            "presented spiffe://cluster.local/ns/ns-a/sa/echo",
            endpoint="10.0.0.1:8080",
            expected="spiffe://cluster.local/ns/ns-a/sa/echo",
            observed="spiffe://cluster.local/ns/ns-a/sa/echo",
            evidence={
                "not_after": "2026-11-28T17:00:00+00:00",
                "chain": [{"subject": "", "san": ("spiffe://x",)}],
                "depth": 2,
                "ok": True,
                "none": None,
            },
            start_ns=1_700_000_000_123_456_789,
            end_ns=1_700_000_000_223_456_789,
        ),
        Result("plaintext", "ns-b/leaky", Verdict.FAIL, "answered in plaintext", "10.0.0.2:80"),
        Result("foreign-client", "ns-b/x", Verdict.ERROR, "timed out", evidence={"error": "t"}),
        Result("mesh", "ns-c/y", Verdict.SKIP, "not applicable"),
        Result(
            "authz",
            "ns-d/z",
            Verdict.PASS,
            "denied",
            source="spiffe://cluster.local/ns/a/sa/b",
            request="GET /x",
            origin=Origin("probe-ns", "spiffe://cluster.local/ns/probe-ns/sa/p", shown=True),
        ),
    )


def test_pack_round_trips_every_field() -> None:
    results = _mixed()
    packed = PackedResults(results)
    assert len(packed) == len(results)
    assert tuple(packed) == results
    assert packed[0] == results[0] and packed[-1] == results[-1]
    assert packed[1:3] == results[1:3]
    assert [type(v) for v in packed[0].evidence["chain"][0].values()] == [str, tuple]
    assert render_json(tuple(packed), timing=True) == render_json(results, timing=True)
    info = RunInfo(generated=1.0)
    assert render_html(tuple(packed), info) == render_html(results, info)


def test_pack_keeps_order_and_count_across_chunks() -> None:
    """Packed a chunk of pickles at a time: every size round-trips, in order."""
    base = _mixed()
    many = tuple(replace(base[i % len(base)], target=f"ns/t{i}") for i in range(2_501))
    for n in (0, 1, 999, 1_000, 1_001, 2_000, 2_501):
        packed = PackedResults(many[:n])
        assert len(packed) == n
        assert packed.unpack() == many[:n]


def test_pack_is_smaller_than_the_objects() -> None:
    """30,000 similar results, as a round has: the pack is a fraction of the pickle."""
    one = _mixed()[0]
    many = tuple(
        Result(one.check, f"ns-{i % 50}/t{i}", one.verdict, one.reason, f"10.1.{i // 250}.{i}:80")
        for i in range(30_000)
    )
    packed = PackedResults(many)
    assert packed.nbytes * 4 < len(pickle.dumps(many))
    assert tuple(packed) == many


def test_state_keeps_the_last_round_packed_with_its_counts() -> None:
    state = AgentState(failure_threshold=3, stale_after_s=60)
    results = _mixed()
    state.round_started()
    kept = state.round_finished(RoundReport(1, 100.0, 1.0, results, False))
    last, trend = state.last_with_trend()
    assert last is kept and isinstance(last.results, PackedResults)
    assert tuple(last.results) == results
    assert trend[0].counts == {"pass": 2, "fail": 1, "error": 1, "skip": 1}
    # A report already packed is kept as is.
    again = state.round_finished(kept)
    assert again.results is kept.results


def test_agent_serves_exactly_the_rounds_results(tmp_path: Path, pki: MeshPKI) -> None:
    """A real round (a STRICT TLS echo, a plaintext liar): /results (plain and gzip)
    and the page are byte for byte what the round's own tuple renders to."""
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    seen: list[RoundReport] = []
    with serving(tls_handler(pki, issued)) as strict, serving(plaintext_http) as leaky:
        f = write_targets(
            tmp_path / "t.yaml",
            [
                target("ns-a/echo", [strict.endpoint], "STRICT", ECHO_ID),
                target("ns-b/leaky", [leaky.endpoint], "STRICT"),
            ],
            root=pki.root_file,
        )
        flags = plain_flags(f, "30", "--timeout", "2", "--rounds", "1")
        with running_agent(*flags, start_rounds=False) as built:
            built.agent.after_round = (seen.append,)
            built.agent.start()
            wait_for(built.agent.done.is_set, timeout=30, what="one round")
            (report,) = seen
            assert isinstance(report.results, tuple) and len(report.results) == 6
            verdicts = {r.verdict for r in report.results}
            assert {Verdict.PASS, Verdict.FAIL} <= verdicts
            expected = render_json(report.results)
            status, body = get(built, "/results")
            assert (status, body) == (200, expected)
            req = urllib.request.Request(
                f"http://127.0.0.1:{built.server.port}/results",
                headers={"accept-encoding": "gzip"},
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.headers["content-encoding"] == "gzip"
                assert gzip.decompress(resp.read()).decode() == expected
            assert json.loads(body)["summary"]["fail"] >= 1
            last, trend = built.agent.state.last_with_trend()
            assert last is not None and isinstance(last.results, PackedResults)
            page = render_html(report.results, _info(last, trend))
            assert _undated(get(built, "/")[1]) == _undated(page)


def _undated(page: str) -> str:
    """The page without the time it was rendered at."""
    undated, n = re.subn(r'"generated":[0-9.e+]+', '"generated":0', page)
    assert n == 1
    return undated
