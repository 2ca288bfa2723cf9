"""Runs checks over targets with bounded concurrency and a deadline per check.

Fail closed: an observation error, an unexpected exception, a check that overruns
its deadline, or an interrupted run all become ``error`` results with a reason.
The targets file's negative controls run first (probe.controls); a detector a control
shows blind turns the verdicts that rest on it into ``error``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from probe import controls as ctl
from probe.checks.base import Check, RunContext, Scope, make_result
from probe.errors import ObservationError, ProbeError
from probe.model import Control, Endpoint, Target
from probe.results import Result, Verdict


@dataclass(frozen=True)
class WorkItem:
    check: Check
    target: Target | None
    endpoint: Endpoint | None
    case: Any = None  # Scope.CASE: the case (authz: probe.model.AuthzCase)


def with_case(item: WorkItem, r: Result) -> Result:
    """A case's result names its source and request, even an error the engine made."""
    case = item.case
    if case is None or r.source is not None:
        return r
    return replace(r, source=getattr(case, "source", None), request=getattr(case, "request", None))


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
            if check.scope is Scope.CASE:
                # A target without cases gets no result; a skip applies to each case.
                for case in check.cases(ctx, target):
                    item = WorkItem(check, target, None, case)
                    if reason:
                        skipped = make_result(check.name, target, None, Verdict.SKIP, reason)
                        skips.append(with_case(item, skipped))
                    else:
                        work.append(item)
                continue
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
        if item.case is not None and item.target is not None:
            result = item.check.run_case(ctx, item.target, item.case)
        else:
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
    return replace(with_case(item, result), start_ns=start, end_ns=time.time_ns())


def plan_controls(
    checks: Sequence[Check], ctx: RunContext
) -> tuple[list[tuple[Control, WorkItem]], list[tuple[Control, Result]]]:
    """The detector runs the selected checks' controls need, and controls decided up
    front (a control that does not apply or lists no endpoint proves nothing: blind)."""
    from probe.checks import load_check

    work: list[tuple[Control, WorkItem]] = []
    decided: list[tuple[Control, Result]] = []
    detectors: dict[str, Check] = {c.name: c for c in checks}
    for control in ctl.selected(ctx.targets.controls, (c.name for c in checks)):
        name = ctl.DETECTOR[control.kind]
        check = detectors.get(name) or detectors.setdefault(name, load_check(name))
        target = control.target
        out: list[Result] = []
        reason = _skip_reason(check, ctx, target, out)
        if reason is None and check.scope is Scope.ENDPOINT and not target.endpoints:
            reason = "no endpoints listed for this control"
        if reason is _CRASHED:
            decided.extend((control, r) for r in out)
        elif reason:
            decided.append((control, make_result(check.name, target, None, Verdict.SKIP, reason)))
        elif check.scope is Scope.ENDPOINT:
            work.extend((control, WorkItem(check, target, ep)) for ep in target.endpoints)
        else:
            work.append((control, WorkItem(check, target, None)))
    return work, decided


def run_checks(
    checks: Sequence[Check],
    ctx: RunContext,
    *,
    on_result: Callable[[Result], None] | None = None,
    stop: threading.Event | None = None,
) -> list[Result]:
    """Run the controls, then every applicable (check, target, endpoint); results come
    back in plan order, the controls' first."""
    stop = stop or threading.Event()
    control_work, pairs = plan_controls(checks, ctx)
    if control_work:
        observed = _run_items([w for _, w in control_work], ctx, stop, None)
        # Every item is emitted (interrupted ones as errors); a gap would still be blind.
        pairs += [(c, observed.get(i) or _interrupted(w)) for i, (c, w) in enumerate(control_work)]
    control_results = [ctl.as_control(c, r) for c, r in pairs]
    blind = ctl.blind_checks(pairs)
    if on_result is not None:
        for r in control_results:
            on_result(r)

    def post(r: Result) -> Result:
        return ctl.apply(r, blind) if blind else r

    work, skips = plan_work(checks, ctx)
    if on_result is not None:
        for skipped in skips:
            on_result(skipped)
    results = _run_items(work, ctx, stop, on_result, post)
    collected = skips + [results[i] for i in range(len(work)) if i in results]
    return control_results + sorted(collected, key=_order_key(checks, ctx))


def _run_items(
    work: Sequence[WorkItem],
    ctx: RunContext,
    stop: threading.Event,
    on_result: Callable[[Result], None] | None,
    post: Callable[[Result], Result] | None = None,
) -> dict[int, Result]:
    """Run ``work`` on the bounded pool; index in ``work`` -> result (``post`` applied)."""
    results: dict[int, Result] = {}
    # Hard bound per item: socket timeouts should end it far earlier; this catches hangs.
    deadline_s = ctx.settings.timeout * 3 + 1.0
    # Items a worker is running now (index -> monotonic start): at most the pool's size,
    # so the deadline scan costs O(concurrency), not O(work).
    running: dict[int, float] = {}
    finished: queue.SimpleQueue[int] = queue.SimpleQueue()

    def job(i: int) -> Result:
        if stop.is_set():
            return _interrupted(work[i])
        running[i] = time.monotonic()
        try:
            return _execute(work[i], ctx)
        finally:
            running.pop(i, None)

    def emit(i: int, r: Result) -> None:
        remaining.discard(i)
        r = with_case(work[i], r)
        if post is not None:
            r = post(r)
        results[i] = r
        if on_result is not None:
            on_result(r)

    def collect(wait_s: float) -> None:
        """Emit what finished (waiting up to ``wait_s`` for the first one)."""
        try:
            batch = [finished.get(timeout=wait_s)]
        except queue.Empty:
            return
        while True:
            try:
                batch.append(finished.get_nowait())
            except queue.Empty:
                break
        for i in batch:
            if i in remaining:
                emit(i, _outcome(tasks[i], work[i]))

    def error(i: int, reason: str, observed: str, kind: str) -> Result:
        w = work[i]
        return make_result(
            w.check.name,
            w.target,
            w.endpoint,
            Verdict.ERROR,
            reason,
            observed=observed,
            evidence={"error": kind},
        )

    workers = max(1, min(ctx.settings.concurrency, len(work)))
    pool = _DaemonPool(workers, job, finished.put, spares=workers)
    tasks = [pool.submit(i) for i in range(len(work))]
    remaining = set(range(len(work)))
    try:
        while remaining and not stop.is_set():
            collect(0.05)
            now = time.monotonic()
            for i, t0 in running.copy().items():
                if i in remaining and now - t0 > deadline_s and pool.abandon(tasks[i]):
                    emit(
                        i,
                        error(
                            i,
                            f"check overran its {deadline_s:.0f}s deadline",
                            "timeout",
                            "deadline",
                        ),
                    )
            if remaining and pool.live == 0:
                # Every seat is held by a check that overran its deadline and no spare
                # worker is left: what has not started cannot run in bounded time.
                for i in sorted(remaining):
                    if pool.cancel(tasks[i]):
                        emit(
                            i,
                            error(
                                i,
                                "not run: every worker is stuck in a check that overran "
                                "its deadline",
                                "not-run",
                                "workers-exhausted",
                            ),
                        )
        if remaining:
            # Stopped: nothing new starts; running checks get a short grace, then are
            # reported as interrupted (errors), so the run ends within a bound.
            for i in sorted(remaining):
                if pool.cancel(tasks[i]):
                    emit(i, _interrupted(work[i]))
            grace_end = time.monotonic() + min(ctx.settings.timeout, 2.0)
            while remaining and time.monotonic() < grace_end:
                collect(min(0.05, max(0.0, grace_end - time.monotonic())))
            for i in sorted(remaining):
                emit(i, _interrupted(work[i]))
    finally:
        for task in tasks:
            pool.cancel(task)
        pool.shutdown()
    return results


def _outcome(task: _Task, item: WorkItem) -> Result:
    if task.state is _CANCELLED or task.value is None:
        return _interrupted(item)
    if isinstance(task.value, BaseException):  # job() never raises; if it did, a result
        exc = task.value
        return make_result(
            item.check.name,
            item.target,
            item.endpoint,
            Verdict.ERROR,
            f"probe crashed: {type(exc).__name__}: {exc}",
            observed="probe-crash",
            evidence={"error": "probe-crash"},
        )
    return task.value


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


_PENDING, _RUNNING, _DONE, _CANCELLED = "pending", "running", "done", "cancelled"


class _Task:
    """One work item in the pool: its index, state and outcome. Not a
    concurrent.futures.Future: with its Condition and callback list a Future costs
    ~1.9 KB, ~55 MB of garbage for a 30,000-item agent round. States change under the
    pool's lock only."""

    __slots__ = ("index", "state", "value")

    def __init__(self, index: int) -> None:
        self.index = index
        self.state = _PENDING
        self.value: Result | BaseException | None = None

    def done(self) -> bool:
        return self.state is _DONE or self.state is _CANCELLED


class _DaemonPool:
    """A bounded pool of daemon threads running ``run(index)`` for each submitted
    index and calling ``done(index)`` when it finished or was cancelled. Unlike
    ThreadPoolExecutor's workers, a check abandoned past its deadline (or on SIGTERM)
    cannot keep the process alive.

    A worker stuck in an abandoned check is replaced by a spare, so one hostile
    endpoint cannot starve the rest of the run; at most ``workers + spares`` threads
    ever exist. When the stuck check finally returns, its thread exits if a spare took
    its seat, or takes its seat back if none was left. ``live`` counts seats in use.
    """

    def __init__(
        self,
        workers: int,
        run: Callable[[int], Result],
        done: Callable[[int], None],
        spares: int = 0,
    ) -> None:
        self._queue: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._run = run
        self._done = done
        self._lock = threading.Lock()
        self._spares = spares
        self._abandoned: dict[_Task, bool] = {}  # task -> a spare replaced it
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

    def submit(self, index: int) -> _Task:
        task = _Task(index)
        self._queue.put(task)
        return task

    def cancel(self, task: _Task) -> bool:
        """Cancel a task that has not started; False once it runs (or ran)."""
        with self._lock:
            if task.state is _CANCELLED:
                return True
            if task.state is not _PENDING:
                return False
            task.state = _CANCELLED
        self._done(task.index)
        return True

    def abandon(self, task: _Task) -> bool:
        """Give up on a running ``task`` (deadline). False if it finished meanwhile."""
        with self._lock:
            if task.done():
                return False
            replaced = self._spares > 0
            self._abandoned[task] = replaced
            if replaced:
                self._spares -= 1
                self._start_thread()
            else:
                self.live -= 1
            return True

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            with self._lock:
                if task.state is not _PENDING:
                    continue  # cancelled before it started
                task.state = _RUNNING
            value: Result | BaseException
            try:
                value = self._run(task.index)
            except BaseException as exc:  # the job wrapper already catches; belt and braces
                value = exc
            with self._lock:
                task.value = value
                task.state = _DONE
                stay = True
                if task in self._abandoned:
                    if self._abandoned.pop(task):
                        stay = False  # a spare has this seat now
                    else:
                        self.live += 1
            self._done(task.index)
            if not stay:
                return

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
