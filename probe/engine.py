"""Runs checks over targets with bounded concurrency and a deadline per check.

Fail closed: an observation error, an unexpected exception, a check that overruns
its deadline, or an interrupted run all become ``error`` results with a reason.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace

from probe.checks.base import Check, RunContext, Scope, make_result
from probe.errors import ObservationError, ProbeError
from probe.model import Endpoint, Target
from probe.results import Result, Verdict


@dataclass(frozen=True)
class WorkItem:
    check: Check
    target: Target | None
    endpoint: Endpoint | None


def plan_work(checks: Sequence[Check], ctx: RunContext) -> tuple[list[WorkItem], list[Result]]:
    """Expand checks over targets; returns work to do and skips decided up front."""
    work: list[WorkItem] = []
    skips: list[Result] = []
    for check in checks:
        if check.scope is Scope.RUN:
            reason = _skip_reason(check, ctx, None, skips)
            if reason is _CRASHED:
                continue
            if reason:
                skips.append(make_result(check.name, None, None, Verdict.SKIP, reason))
            else:
                work.append(WorkItem(check, None, None))
            continue
        for target in ctx.targets.targets:
            reason = _skip_reason(check, ctx, target, skips)
            if reason is _CRASHED:
                continue
            if reason is None and check.scope is Scope.ENDPOINT and not target.endpoints:
                reason = "no endpoints listed for this target"
            if reason:
                skips.append(make_result(check.name, target, None, Verdict.SKIP, reason))
            elif check.scope is Scope.TARGET:
                work.append(WorkItem(check, target, None))
            else:
                work.extend(WorkItem(check, target, ep) for ep in target.endpoints)
    return work, skips


_CRASHED = "\0crashed"  # sentinel: skip_reason raised; an error result is already recorded


def _skip_reason(
    check: Check, ctx: RunContext, target: Target | None, out: list[Result]
) -> str | None:
    """``check.skip_reason``, fail closed: if deciding applicability crashes, the
    (check, target) is an ``error``, never silently skipped or run."""
    try:
        return check.skip_reason(ctx, target)
    except Exception as exc:
        out.append(
            make_result(
                check.name,
                target,
                None,
                Verdict.ERROR,
                f"probe crashed deciding whether the check applies: {type(exc).__name__}: {exc}",
                observed="probe-crash",
                evidence={"error": "probe-crash"},
            )
        )
        return _CRASHED


def _execute(item: WorkItem, ctx: RunContext) -> Result:
    start = time.time_ns()
    try:
        result = item.check.run(ctx, item.target, item.endpoint)
    except ObservationError as exc:
        result = make_result(
            item.check.name,
            item.target,
            item.endpoint,
            Verdict.ERROR,
            exc.reason,
            observed=exc.kind,
            evidence={"error": exc.kind},
        )
    except ProbeError as exc:
        # A rejection the check did not interpret is still not proof of anything.
        result = make_result(
            item.check.name,
            item.target,
            item.endpoint,
            Verdict.ERROR,
            f"unexpected {exc.kind}: {exc.reason}",
            observed=exc.kind,
            evidence={"error": exc.kind},
        )
    except BaseException as exc:  # even a SystemExit raised inside a check is a crash
        result = make_result(
            item.check.name,
            item.target,
            item.endpoint,
            Verdict.ERROR,
            f"probe crashed: {type(exc).__name__}: {exc}",
            observed="probe-crash",
            evidence={"error": "probe-crash"},
        )
    return replace(result, start_ns=start, end_ns=time.time_ns())


def run_checks(
    checks: Sequence[Check],
    ctx: RunContext,
    *,
    on_result: Callable[[Result], None] | None = None,
    stop: threading.Event | None = None,
) -> list[Result]:
    """Run every applicable (check, target, endpoint); results come back in plan order."""
    work, skips = plan_work(checks, ctx)
    if on_result is not None:
        for skipped in skips:
            on_result(skipped)
    results: dict[int, Result] = {}
    # Hard bound per item: socket timeouts should end it far earlier; this catches hangs.
    deadline_s = ctx.settings.timeout * 3 + 1.0
    stop = stop or threading.Event()
    started: dict[int, float] = {}

    def job(i: int) -> Result:
        if stop.is_set():
            return _interrupted(work[i])
        started[i] = time.monotonic()
        return _execute(work[i], ctx)

    def emit(i: int, r: Result) -> None:
        results[i] = r
        if on_result is not None:
            on_result(r)

    workers = max(1, min(ctx.settings.concurrency, len(work)))
    pool = _DaemonPool(workers, spares=workers)
    futures: dict[Future[Result], int] = {}
    try:
        futures = {
            pool.submit(lambda i=i: job(i)): i  # type: ignore[misc]
            for i in range(len(work))
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            for fut in done:
                emit(futures[fut], fut.result())
            now = time.monotonic()
            for fut in list(pending):
                i = futures[fut]
                t0 = started.get(i)
                if stop.is_set() and t0 is None:
                    fut.cancel()
                if fut.cancelled() or (stop.is_set() and t0 is None):
                    pending.discard(fut)
                    emit(i, _interrupted(work[i]))
                elif t0 is not None and now - t0 > deadline_s and pool.abandon(fut):
                    pending.discard(fut)
                    emit(
                        i,
                        make_result(
                            work[i].check.name,
                            work[i].target,
                            work[i].endpoint,
                            Verdict.ERROR,
                            f"check overran its {deadline_s:.0f}s deadline",
                            observed="timeout",
                            evidence={"error": "deadline"},
                        ),
                    )
            if pending and pool.live == 0:
                # Every seat is held by a check that overran its deadline and no spare
                # worker is left: what has not started cannot run in bounded time.
                for fut in [f for f in pending if futures[f] not in started]:
                    if fut.cancel():
                        pending.discard(fut)
                        emit(
                            futures[fut],
                            make_result(
                                work[futures[fut]].check.name,
                                work[futures[fut]].target,
                                work[futures[fut]].endpoint,
                                Verdict.ERROR,
                                "not run: every worker is stuck in a check that overran "
                                "its deadline",
                                observed="not-run",
                                evidence={"error": "workers-exhausted"},
                            ),
                        )
            if stop.is_set():
                # Give running checks a moment to finish; then abandon them as errors.
                grace_end = time.monotonic() + min(ctx.settings.timeout, 2.0)
                while pending and time.monotonic() < grace_end:
                    done, pending = wait(pending, timeout=0.05)
                    for fut in done:
                        emit(futures[fut], fut.result())
                for fut in pending:
                    emit(futures[fut], _interrupted(work[futures[fut]]))
                pending = set()
    finally:
        for fut in futures:
            fut.cancel()
        pool.shutdown()
    collected = skips + [results[i] for i in range(len(work)) if i in results]
    return sorted(collected, key=_order_key(checks, ctx))


def _order_key(
    checks: Sequence[Check], ctx: RunContext
) -> Callable[[Result], tuple[int, int, int]]:
    """Report order: by check (as requested), then target (as listed), then endpoint."""
    check_pos = {c.name: i for i, c in enumerate(checks)}
    target_pos = {t.name: i for i, t in enumerate(ctx.targets.targets)}
    endpoint_pos = {
        (t.name, str(e)): j for t in ctx.targets.targets for j, e in enumerate(t.endpoints)
    }

    def key(r: Result) -> tuple[int, int, int]:
        return (
            check_pos.get(r.check, len(check_pos)),
            target_pos.get(r.target, -1),
            endpoint_pos.get((r.target, r.endpoint or ""), -1),
        )

    return key


class _DaemonPool:
    """A bounded pool of daemon threads. Unlike ThreadPoolExecutor's workers, a check
    abandoned past its deadline (or on SIGTERM) cannot keep the process alive.

    A worker stuck in an abandoned check is replaced by a spare, so one hostile
    endpoint cannot starve the rest of the run; at most ``workers + spares`` threads
    ever exist. When the stuck check finally returns, its thread exits if a spare took
    its seat, or takes its seat back if none was left. ``live`` counts seats in use.
    """

    def __init__(self, workers: int, spares: int = 0) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Result], Callable[[], Result]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._spares = spares
        self._abandoned: dict[Future[Result], bool] = {}  # future -> a spare replaced it
        self.live = workers
        self._threads: list[threading.Thread] = []
        for _ in range(workers):
            self._start_thread()

    def _start_thread(self) -> None:
        t = threading.Thread(
            target=self._work, daemon=True, name=f"mtlsprobe-check-{len(self._threads)}"
        )
        self._threads.append(t)
        t.start()

    def abandon(self, fut: Future[Result]) -> bool:
        """Give up on a running ``fut`` (deadline). False if it finished meanwhile."""
        with self._lock:
            if fut.done():
                return False
            replaced = self._spares > 0
            self._abandoned[fut] = replaced
            if replaced:
                self._spares -= 1
                self._start_thread()
            else:
                self.live -= 1
            return True

    def submit(self, fn: Callable[[], Result]) -> Future[Result]:
        fut: Future[Result] = Future()
        self._queue.put((fut, fn))
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # the job wrapper already catches; belt and braces
                fut.set_exception(exc)
            with self._lock:
                if fut in self._abandoned:
                    if self._abandoned.pop(fut):
                        return  # a spare has this seat now
                    self.live += 1

    def shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)


def _interrupted(item: WorkItem) -> Result:
    return make_result(
        item.check.name,
        item.target,
        item.endpoint,
        Verdict.ERROR,
        "run interrupted before this check completed",
        observed="interrupted",
        evidence={"error": "interrupted"},
    )
