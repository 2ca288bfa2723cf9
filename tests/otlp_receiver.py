"""A real OTLP/HTTP receiver for tests: decodes the protobuf export requests."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.sidecar_standin import http_server


@dataclass
class Received:
    spans: list[Any] = field(default_factory=list)
    metrics: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Per request: (path, lower-cased headers); per resource: its attributes.
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)

    def span_attrs(self, span: Any) -> dict[str, Any]:
        return attrs_of(span.attributes)

    def metric_points(self, name: str) -> list[Any]:
        pts: list[Any] = []
        for m in self.metrics:
            if m.name == name:
                data = m.sum if m.HasField("sum") else m.gauge
                pts.extend(data.data_points)
        return pts


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attrs_of(kvs: Any) -> dict[str, Any]:
    """OTLP KeyValue list -> dict (arrays become lists)."""
    return {kv.key: _value(kv.value) for kv in kvs}


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, Received]]:
    got = Received()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            with got.lock:
                got.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            if self.path == "/v1/traces":
                req = ExportTraceServiceRequest.FromString(body)
                with got.lock:
                    for rs in req.resource_spans:
                        got.resources.append(attrs_of(rs.resource.attributes))
                        for ss in rs.scope_spans:
                            got.spans.extend(ss.spans)
            elif self.path == "/v1/metrics":
                mreq = ExportMetricsServiceRequest.FromString(body)
                with got.lock:
                    for rm in mreq.resource_metrics:
                        for sm in rm.scope_metrics:
                            got.metrics.extend(sm.metrics)
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

    with http_server(Handler) as url:
        yield url, got
