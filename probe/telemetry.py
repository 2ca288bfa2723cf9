"""OpenTelemetry export of a run: one trace, one span per check (product.md, Telemetry)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from probe.results import Result


def enabled() -> bool:
    """Export only when the user configured an OTLP destination the standard way."""
    return (
        bool(
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true"
    )


def export_run(results: Sequence[Result], *, source_identity: str | None) -> None:
    raise NotImplementedError("telemetry export is being built (issue 2)")
