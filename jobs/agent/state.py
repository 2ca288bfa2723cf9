"""What the agent knows between rounds: the last round, the verdict counts of the
recent ones (the trend its HTML page draws), and whether it is healthy.

Written by the round thread, read by HTTP handler threads and metric callbacks, so
every read returns an immutable snapshot taken under one lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from jobs.agent.packed import PackedResults
from probe.html_report import TrendPoint
from probe.model import TargetsFile
from probe.results import Result, summarize

#: Rounds whose counts are kept: a day at the default 60s interval (~0.7 MB).
TREND_ROUNDS = 1440


@dataclass(frozen=True)
class RoundReport:
    number: int
    started: float  # wall clock, epoch seconds
    duration_s: float
    results: Sequence[Result]  # a tuple while the round runs; PackedResults once kept
    failed: bool
    failure_reason: str | None = None
    assigned: int = 0  # work keys this agent owned this round
    total: int = 0  # work keys over all agents
    agents: tuple[str, ...] = ()
    source_identity: str | None = None  # the probe's SPIFFE ID, from the targets
    targets: TargetsFile | None = None  # this round's (unsharded) targets, for span attributes

    @property
    def finished(self) -> float:
        return self.started + self.duration_s


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str


@dataclass
class AgentState:
    """``failure_threshold`` consecutive failed rounds make the agent not ready; a
    round that completes longer than ``stale_after_s`` ago does too (a hung scheduler)."""

    failure_threshold: int
    stale_after_s: float
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last: RoundReport | None = None
    _consecutive_failures: int = 0
    _rounds_total: int = 0
    _rounds_failed: int = 0
    _in_flight: int = 0
    _max_in_flight: int = 0
    trend_rounds: int = TREND_ROUNDS
    _trend: deque[TrendPoint] = field(init=False)

    def __post_init__(self) -> None:
        self._trend = deque(maxlen=self.trend_rounds)

    def round_started(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def round_finished(self, report: RoundReport) -> RoundReport:
        """Keep ``report`` as the last round, its results packed (``PackedResults``),
        and return what was kept: the caller's tuple is garbage once it lets go of it."""
        counts = summarize(report.results)
        if not isinstance(report.results, PackedResults):
            report = replace(report, results=PackedResults(report.results))
        with self._lock:
            self._in_flight -= 1
            self._last = report
            self._trend.append(TrendPoint(report.number, report.started, counts, report.failed))
            self._rounds_total += 1
            if report.failed:
                self._rounds_failed += 1
                self._consecutive_failures += 1
            else:
                self._consecutive_failures = 0
        return report

    @property
    def last(self) -> RoundReport | None:
        with self._lock:
            return self._last

    def last_with_trend(self) -> tuple[RoundReport | None, tuple[TrendPoint, ...]]:
        """The last round and the counts of the rounds kept, oldest first, read together."""
        with self._lock:
            return self._last, tuple(self._trend)

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._consecutive_failures

    @property
    def max_in_flight(self) -> int:
        """The most rounds ever running at once (1 unless rounds overlapped)."""
        with self._lock:
            return self._max_in_flight

    @property
    def rounds(self) -> tuple[int, int]:
        """(completed, failed) since start."""
        with self._lock:
            return self._rounds_total, self._rounds_failed

    def readiness(self, now: float | None = None) -> Readiness:
        now = time.time() if now is None else now
        with self._lock:
            last, failures = self._last, self._consecutive_failures
        if last is None:
            return Readiness(False, "no round completed yet")
        if failures >= self.failure_threshold:
            return Readiness(
                False,
                f"{failures} consecutive failed rounds (threshold {self.failure_threshold}): "
                f"{last.failure_reason}",
            )
        age = now - last.finished
        if age > self.stale_after_s:
            return Readiness(
                False, f"last round finished {age:.0f}s ago (limit {self.stale_after_s:.0f}s)"
            )
        return Readiness(True, f"round {last.number} completed {age:.0f}s ago")
