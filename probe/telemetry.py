"""OpenTelemetry export: one trace per run (root span ``mtlsprobe.run``), one span
per result named ``mtlsprobe.check <check>``, and metrics (checks by verdict,
seconds until peer certificates expire).

Spans are created after the fact from each result's own start/end time, so the
engine stays free of tracing. Configuration is the standard ``OTEL_*`` environment
(endpoint, headers, service name, resource attributes), OTLP over HTTP. Exports
are bounded in time: an unreachable collector never hangs a run or changes its
exit code. The providers are private instances (not the global ones) so a
long-running agent can own one ``Telemetry`` and tests can own theirs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from probe.results import Result, Verdict
from probe.spiffe import SpiffeIdError, parse_spiffe_id

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter

EXPORT_TIMEOUT_S = 5.0  # default when OTEL_EXPORTER_OTLP_TIMEOUT is not set


def configured_export_timeout() -> float:
    """The standard OTEL_EXPORTER_OTLP_TIMEOUT (seconds), capped so a run stays bounded."""
    try:
        value = float(os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT", EXPORT_TIMEOUT_S))
    except ValueError:
        value = EXPORT_TIMEOUT_S
    return min(max(value, 0.1), 30.0)


SERVICE_NAME = "mtlsprobe"
# Evidence keys copied onto spans as attributes (scalars only, never key material).
_EVIDENCE_ATTRS = {
    "spiffe_id": "mtlsprobe.peer.spiffe_id",
    "serial": "mtlsprobe.peer.serial",
    "key_type": "mtlsprobe.peer.key_type",
    "remaining_seconds": "mtlsprobe.peer.remaining_seconds",
    "chain_verified": "mtlsprobe.peer.chain_verified",
    "status": "http.response.status_code",
    "error": "error.type",
    "alpn": "tls.next_protocol",
}


def enabled() -> bool:
    """Export only when the user configured an OTLP destination the standard way."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return any(
        os.environ.get(k)
        for k in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        )
    )


def _namespace(spiffe_id: str | None) -> str | None:
    if not spiffe_id:
        return None
    try:
        return parse_spiffe_id(spiffe_id).namespace
    except SpiffeIdError:
        return None


def _target_namespace(result: Result) -> str:
    ns, sep, _ = result.target.partition("/")
    return ns if sep else "-"


def span_attributes(result: Result, source_identity: str | None) -> dict[str, Any]:
    """Attributes of one check span (OTel test, server and tls conventions where they fit)."""
    from opentelemetry.semconv._incubating.attributes import test_attributes as test
    from opentelemetry.semconv._incubating.attributes import tls_attributes as tls
    from opentelemetry.semconv.attributes import server_attributes as server

    attrs: dict[str, Any] = {
        test.TEST_SUITE_NAME: f"mtlsprobe.{result.check}",
        test.TEST_CASE_NAME: f"{result.check} {result.target}"
        + (f" {result.endpoint}" if result.endpoint else ""),
        "mtlsprobe.check": result.check,
        "mtlsprobe.target": result.target,
        "mtlsprobe.verdict": result.verdict.value,
        "mtlsprobe.reason": result.reason[:1000],
        "k8s.namespace.name": _target_namespace(result),
    }
    # The semconv's result status knows pass and fail; error and skip keep their own attribute.
    if result.verdict in (Verdict.PASS, Verdict.FAIL):
        attrs[test.TEST_CASE_RESULT_STATUS] = result.verdict.value
    if result.expected is not None:
        attrs["mtlsprobe.expected"] = result.expected
    if result.observed is not None:
        attrs["mtlsprobe.observed"] = result.observed
    if source_identity:
        attrs["mtlsprobe.source.spiffe_id"] = source_identity
        src_ns = _namespace(source_identity)
        if src_ns:
            attrs["mtlsprobe.source.namespace"] = src_ns
    if result.endpoint:
        host, _, port = result.endpoint.rpartition(":")
        attrs[server.SERVER_ADDRESS] = host.strip("[]")
        if port.isdigit():
            attrs[server.SERVER_PORT] = int(port)
    ev: Mapping[str, Any] = result.evidence
    for key, attr in _EVIDENCE_ATTRS.items():
        val = ev.get(key)
        if isinstance(val, str | int | float | bool) and not _looks_secret(key, val):
            attrs[attr] = val
    if isinstance(ev.get("fingerprint_sha256"), str):
        attrs[tls.TLS_SERVER_HASH_SHA256] = ev["fingerprint_sha256"].upper()
    if isinstance(ev.get("issuer"), str):
        attrs[tls.TLS_SERVER_ISSUER] = ev["issuer"]
    if isinstance(ev.get("subject"), str):
        attrs[tls.TLS_SERVER_SUBJECT] = ev["subject"]
    for key, attr in (
        ("not_after", tls.TLS_SERVER_NOT_AFTER),
        ("not_before", tls.TLS_SERVER_NOT_BEFORE),
    ):
        if isinstance(ev.get(key), str):
            attrs[attr] = ev[key]
    if isinstance(ev.get("tls_version"), str):
        attrs["tls.protocol.version"] = ev["tls_version"]
    return attrs


def _looks_secret(key: str, value: object) -> bool:
    return "PRIVATE KEY" in str(value) or "private" in key.lower()


class Telemetry:
    """Owns a tracer and a meter provider with OTLP/HTTP exporters (or the given
    exporter/reader, for tests and the agent's Prometheus endpoint)."""

    def __init__(
        self,
        *,
        span_exporter: SpanExporter | None = None,
        metric_readers: Sequence[MetricReader] | None = None,
        export_timeout: float | None = None,
        otlp: bool = True,
    ) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if export_timeout is None:
            export_timeout = configured_export_timeout()
        self._timeout = export_timeout
        resource = Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME)}
        )
        self.tracer_provider = TracerProvider(resource=resource)
        if span_exporter is None and otlp:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter(timeout=export_timeout)
        if span_exporter is not None:
            self.tracer_provider.add_span_processor(
                BatchSpanProcessor(span_exporter, export_timeout_millis=int(export_timeout * 1000))
            )
        readers = list(metric_readers or [])
        if not readers and otlp:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(timeout=export_timeout),
                    export_interval_millis=60_000,
                    export_timeout_millis=int(export_timeout * 1000),
                )
            )
        self.meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        self.tracer = self.tracer_provider.get_tracer("mtlsprobe")
        meter = self.meter_provider.get_meter("mtlsprobe")
        self.checks_counter = meter.create_counter(
            "mtlsprobe.checks",
            unit="{check}",
            description="Checks run, by check, verdict and namespace",
        )
        self.cert_expiry = meter.create_gauge(
            "mtlsprobe.peer_cert.expiry",
            unit="s",
            description="Seconds until the peer certificate presented by a target expires",
        )

    def record(self, results: Sequence[Result], *, source_identity: str | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        now = time.time_ns()
        starts = [r.start_ns for r in results if r.start_ns]
        ends = [r.end_ns for r in results if r.end_ns]
        root = self.tracer.start_span(
            "mtlsprobe.run",
            start_time=min(starts) if starts else now,
            attributes={"mtlsprobe.results": len(results)},
        )
        parent = trace.set_span_in_context(root)
        worst = StatusCode.UNSET
        for r in results:
            span = self.tracer.start_span(
                f"mtlsprobe.check {r.check}",
                context=parent,
                start_time=r.start_ns or r.end_ns or now,
                attributes=span_attributes(r, source_identity),
            )
            if r.verdict in (Verdict.FAIL, Verdict.ERROR):
                span.set_status(Status(StatusCode.ERROR, r.reason[:200]))
                worst = StatusCode.ERROR
            span.end(end_time=max(r.end_ns, r.start_ns) or now)
            self.checks_counter.add(
                1,
                {
                    "mtlsprobe.check": r.check,
                    "mtlsprobe.verdict": r.verdict.value,
                    "k8s.namespace.name": _target_namespace(r),
                },
            )
            remaining = r.evidence.get("remaining_seconds")
            if r.check == "peer-cert" and isinstance(remaining, int):
                self.cert_expiry.set(remaining, {"mtlsprobe.target": r.target})
        if worst is StatusCode.ERROR:
            root.set_status(Status(StatusCode.ERROR, "some checks failed or could not observe"))
        root.end(end_time=max(ends) if ends else time.time_ns())

    def flush(self) -> None:
        ms = int(self._timeout * 1000)
        self.tracer_provider.force_flush(ms)
        self.meter_provider.force_flush(ms)

    def shutdown(self) -> None:
        """Export what is pending and stop, bounded by the export timeout per signal
        (shutting down the span processor and the metric reader exports once more)."""
        try:
            self.tracer_provider.shutdown()
        finally:
            self.meter_provider.shutdown(timeout_millis=self._timeout * 1000)


def export_run(results: Sequence[Result], *, source_identity: str | None) -> None:
    """One-shot export for ``mtlsprobe check``: record, flush, shut down."""
    telemetry = Telemetry()
    try:
        telemetry.record(results, source_identity=source_identity)
    finally:
        telemetry.shutdown()
