"""The agent's telemetry: ``probe.telemetry.Telemetry`` (a trace per round, checks by
check/verdict/namespace, peer certificate expiry) plus the agent's own instruments,
read by Prometheus on ``/metrics`` and pushed over OTLP when configured.

Cardinality is bounded: labels are check, verdict, namespace, target and outcome;
never endpoints of a request or reasons. The round gauges are observable (read from
the last round at collection time), so a target that disappears stops being exported.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jobs.agent_state import AgentState, RoundReport
from probe.results import Verdict

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.trace.export import SpanExporter

# Checks whose evidence carries a peer (or own) certificate's not_after.
_CERT_CHECKS = ("peer-cert", "self")


def cert_expiry_by_target(report: RoundReport, now: datetime) -> dict[str, float]:
    """Seconds until the soonest-expiring certificate of each target expires (per
    target, not per pod: the alert is about the service; /results has each pod)."""
    out: dict[str, float] = {}
    for r in report.results:
        if r.check not in _CERT_CHECKS or r.verdict not in (Verdict.PASS, Verdict.FAIL):
            continue
        raw = r.evidence.get("not_after")
        if not isinstance(raw, str):
            continue
        try:
            na = datetime.fromisoformat(raw)
        except ValueError:
            continue
        if na.tzinfo is None:
            na = na.replace(tzinfo=UTC)
        secs = (na - now).total_seconds()
        out[r.target] = min(secs, out.get(r.target, secs))
    return out


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
        gauge(
            "mtlsprobe.cert.expires_in",
            "s",
            "Seconds until the soonest-expiring certificate seen at a target expires "
            "(target 'source' is the agent's own sidecar)",
            self._expiry,
        )

    def _last_value(self, obs: Any, fn: Any) -> list[Any]:
        last = self._state.last
        return [] if last is None else [obs(fn(last), self._base)]

    def _expiry(self, obs: Any) -> list[Any]:
        last = self._state.last
        if last is None:
            return []
        now = datetime.now(UTC)
        return [
            obs(secs, {**self._base, "mtlsprobe.target": target, "k8s.namespace.name": _ns(target)})
            for target, secs in sorted(cert_expiry_by_target(last, now).items())
        ]

    def record_round(self, report: RoundReport) -> None:
        """One trace for the round, counters for its checks and its outcome."""
        with self._lock:
            self.telemetry.record(report.results, source_identity=report.source_identity)
            self._rounds.add(1, {**self._base, "outcome": "failed" if report.failed else "ok"})

    def prometheus_text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def shutdown(self) -> None:
        """Flush spans and metric points (bounded by the export timeout), then stop."""
        with self._lock:
            self.telemetry.shutdown()


def _ns(target: str) -> str:
    ns, sep, _ = target.partition("/")
    return ns if sep else "-"
