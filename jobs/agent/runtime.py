"""The agent's life: rounds on an APScheduler interval, one at a time, and a bounded stop.

APScheduler guarantees the schedule properties the issue asks for: ``max_instances=1``
(a slow round never overlaps the next; the late tick is skipped), ``coalesce`` (ticks
missed while busy or suspended collapse into one run), ``misfire_grace_time`` of one
interval (a tick late by less than an interval still runs), jitter on the trigger (so
a DaemonSet's agents do not all probe the same second).
"""

from __future__ import annotations

import functools
import gzip
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jobs.agent.metrics import AgentMetrics
from jobs.agent.round import RoundRunner
from jobs.agent.state import AgentState, RoundReport
from probe.report import render_json
from probe.results import Result, summarize

log = logging.getLogger("mtlsprobe.agent")


@dataclass(frozen=True)
class Schedule:
    interval_s: float
    jitter_s: float = 0.0
    max_rounds: int | None = None  # stop after this many rounds (lab, benchmarks)


class Agent:
    def __init__(
        self,
        runner: RoundRunner,
        state: AgentState,
        metrics: AgentMetrics,
        schedule: Schedule,
        after_round: Sequence[Callable[[RoundReport], None]] = (),
    ) -> None:
        self.runner = runner
        self.after_round = tuple(after_round)  # e.g. writing policy reports
        self.state = state
        self.metrics = metrics
        self.schedule = schedule
        self._round_stop = threading.Event()  # the engine's stop: abandon a round
        self._idle = threading.Event()
        self._idle.set()
        self._idle_lock = threading.Lock()
        # The last round's results, rendered for /results on the first request only:
        # encoding 30,000 results every round costs more CPU than most checks.
        self._last_results: Sequence[Result] | None = None
        self._results_json: tuple[Sequence[Result], bytes] | None = None
        self._json_lock = threading.Lock()
        self.done = threading.Event()  # set when max_rounds were run
        self._scheduler: Any = None

    def start(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        sched = BackgroundScheduler(timezone=UTC)
        interval = self.schedule.interval_s
        sched.add_job(
            self._round,
            IntervalTrigger(seconds=interval, jitter=self.schedule.jitter_s or None, timezone=UTC),
            id="mtlsprobe-round",
            name="mtlsprobe round",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, round(interval)),
            next_run_time=datetime.now(UTC),  # first round at start, not one interval later
        )
        sched.start()
        self._scheduler = sched

    def results_json(self, *, gzipped: bool = False) -> bytes | None:
        """The last round's ``/results`` document, or gzip of it. Kept gzipped only:
        30,000 results are ~24 MB of JSON and ~2 MB gzipped, and the document would
        otherwise stay in memory for a whole interval; a client that does not take gzip
        gets it inflated per request (~0.1 s at that size)."""
        results = self._last_results
        if results is None:
            return None
        with self._json_lock:
            if self._results_json is None or self._results_json[0] is not results:
                # Unpacked and rendered once; both are garbage after compressing.
                text = render_json(tuple(results)).encode("utf-8")
                self._results_json = (results, gzip.compress(text, compresslevel=1, mtime=0))
                del text
            body = self._results_json[1]
        return body if gzipped else gzip.decompress(body)

    def _round(self) -> None:
        with self._idle_lock:
            if self._round_stop.is_set() or self.done.is_set():
                return
            self._idle.clear()
        self.state.round_started()
        report: RoundReport | None = None
        try:
            report = self.runner.run(self._round_stop)
            try:
                self.metrics.record_round(report)
            except Exception as exc:  # an exporter problem must not stop probing
                log.warning("telemetry for round %d failed: %s", report.number, exc)
            _log_round(report)
            for hook in self.after_round:
                try:
                    hook(report)
                except Exception as exc:  # like telemetry: never stops probing
                    log.warning("after round %d: %s", report.number, exc)
        finally:
            if report is None:
                report = RoundReport(0, 0.0, 0.0, (), True, "round did not complete")
            kept = self.state.round_finished(report)  # packs the results
            if report.number:  # a round that ran, even if it failed (not the stand-in)
                self._last_results = kept.results
            self._idle.set()
            number = report.number
            del report, kept  # the round's tuple of results is garbage from here
            release_free_heap()
        if self.schedule.max_rounds is not None and number >= self.schedule.max_rounds:
            self.done.set()

    def stop(self, grace_s: float) -> bool:
        """Stop the schedule, ask a running round to wind down, wait up to ``grace_s``;
        then flush telemetry. True when no round was left running."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        with self._idle_lock:
            self._round_stop.set()
        finished = self._idle.wait(grace_s)
        if not finished:
            log.warning("a round was still running after %.0fs; abandoning it", grace_s)
        self.metrics.shutdown()
        return finished


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes

    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


def release_free_heap() -> None:
    """Give the heap freed by the round (and by parsing a new targets file: PyYAML's
    node graph peaks at ~10x the parsed targets) back to the kernel. glibc keeps freed
    memory mapped otherwise, and that high-water mark is the agent's RSS from then on.
    A few ms per round; a no-op off glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _log_round(report: RoundReport) -> None:
    counts = summarize(report.results)
    share = f"{report.assigned}/{report.total} work items over {len(report.agents)} agent(s)"
    log.info(
        "round %d %s in %.2fs: %d pass, %d fail, %d error, %d skip; %s%s",
        report.number,
        "FAILED" if report.failed else "done",
        report.duration_s,
        counts["pass"],
        counts["fail"],
        counts["error"],
        counts["skip"],
        share,
        f" ({report.failure_reason})" if report.failure_reason else "",
    )
