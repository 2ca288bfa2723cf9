"""OpenTelemetry export: one trace per run (root span ``mtlsprobe.run``), one span per
result named ``mtlsprobe.check <check>``, and metrics (checks by check/verdict/namespace,
seconds until each target's certificate expires). Attribute mapping: ``telemetry_attrs``.

Spans are created after the fact from each result's own start/end time, so the engine
stays free of tracing. Configuration is the standard ``OTEL_*`` environment (endpoints,
headers, service name, resource attributes, timeout, ``OTEL_SDK_DISABLED``,
``OTEL_TRACES_EXPORTER``/``OTEL_METRICS_EXPORTER=none``), OTLP over HTTP (protobuf).

Every flush and shutdown is bounded by a hard wall-clock budget (the export timeout,
at most 5 s, plus a margin), whatever the SDK does inside: an unreachable or silent
collector never hangs a run or changes its exit code. Providers are private instances
(not the OTel globals), so a long-running agent owns one ``Telemetry`` across rounds and
tests own theirs. Nothing here imports OpenTelemetry until a ``Telemetry`` is built.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from probe.results import Result, Verdict

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter

    from probe.model import TargetsFile

SERVICE_NAME = "mtlsprobe"
EXPORT_TIMEOUT_S = 5.0  # default, and the ceiling: a Job must never wait long on a collector
_MARGIN_S = 0.5  # on top of the export timeout for the wall-clock join
_MAX_QUEUED_SPANS = 20_000  # one run's spans must not be dropped by the default 2048

log = logging.getLogger(__name__)


def configured_export_timeout() -> float:
    """``OTEL_EXPORTER_OTLP_TIMEOUT``, capped at 5 s. The spec says milliseconds, the
    Python SDK reads seconds: values of 100 or more are taken as milliseconds."""
    raw = os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT", "")
    try:
        value = float(raw) if raw.strip() else EXPORT_TIMEOUT_S
    except ValueError:
        value = EXPORT_TIMEOUT_S
    if value >= 100:
        value /= 1000
    return min(max(value, 0.1), EXPORT_TIMEOUT_S)


def signal_enabled(signal: str) -> bool:
    """Whether ``traces`` or ``metrics`` should go to OTLP, the standard way: an OTLP
    endpoint (general or per signal), not ``OTEL_SDK_DISABLED``, exporter not ``none``."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def enabled() -> bool:
    """Export only when the user configured an OTLP destination the standard way."""
    return signal_enabled("traces") or signal_enabled("metrics")


def _resource() -> Any:
    """``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` (which wins) as the SDK
    reads them; ``service.name`` defaults to ``mtlsprobe`` instead of ``unknown_service``."""
    from opentelemetry.sdk.resources import SERVICE_NAME as SN
    from opentelemetry.sdk.resources import SERVICE_VERSION, Resource

    from probe import __version__

    detected = Resource.create({})
    extra: dict[str, str] = {}
    if str(detected.attributes.get(SN, "")).startswith("unknown_service"):
        extra[SN] = SERVICE_NAME
    if SERVICE_VERSION not in detected.attributes:
        extra[SERVICE_VERSION] = __version__
    return detected.merge(Resource(extra)) if extra else detected


class _Outcome:
    """Whether every export of one signal succeeded (for a one-line warning)."""

    def __init__(self) -> None:
        self.failed = 0
        self.sent = 0

    def note(self, ok: bool) -> None:
        if ok:
            self.sent += 1
        else:
            self.failed += 1


def _otlp_span_exporter(timeout: float, outcome: _Outcome) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExportResult

    class Exporter(OTLPSpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            result = super().export(spans)
            outcome.note(result is SpanExportResult.SUCCESS)
            return result

    return Exporter(timeout=timeout)


def _otlp_metric_reader(timeout: float, outcome: _Outcome) -> MetricReader:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import (
        MetricExportResult,
        MetricsData,
        PeriodicExportingMetricReader,
    )

    class Exporter(OTLPMetricExporter):
        def export(
            self, metrics_data: MetricsData, timeout_millis: float | None = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            outcome.note(result is MetricExportResult.SUCCESS)
            return result

    # Interval from OTEL_METRIC_EXPORT_INTERVAL (default 60 s); shutdown exports the rest.
    return PeriodicExportingMetricReader(
        Exporter(timeout=timeout), export_timeout_millis=timeout * 1000
    )


def _within(budget_s: float, *fns: Callable[[], object]) -> bool:
    """Run ``fns`` in parallel daemon threads; True if all finished within the budget.
    A thread still blocked on a silent collector is abandoned (it cannot hold the
    process: daemon) rather than waited for."""

    def quiet(fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:  # an exporter problem must never reach the caller
            log.debug("telemetry: %s", exc)

    threads = [
        threading.Thread(target=quiet, args=(fn,), daemon=True, name="mtlsprobe-otel-flush")
        for fn in fns
    ]
    for t in threads:
        t.start()
    end = time.monotonic() + budget_s
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    return not any(t.is_alive() for t in threads)


class Telemetry:
    """A tracer and a meter provider with OTLP/HTTP exporters, reusable across runs.

    ``span_exporter``/``metric_readers`` replace the OTLP ones (the agent adds a
    Prometheus reader; tests may pass in-memory ones). With ``otlp=True`` a signal
    with no replacement goes to OTLP when ``signal_enabled`` says so.
    Thread-safe: ``record`` may be called from any thread, one run at a time or not.
    """

    def __init__(
        self,
        *,
        span_exporter: SpanExporter | None = None,
        metric_readers: Sequence[MetricReader] | None = None,
        export_timeout: float | None = None,
        otlp: bool = True,
    ) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.export_timeout = min(
            EXPORT_TIMEOUT_S,
            configured_export_timeout() if export_timeout is None else export_timeout,
        )
        self.trace_outcome = _Outcome()
        self.metric_outcome = _Outcome()
        self._shut = False
        resource = _resource()
        # shutdown_on_exit=False: our own bounded shutdown runs; an atexit one could block.
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        if span_exporter is None and otlp and signal_enabled("traces"):
            span_exporter = _otlp_span_exporter(self.export_timeout, self.trace_outcome)
        self.traces_enabled = span_exporter is not None
        if span_exporter is not None:
            queue = None if os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE") else _MAX_QUEUED_SPANS
            self.tracer_provider.add_span_processor(
                BatchSpanProcessor(
                    span_exporter,
                    max_queue_size=queue,
                    export_timeout_millis=self.export_timeout * 1000,
                )
            )
        readers = list(metric_readers or [])
        if not readers and otlp and signal_enabled("metrics"):
            readers.append(_otlp_metric_reader(self.export_timeout, self.metric_outcome))
        self.meter_provider = MeterProvider(
            resource=resource, metric_readers=readers, shutdown_on_exit=False
        )
        self.tracer = self.tracer_provider.get_tracer("mtlsprobe")
        meter = self.meter_provider.get_meter("mtlsprobe")
        self.checks_counter = meter.create_counter(
            "mtlsprobe.checks",
            unit="{check}",
            description="Checks run, by check, verdict and destination namespace",
        )
        # Observable, from the last recorded run only: a target that is gone stops being
        # exported (a long-running agent must not report stale certificates forever),
        # and the value counts down to the collection time.
        self._expiry: dict[tuple[str, str, str], float] = {}
        meter.create_observable_gauge(
            "mtlsprobe.peer_cert.expiry",
            [self._observe_expiry],
            unit="s",
            description=(
                "Seconds until the soonest-expiring certificate seen at a target expires "
                "(check peer-cert; check self is the probe's own sidecar, target 'source')"
            ),
        )

    def _observe_expiry(self, options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        now = time.time()
        return [
            Observation(
                when - now,
                {"mtlsprobe.check": check, "mtlsprobe.target": target, "k8s.namespace.name": ns},
            )
            for (check, target, ns), when in sorted(self._expiry.items())
        ]

    def record(
        self,
        results: Sequence[Result],
        *,
        source_identity: str | None = None,
        targets: TargetsFile | None = None,
    ) -> str:
        """Record one run: a trace (root + a span per result) and the metrics.
        Returns the trace id (hex; empty when no span exporter is set). Export happens
        in the background and on ``flush``/``shutdown``. ``targets`` adds destination
        SPIFFE IDs/addresses."""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        from probe import telemetry_attrs as ta

        by_name = ta.targets_by_name(targets)
        # One counter add per distinct label set, not per result: same sums, and the
        # agent records tens of thousands of results a round.
        counts: dict[tuple[tuple[str, str], ...], int] = {}
        for r in results:
            key = tuple(ta.check_labels(r, by_name.get(r.target), source_identity).items())
            counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            self.checks_counter.add(n, dict(key))
        self._expiry = ta.certificate_expiry(results, by_name, source_identity)
        if not self.traces_enabled:
            # No exporter: spans would be built, attributes cleaned, and dropped.
            return ""
        now = time.time_ns()
        # Skips and interrupted results have no start: they are instants at their end.
        times = [(r.start_ns or r.end_ns or now, max(r.start_ns, r.end_ns) or now) for r in results]
        root = self.tracer.start_span(
            "mtlsprobe.run",
            start_time=min((s for s, _ in times), default=now),
            attributes=ta.run_attributes(results, source_identity),
        )
        parent = trace.set_span_in_context(root)
        bad = 0
        for r, (start, end) in zip(results, times, strict=True):
            target = by_name.get(r.target)
            span = self.tracer.start_span(
                ta.span_name(r),
                context=parent,
                start_time=start,
                attributes=ta.span_attributes(r, source_identity, target),
            )
            if r.verdict in (Verdict.FAIL, Verdict.ERROR):
                span.set_status(
                    Status(StatusCode.ERROR, ta.clean(f"{r.verdict.value}: {r.reason}", 200))
                )
                bad += 1
            span.end(end_time=max(start, end))
        if bad:
            root.set_status(Status(StatusCode.ERROR, f"{bad} checks failed or could not observe"))
        root.end(end_time=max((max(s, e) for s, e in times), default=now))
        return format(root.get_span_context().trace_id, "032x")

    def flush(self, timeout: float | None = None) -> bool:
        """Export everything recorded so far; True if done within the (bounded) budget."""
        budget = self.export_timeout + _MARGIN_S if timeout is None else timeout
        ms = int(budget * 1000)
        return _within(
            budget,
            lambda: self.tracer_provider.force_flush(ms),
            lambda: self.meter_provider.force_flush(ms),
        )

    def shutdown(self, timeout: float | None = None) -> bool:
        """Export what is pending and stop; both signals in parallel, bounded by the
        export timeout plus a margin. True if everything finished in time."""
        if self._shut:
            return True
        self._shut = True
        budget = self.export_timeout + _MARGIN_S if timeout is None else timeout
        return _within(
            budget,
            self.tracer_provider.shutdown,
            lambda: self.meter_provider.shutdown(timeout_millis=budget * 1000),
        )

    def delivery_problem(self) -> str | None:
        """One line when an OTLP export failed (results are unaffected), else None."""
        failed = [
            name
            for name, o in (("traces", self.trace_outcome), ("metrics", self.metric_outcome))
            if o.failed
        ]
        if not failed:
            return None
        return (
            f"{' and '.join(failed)} not delivered to the OTLP collector within "
            f"{self.export_timeout:g}s (check OTEL_EXPORTER_OTLP_ENDPOINT); results are unaffected"
        )


def export_run(
    results: Sequence[Result],
    *,
    source_identity: str | None,
    targets: TargetsFile | None = None,
) -> bool:
    """One-shot export for ``mtlsprobe check``: record, flush, shut down, all bounded.
    The SDK's own retry chatter is kept off stderr; a failed delivery is one line."""
    otel_log = logging.getLogger("opentelemetry")
    previous = otel_log.level
    otel_log.setLevel(logging.CRITICAL)
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip().lower()
    if protocol not in ("", "http/protobuf"):
        sys.stderr.write(
            f"mtlsprobe: telemetry: OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; "
            "sending http/protobuf\n"
        )
    try:
        telemetry = Telemetry()
        telemetry.record(results, source_identity=source_identity, targets=targets)
        done = telemetry.shutdown()
        problem = telemetry.delivery_problem()
        if problem is None and not done:
            problem = (
                f"export still running after {telemetry.export_timeout + _MARGIN_S:g}s; "
                "abandoned (results are unaffected)"
            )
    except Exception as exc:  # telemetry must never change a run's outcome
        done, problem = False, f"export failed: {type(exc).__name__}: {exc}"
    finally:
        otel_log.setLevel(previous)
    if problem:
        sys.stderr.write(f"mtlsprobe: telemetry: {problem}\n")
    return done and problem is None
