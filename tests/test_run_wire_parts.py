"""The pure parts of ``run --checks wire``: the probe's claim read strictly, the agent's log
cut into reports (chatter skipped, a cut-off or bad report never used), and a claim that
cannot be placed on a node is an error, not a pass."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.launch.wire import IP_KEY, NODE_KEY, Agents, judge_claims
from probe.results import Result, Verdict
from probe.wire.claim import KEY, Claim
from probe.wire.markers import new_marker
from probe.wire.record import Observation, Summary, windows


def _claim(**kw: Any) -> dict[str, Any]:
    base = Claim(
        new_marker(), ("10.0.0.2:8080",), "ns/ctl:80", new_marker(), ("10.0.0.3:80",), 100.0, 101.0
    ).to_dict()
    return {**base, **kw}


def test_a_claim_round_trips() -> None:
    raw = _claim()
    assert Claim.from_dict(raw).to_dict() == raw


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"marker": "mtlsprobe-wire-nothex"}, "marker"),
        ({"control_marker": 7}, "control_marker"),
        ({"endpoints": []}, "endpoints"),
        ({"control_endpoints": ["x" * 101]}, "control_endpoints"),
        ({"control": ""}, "control"),
        ({"started": True}, "started"),
        ({"ended": float("nan")}, "ended"),
        ({"started": 102.0}, "interval"),
    ],
)
def test_a_bad_claim_is_one_line_naming_the_field(change: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Claim.from_dict(_claim(**change))


def _report(started: float, ended: float) -> list[str]:
    s = Summary("any", None, started, ended, 1, 1, 0, 0, 0, 0, "deadline")
    return list(Observation(s, (), ()).to_jsonl())


def test_windows_skip_chatter_and_keep_only_whole_reports() -> None:
    log = [
        "mtlsprobe wire-capture: capturing on any for 60s",
        *_report(1.0, 61.0),
        '{"check": "wire", "verdict": "pass"}',  # not a report record: skipped
        *_report(41.0, 101.0)[:-1],  # no `end` yet: still being written
    ]
    got, problems = windows(log, "agent")
    assert [(o.summary.started, o.summary.ended) for o in got] == [(1.0, 61.0)]
    assert not problems
    bad = [*_report(1.0, 61.0)[:-2], '{"type": "end"}']  # no capture summary
    got, problems = windows(bad, "agent")
    assert not got and problems and "not complete" in problems[0]


def test_a_claim_with_no_node_or_ip_is_an_error_without_any_api_call() -> None:
    r = Result(
        check="wire",
        target="ns/app:80",
        verdict=Verdict.ERROR,
        reason="pending",
        evidence={KEY: _claim(), NODE_KEY: "", IP_KEY: "10.0.0.9"},
    )
    bad = Result(
        check="wire",
        target="ns/b:80",
        verdict=Verdict.ERROR,
        reason="pending",
        evidence={KEY: {"marker": "no"}, NODE_KEY: "n", IP_KEY: "10.0.0.9"},
    )
    other = Result(check="mesh", target="ns/app:80", verdict=Verdict.PASS, reason="ok")
    out = judge_claims(None, Agents("uid", "a=b"), [r, bad, other], 0.0, 0.1)  # type: ignore[arg-type]
    assert out[0].verdict is Verdict.ERROR and out[0].evidence["error"] == "probe-pod-unknown"
    assert out[1].verdict is Verdict.ERROR and out[1].evidence["error"] == "claim-invalid"
    assert out[2] == other
