"""The engine: bounded concurrency, deadlines, fail-closed wrapping, skips, stop, order.

The checks here are small in-test classes that do no I/O: what is under test is the
engine's own scheduling and judgement, with real threads and real clocks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest

from probe.checks.base import Check, RunContext, Scope, Settings, make_result
from probe.engine import run_checks
from probe.errors import NothingListening, ReadTimedOut, ResetAfterRequest, TLSAlert
from probe.model import Endpoint, Expect, Target, TargetsFile
from probe.results import Result, Verdict

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


def make_ctx(
    concurrency: int = 4, timeout: float = 1.0, targets: tuple[Target, ...] = TARGETS
) -> RunContext:
    return RunContext(
        TargetsFile(trust_domain="cluster.local", targets=targets),
        Settings(timeout=timeout, concurrency=concurrency),
    )


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown: checks that 'hang' block on it, so no thread outlives the test."""
    ev = threading.Event()
    try:
        yield ev
    finally:
        ev.set()


class Probe(Check):
    """A configurable in-test check: ``body`` decides what one run does."""

    scope: ClassVar[Scope] = Scope.ENDPOINT

    def __init__(
        self,
        name: str,
        body: Callable[[Target | None, Endpoint | None], Result | None] | None = None,
        *,
        scope: Scope = Scope.ENDPOINT,
        skip: Callable[[Target | None], str | None] | None = None,
    ) -> None:
        self.name = name  # type: ignore[misc]
        self.scope = scope  # type: ignore[misc]
        self._body = body
        self._skip = skip
        self.calls = 0
        self._lock = threading.Lock()

    def skip_reason(self, ctx: RunContext, target: Target | None) -> str | None:
        return self._skip(target) if self._skip else None

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        with self._lock:
            self.calls += 1
        out = self._body(target, endpoint) if self._body else None
        return out or make_result(self.name, target, endpoint, Verdict.PASS, "ok")


class Peak:
    """Counts checks in flight; each waits until ``want`` are in flight, or were once
    (the tail of the work cannot fill every seat), or one wait gave up (a bound below
    ``want``: fail once, not once per item). The wait is generous, far longer than a
    loaded machine needs to start a thread, and below the engine's deadline
    (``PEAK_TIMEOUT`` x 3 + 1 s)."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.active = 0
        self.peak = 0
        self.gave_up = False
        self.cond = threading.Condition()

    def body(self, target: Target | None, endpoint: Endpoint | None) -> None:
        with self.cond:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.cond.notify_all()
            if not self.cond.wait_for(
                lambda: self.active >= self.want or self.peak >= self.want or self.gave_up,
                timeout=PEAK_TIMEOUT * 2,
            ):
                self.gave_up = True
                self.cond.notify_all()
        time.sleep(0.01)
        with self.cond:
            self.active -= 1


PEAK_TIMEOUT = 5.0


def test_concurrency_bound_is_reached_and_never_exceeded() -> None:
    peak = Peak(want=3)
    results = run_checks([Probe("p", peak.body)], make_ctx(concurrency=3, timeout=PEAK_TIMEOUT))
    assert len(results) == 12 and all(r.verdict is Verdict.PASS for r in results)
    assert peak.peak == 3


def test_concurrency_bound_with_many_items_and_default_pool() -> None:
    many = tuple(
        Target(
            name=f"ns/m{i}",
            host="h",
            port=80,
            expect=Expect.STRICT,
            endpoints=tuple(Endpoint("127.0.0.1", 2000 + j) for j in range(50)),
        )
        for i in range(20)
    )
    peak = Peak(want=8)
    workers: set[int] = set()

    def body(t: Target | None, e: Endpoint | None) -> None:
        workers.add(threading.get_ident())  # this run's threads, whatever else is alive
        peak.body(t, e)

    ctx = make_ctx(concurrency=8, timeout=PEAK_TIMEOUT, targets=many)
    results = run_checks([Probe("p", body)], ctx)
    assert len(results) == 1000 and peak.peak == 8
    assert len(workers) <= 8  # 1,000 items, never more than 8 workers


def test_results_come_back_in_plan_order_whatever_the_completion_order() -> None:
    def slow_first(t: Target | None, e: Endpoint | None) -> None:
        assert t is not None and e is not None
        time.sleep(0.05 * (3 - TARGETS.index(t)) + 0.01 * (1002 - e.port))

    checks = [Probe("b", slow_first), Probe("a", scope=Scope.TARGET), Probe("c", scope=Scope.RUN)]
    results = run_checks(checks, make_ctx(concurrency=8))
    got = [(r.check, r.target, r.endpoint) for r in results]
    want = (
        [("b", t.name, str(e)) for t in TARGETS for e in t.endpoints]
        + [("a", t.name, None) for t in TARGETS]
        + [("c", "source", None)]
    )
    assert got == want


def test_deadline_turns_a_hung_check_into_an_error(release: threading.Event) -> None:
    def body(t: Target | None, e: Endpoint | None) -> None:
        release.wait(60)

    hang = Probe("hang", body, scope=Scope.RUN)
    t0 = time.monotonic()
    (r,) = run_checks([hang], make_ctx(timeout=0.2))
    elapsed = time.monotonic() - t0
    assert r.verdict is Verdict.ERROR and "deadline" in r.reason
    assert r.evidence == {"error": "deadline"}
    assert elapsed < 30, elapsed  # deadline is 3 x timeout + 1 s; the hang is 60 s


def test_a_hung_check_does_not_starve_the_others(release: threading.Event) -> None:
    def body(t: Target | None, e: Endpoint | None) -> None:
        if t is TARGETS[0]:
            release.wait(60)

    t0 = time.monotonic()
    results = run_checks(
        [Probe("p", body, scope=Scope.TARGET)], make_ctx(concurrency=1, timeout=0.2)
    )
    elapsed = time.monotonic() - t0
    assert [r.verdict for r in results] == [Verdict.ERROR, Verdict.PASS, Verdict.PASS, Verdict.PASS]
    assert elapsed < 30, elapsed  # not the 60 s hang


def test_when_every_worker_is_stuck_the_rest_is_an_error_not_a_hang(
    release: threading.Event,
) -> None:
    # concurrency 1 = one worker and one spare: two hung checks hold both.
    def body(t: Target | None, e: Endpoint | None) -> None:
        if t in TARGETS[:2]:
            release.wait(60)

    t0 = time.monotonic()
    results = run_checks(
        [Probe("p", body, scope=Scope.TARGET)], make_ctx(concurrency=1, timeout=0.2)
    )
    elapsed = time.monotonic() - t0
    assert [r.evidence.get("error") for r in results] == [
        "deadline",
        "deadline",
        "workers-exhausted",
        "workers-exhausted",
    ]
    assert all(r.verdict is Verdict.ERROR for r in results)
    assert elapsed < 30, elapsed  # two 1.6 s deadlines, not the 60 s hang


def raising(exc: BaseException) -> Callable[[Target | None, Endpoint | None], None]:
    def body(t: Target | None, e: Endpoint | None) -> None:
        raise exc

    return body


def test_exceptions_are_errors_with_a_reason() -> None:
    one = make_ctx(targets=TARGETS[:1])
    checks = [
        Probe(
            "obs", raising(NothingListening("nothing listens on 127.0.0.1:1")), scope=Scope.TARGET
        ),
        Probe("slow", raising(ReadTimedOut("no answer within 1s")), scope=Scope.TARGET),
        Probe("crash", raising(ZeroDivisionError("boom")), scope=Scope.TARGET),
        Probe("exit", raising(SystemExit(3)), scope=Scope.TARGET),
        Probe("reset", raising(ResetAfterRequest("reset after request")), scope=Scope.TARGET),
        Probe(
            "alert",
            raising(TLSAlert("TLS alert certificate_required", "certificate_required")),
            scope=Scope.TARGET,
        ),
    ]
    by = {r.check: r for r in run_checks(checks, one)}
    assert all(r.verdict is Verdict.ERROR for r in by.values())
    assert by["obs"].reason == "nothing listens on 127.0.0.1:1"
    assert by["obs"].observed == "nothing-listening"
    assert by["obs"].evidence == {"error": "nothing-listening"}
    assert by["slow"].reason == "no answer within 1s" and by["slow"].observed == "read-timeout"
    assert by["crash"].reason == "probe crashed: ZeroDivisionError: boom"
    assert by["crash"].evidence == {"error": "probe-crash"}
    assert by["exit"].reason.startswith("probe crashed: SystemExit")
    # A rejection the check did not interpret proves nothing: error, never pass or fail.
    assert by["reset"].reason == "unexpected reset-after-request: reset after request"
    assert by["alert"].observed == "tls-alert"
    assert all(r.start_ns and r.end_ns >= r.start_ns for r in by.values())


def test_skip_reasons_and_targets_without_endpoints() -> None:
    empty = Target(name="ns/empty", host="e", port=80, expect=Expect.STRICT)
    targets = (TARGETS[0], empty, TARGETS[1])
    per_ep = Probe("ep", skip=lambda t: "no sidecar" if t is TARGETS[1] else None)
    per_target = Probe("tg", scope=Scope.TARGET, skip=lambda t: None)
    run_scope = Probe("run", scope=Scope.RUN, skip=lambda t: "no sidecarAdmin in the targets file")
    results = run_checks([per_ep, per_target, run_scope], make_ctx(targets=targets))
    got = [(r.check, r.target, r.endpoint, r.verdict.value, r.reason) for r in results]
    assert got == [
        *[("ep", "ns/t0", str(e), "pass", "ok") for e in TARGETS[0].endpoints],
        ("ep", "ns/empty", None, "skip", "no endpoints listed for this target"),
        ("ep", "ns/t1", None, "skip", "no sidecar"),
        ("tg", "ns/t0", None, "pass", "ok"),
        ("tg", "ns/empty", None, "pass", "ok"),  # per-target checks need no endpoints
        ("tg", "ns/t1", None, "pass", "ok"),
        ("run", "source", None, "skip", "no sidecarAdmin in the targets file"),
    ]
    assert per_ep.calls == 3 and run_scope.calls == 0


def test_a_crashing_skip_reason_is_an_error_not_a_skip() -> None:
    def skip(t: Target | None) -> str | None:
        if t is TARGETS[1]:
            raise KeyError("identity")
        return None

    results = run_checks([Probe("p", scope=Scope.TARGET, skip=skip)], make_ctx(targets=TARGETS[:3]))
    assert [r.verdict for r in results] == [Verdict.PASS, Verdict.ERROR, Verdict.PASS]
    assert "probe crashed deciding whether the check applies: KeyError" in results[1].reason


def test_stop_before_start_interrupts_everything() -> None:
    stop = threading.Event()
    stop.set()
    check = Probe("p")
    results = run_checks([check], make_ctx(), stop=stop)
    assert len(results) == 12 and check.calls == 0
    assert all(r.verdict is Verdict.ERROR and r.observed == "interrupted" for r in results)


def test_stop_mid_run_is_bounded_and_keeps_what_finished(release: threading.Event) -> None:
    stop = threading.Event()
    hanging = threading.Semaphore(0)

    def body(t: Target | None, e: Endpoint | None) -> None:
        if t is not TARGETS[0]:
            hanging.release()
            release.wait(60)

    def stop_once_both_seats_hang() -> None:
        # Two workers, both in a hanging check: the first check has finished. Stopping
        # on that event, not after a fixed delay, keeps a slow thread start from
        # leaving the first check unstarted when the stop comes.
        if all(hanging.acquire(timeout=60) for _ in range(2)):
            stop.set()

    threading.Thread(target=stop_once_both_seats_hang, daemon=True).start()
    t0 = time.monotonic()
    results = run_checks(
        [Probe("p", body, scope=Scope.TARGET)], make_ctx(concurrency=2, timeout=10), stop=stop
    )
    elapsed = time.monotonic() - t0
    assert elapsed < 30, elapsed  # grace is min(timeout, 2 s), not the 60 s hang
    assert results[0].verdict is Verdict.PASS
    assert [r.observed for r in results[1:]] == ["interrupted"] * 3
    assert all(r.verdict is Verdict.ERROR for r in results[1:])


def test_on_result_sees_every_result_once() -> None:
    seen: list[Result] = []
    lock = threading.Lock()

    def on_result(r: Result) -> None:
        with lock:
            seen.append(r)

    targets = (*TARGETS[:2], Target(name="ns/empty", host="e", port=80, expect=Expect.STRICT))
    results = run_checks([Probe("p")], make_ctx(targets=targets), on_result=on_result)
    assert sorted(map(id, seen)) == sorted(map(id, results)) and len(results) == 7
