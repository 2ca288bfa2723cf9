"""The engine's fail-closed wrapping, bounds and order; the report formats and exit codes."""

from __future__ import annotations

import json
import threading
import time
from typing import ClassVar

from junitparser import Error, Failure, JUnitXml, Skipped

from probe.checks.base import Check, RunContext, Scope, Settings, make_result
from probe.engine import run_checks
from probe.errors import NothingListening, ResetAfterRequest
from probe.model import Endpoint, Expect, Target, TargetsFile
from probe.report import render
from probe.results import CONTRACT_KEYS, Result, Verdict, exit_code

TARGETS = tuple(
    Target(
        name=f"ns/t{i}",
        host=f"t{i}",
        port=80,
        expect=Expect.STRICT,
        endpoints=tuple(Endpoint("127.0.0.1", 1000 + j) for j in range(3)),
    )
    for i in range(4)
)


def ctx(
    concurrency: int = 4, timeout: float = 1.0, targets: tuple[Target, ...] = TARGETS
) -> RunContext:
    return RunContext(
        TargetsFile(trust_domain="cluster.local", targets=targets),
        Settings(timeout=timeout, concurrency=concurrency),
    )


class Counting(Check):
    name = "counting"
    scope: ClassVar[Scope] = Scope.ENDPOINT

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def run(self, c: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.02)
        with self.lock:
            self.active -= 1
        return make_result(self.name, target, endpoint, Verdict.PASS, "ok")


class Raising(Check):
    scope: ClassVar[Scope] = Scope.TARGET

    def __init__(self, name: str, exc: BaseException) -> None:
        self.name = name  # type: ignore[misc]
        self.exc = exc

    def run(self, c: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        raise self.exc


class Hanging(Check):
    name = "hanging"
    scope: ClassVar[Scope] = Scope.RUN

    def run(self, c: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        time.sleep(30)
        return make_result(self.name, None, None, Verdict.PASS, "never")


def test_concurrency_bound_and_plan_order() -> None:
    check = Counting()
    results = run_checks([check], ctx(concurrency=3))
    assert len(results) == 12 and check.peak <= 3 and check.peak >= 2
    assert [(r.target, r.endpoint) for r in results] == [
        (t.name, str(e)) for t in TARGETS for e in t.endpoints
    ]


def test_observation_errors_crashes_and_rejections_are_errors() -> None:
    results = run_checks(
        [
            Raising("obs", NothingListening("nothing listens on x")),
            Raising("crash", ZeroDivisionError("boom")),
            Raising("rej", ResetAfterRequest("reset")),
        ],
        ctx(targets=TARGETS[:1]),
    )
    by = {r.check: r for r in results}
    assert by["obs"].verdict is Verdict.ERROR and by["obs"].reason == "nothing listens on x"
    assert (
        by["crash"].verdict is Verdict.ERROR
        and "probe crashed: ZeroDivisionError" in by["crash"].reason
    )
    assert by["rej"].verdict is Verdict.ERROR and "unexpected" in by["rej"].reason


def test_deadline_turns_hang_into_error() -> None:
    t0 = time.monotonic()
    (r,) = run_checks([Hanging()], ctx(timeout=0.2))
    assert r.verdict is Verdict.ERROR and "deadline" in r.reason
    assert time.monotonic() - t0 < 5


def test_stop_event_interrupts() -> None:
    stop = threading.Event()
    stop.set()
    results = run_checks([Counting()], ctx(), stop=stop)
    assert results and all(
        r.verdict is Verdict.ERROR and r.observed == "interrupted" for r in results
    )


def test_no_endpoints_is_skip() -> None:
    t = Target(name="ns/empty", host="e", port=80, expect=Expect.STRICT)
    (r,) = run_checks([Counting()], ctx(targets=(t,)))
    assert r.verdict is Verdict.SKIP and "no endpoints" in r.reason


SAMPLE = [
    Result(
        "plaintext",
        "ns/a",
        Verdict.PASS,
        "refused",
        endpoint="1.2.3.4:80",
        expected="refused",
        observed="refused",
    ),
    Result(
        "mesh",
        "ns/a",
        Verdict.FAIL,
        "wrong identity",
        expected="x",
        observed="y",
        evidence={"status": 200},
    ),
    Result(
        "peer-cert",
        "ns/b",
        Verdict.ERROR,
        "timed out",
        endpoint="1.2.3.5:80",
        evidence={"error": "timeout"},
    ),
    Result("xfcc-spoof", "ns/b", Verdict.SKIP, "not echo"),
]


def test_json_has_exactly_the_contract_keys() -> None:
    doc = json.loads(render(SAMPLE, "json"))
    assert set(doc) == {"results", "summary"}
    assert doc["summary"] == {"pass": 1, "fail": 1, "error": 1, "skip": 1}
    for r in doc["results"]:
        assert set(r) <= set(CONTRACT_KEYS)
        assert {"check", "target", "verdict", "reason"} <= set(r)
    assert "endpoint" in doc["results"][0] and "endpoint" not in doc["results"][1]


def test_jsonl_one_object_per_line() -> None:
    lines = render(SAMPLE, "jsonl").splitlines()
    assert [json.loads(x)["check"] for x in lines] == [
        "plaintext",
        "mesh",
        "peer-cert",
        "xfcc-spoof",
    ]


def test_junit_maps_verdicts(tmp_path: object) -> None:
    xml = JUnitXml.fromstring(render(SAMPLE, "junit"))
    cases = {case.classname: case for suite in xml for case in suite}
    assert cases["mtlsprobe.plaintext"].is_passed
    assert isinstance(cases["mtlsprobe.mesh"].result[0], Failure)
    assert isinstance(cases["mtlsprobe.peer-cert"].result[0], Error)
    assert isinstance(cases["mtlsprobe.xfcc-spoof"].result[0], Skipped)


def test_table_plain_when_not_a_tty() -> None:
    text = render(SAMPLE, "table")
    assert "\033[" not in text and "FAIL" in text and "1 fail" in text


def test_exit_codes() -> None:
    assert exit_code(SAMPLE) == 1
    assert exit_code([SAMPLE[0], SAMPLE[2]]) == 2
    assert exit_code([SAMPLE[0], SAMPLE[3]]) == 0
    assert exit_code([]) == 0
