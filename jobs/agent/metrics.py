"""The agent's telemetry: ``probe.telemetry.Telemetry`` (a trace per round, checks by
check/verdict/namespace, peer certificate expiry per target) plus the agent's own
instruments, read by Prometheus on ``/metrics`` and pushed over OTLP when configured.

Cardinality is bounded: labels are check, verdict, namespace, target, kind, node and
outcome; never endpoints or reasons. The round gauges are observable (read from the
last round at collection time).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from jobs.agent.state import AgentState, RoundReport

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.trace.export import SpanExporter


class AgentMetrics:
    def __init__(
        self,
        state: AgentState,
        *,
        kind: str,
        node: str | None,
        otlp: bool,
        span_exporter: SpanExporter | None = None,
        export_timeout: float = 5.0,
    ) -> None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.metrics import Observation
        from opentelemetry.sdk.metrics.export import MetricReader
        from prometheus_client import CollectorRegistry

        from probe.telemetry import Telemetry

        self._state = state
        self._lock = threading.Lock()
        # A private registry: several agents (tests) in one process never collide.
        self.registry = CollectorRegistry()
        readers: list[MetricReader] = [
            PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        ]
        if otlp:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(timeout=export_timeout),
                    export_timeout_millis=int(export_timeout * 1000),
                )
            )
        self.telemetry = Telemetry(
            span_exporter=span_exporter,
            metric_readers=readers,
            export_timeout=export_timeout,
            otlp=otlp,
        )
        base: dict[str, str] = {"mtlsprobe.agent.kind": kind}
        if node:
            base["k8s.node.name"] = node
        self._base = base
        meter = self.telemetry.meter_provider.get_meter("mtlsprobe.agent")
        self._rounds = meter.create_counter(
            "mtlsprobe.agent.rounds",
            unit="{round}",
            description="Rounds completed, by outcome (ok or failed)",
        )

        def gauge(name: str, unit: str, description: str, fn: Any) -> None:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                return list(fn(Observation))

            meter.create_observable_gauge(name, [callback], unit=unit, description=description)

        gauge(
            "mtlsprobe.agent.round.duration",
            "s",
            "Duration of the last completed round",
            lambda obs: self._last_value(obs, lambda r: r.duration_s),
        )
        gauge(
            "mtlsprobe.agent.round.last_completed",
            "s",
            "Unix time the last round completed (alert when older than 3 intervals)",
            lambda obs: self._last_value(obs, lambda r: r.finished),
        )
        gauge(
            "mtlsprobe.agent.round.assigned",
            "{endpoint}",
            "Work items (endpoints or targets) this agent owned in the last round",
            lambda obs: self._last_value(obs, lambda r: r.assigned),
        )
        gauge(
            "mtlsprobe.agent.peers",
            "{agent}",
            "Agents of this kind sharing the work in the last round",
            lambda obs: self._last_value(obs, lambda r: len(r.agents)),
        )
        gauge(
            "mtlsprobe.agent.consecutive_failed_rounds",
            "{round}",
            "Failed rounds in a row (not ready at the threshold)",
            lambda obs: [obs(self._state.consecutive_failures, self._base)],
        )
        gauge(
            "mtlsprobe.agent.ready",
            "1",
            "1 when /readyz answers 200",
            lambda obs: [obs(int(self._state.readiness().ready), self._base)],
        )

    def _last_value(self, obs: Any, fn: Any) -> list[Any]:
        last = self._state.last
        return [] if last is None else [obs(fn(last), self._base)]

    def record_round(self, report: RoundReport) -> None:
        """One trace for the round, counters for its checks and its outcome."""
        with self._lock:
            self.telemetry.record(
                report.results, source_identity=report.source_identity, targets=report.targets
            )
            self._rounds.add(1, {**self._base, "outcome": "failed" if report.failed else "ok"})

    def prometheus_text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def shutdown(self) -> None:
        """Flush spans and metric points (bounded by the export timeout), then stop."""
        with self._lock:
            self.telemetry.shutdown()
