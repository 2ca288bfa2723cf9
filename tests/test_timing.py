"""Timings through the pod logs: ``check --timing`` adds each result's start and end
to json/jsonl (the contract otherwise unchanged), and ``mtlsprobe run``'s judge reads
them back exactly; anything odd in them is dropped, never trusted and never fatal."""

from __future__ import annotations

import json

import pytest

from jobs.launch import judge
from probe.report import render
from probe.results import (
    CONTRACT_KEYS,
    TIMING_KEY,
    Origin,
    Result,
    Verdict,
    parse_rfc3339_ns,
    rfc3339_ns,
)

START = 1_795_000_000_123_456_789  # 2026-11-18, nine significant fraction digits
RAN = Result(
    "plaintext",
    "ns/a",
    Verdict.PASS,
    "reset",
    endpoint="10.0.0.1:80",
    start_ns=START,
    end_ns=START + 12_345_678,
)
SKIPPED = Result("xfcc-spoof", "ns/a", Verdict.SKIP, "not echo", end_ns=START + 5)


def test_rfc3339_keeps_every_nanosecond() -> None:
    assert rfc3339_ns(START) == "2026-11-18T11:06:40.123456789Z"
    assert parse_rfc3339_ns(rfc3339_ns(START)) == START
    assert parse_rfc3339_ns("2026-11-18T11:06:40Z") == START - 123_456_789
    assert parse_rfc3339_ns("2026-11-18T11:06:40.5Z") == START - 123_456_789 + 500_000_000


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026-11-18T11:06:40.123456789",  # no zone
        "2026-11-18T11:06:40+01:00",
        "2026-11-18T11:06:40.1234567891Z",  # ten digits
        "2026-13-19T08:26:40Z",
        "٢٠٢٦-11-19T08:26:40Z",  # Arabic-Indic digits
        "2026-11-19 08:26:40Z",
        "2026-11-18T11:06:40.123Z\n",
    ],
)
def test_anything_else_is_not_a_time(text: str) -> None:
    assert parse_rfc3339_ns(text) is None


def test_the_contract_is_unchanged_unless_timing_is_asked_for() -> None:
    for fmt in ("json", "jsonl"):
        plain = render([RAN, SKIPPED], fmt)
        assert TIMING_KEY not in plain
    doc = json.loads(render([RAN, SKIPPED], "json", timing=True))
    first, skip = doc["results"]
    assert list(first) == [*CONTRACT_KEYS, TIMING_KEY]  # extended at the end only
    assert first[TIMING_KEY] == {
        "start": "2026-11-18T11:06:40.123456789Z",
        "end": "2026-11-18T11:06:40.135802467Z",
        "duration": 0.012345678,
    }
    # a skip has no start: an instant at its end
    assert skip[TIMING_KEY]["start"] == skip[TIMING_KEY]["end"]
    assert skip[TIMING_KEY]["duration"] == 0
    never = Result("mesh", "ns/a", Verdict.ERROR, "interrupted")
    assert TIMING_KEY not in never.to_dict(timing=True)  # nothing known, nothing said


def test_judge_reads_timings_back_exactly() -> None:
    parsed = judge.parse_log(render([RAN, SKIPPED], "jsonl", timing=True))
    assert [(r.start_ns, r.end_ns) for r in parsed.results] == [
        (RAN.start_ns, RAN.end_ns),
        (SKIPPED.end_ns, SKIPPED.end_ns),
    ]
    # without --timing (an older probe): the results count, with no times
    old = judge.parse_log(render([RAN], "jsonl"))
    assert [(r.verdict, r.start_ns, r.end_ns) for r in old.results] == [(Verdict.PASS, 0, 0)]


@pytest.mark.parametrize(
    "timing",
    [
        "yesterday",
        [1, 2],
        {"start": 1, "end": 2},
        {"start": "2026-11-18T11:06:40Z"},
        {"start": "2026-11-18T11:06:41Z", "end": "2026-11-18T11:06:40Z"},  # backwards
        {"start": "1970-01-01T00:00:00Z", "end": "2026-11-18T11:06:40Z"},  # epoch 0
        {"start": "2026-11-18T11:06:40Z", "end": "9999-99-99T00:00:00Z"},
    ],
)
def test_odd_timings_are_dropped_and_the_result_kept(timing: object) -> None:
    line = json.dumps({**RAN.to_dict(), TIMING_KEY: timing})
    parsed = judge.parse_log(line)
    assert parsed.ignored == 0
    (r,) = parsed.results
    assert (r.verdict, r.start_ns, r.end_ns) == (Verdict.PASS, 0, 0)


def test_origin_shows_in_reports_and_leaves_the_target_alone() -> None:
    r = Result("plaintext", "ns/a", Verdict.PASS, "reset", origin=Origin("ns-b", None, shown=True))
    assert r.target == "ns/a" and r.shown_target == "ns/a (from ns-b)"
    assert r.to_dict()["target"] == "ns/a (from ns-b)"
    assert "ns/a (from ns-b)" in render([r], "table")
    assert 'name="ns/a (from ns-b)"' in render([r], "junit")
    quiet = Result("plaintext", "ns/a", Verdict.PASS, "reset", origin=Origin("ns-b"))
    assert quiet.to_dict()["target"] == "ns/a"


def test_a_crashed_pods_log_keeps_what_it_reported_with_its_times() -> None:
    crashed = judge.PodView(
        name="p-0",
        index=0,
        phase="Failed",
        waiting_reason=None,
        waiting_message="",
        exit_code=137,
        terminated_reason="OOMKilled",
        terminated_message="",
        unschedulable=None,
        deleting=False,
    )
    owed = [("plaintext", "ns/a", "10.0.0.1:80"), ("plaintext", "ns/a", "10.0.0.2:80")]
    text = render([RAN], "jsonl", timing=True) + "Killed\n"
    got = judge.from_log(owed, crashed, text, probePod="mtlsprobe/p-0")
    assert [(r.endpoint, r.verdict) for r in got] == [
        ("10.0.0.1:80", Verdict.PASS),
        ("10.0.0.2:80", Verdict.ERROR),
    ]
    assert (got[0].start_ns, got[0].end_ns) == (RAN.start_ns, RAN.end_ns)
    assert got[0].evidence["probePod"] == "mtlsprobe/p-0"
    assert got[1].reason == (
        "probe container OOMKilled (exit 137) in pod p-0 (last log line: Killed); "
        "1 non-result log lines ignored"
    )
    assert got[1].evidence == {"error": "probe-incomplete", "probePod": "mtlsprobe/p-0"}
    (unread,) = judge.log_unreadable(owed[:1], "HTTP 500", probePod="mtlsprobe/p-0")
    assert unread.reason == "probe logs unreadable: HTTP 500"
    assert unread.evidence["error"] == "logs-unreadable"
