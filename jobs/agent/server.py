"""The agent's HTTP port: /healthz, /readyz, /metrics, /results, and the verdict matrix
of the last round at / and /report.html (with the trend of the rounds kept in memory).

Read-only (GET/HEAD), small (a fixed set of paths, bodies rendered once per round),
bounded (a cap on connections being served, a socket timeout per request). Nothing
secret is reachable: results carry certificate facts, never key material.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from jobs.agent.state import AgentState, RoundReport
from probe.html_report import RunInfo, TrendPoint, content_security_policy, render_html
from probe.html_report import root_fingerprints as _root_fingerprints

MAX_CONNECTIONS = 16
REQUEST_TIMEOUT_S = 5.0
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ResultsDocument(Protocol):
    def __call__(self, *, gzipped: bool = False) -> bytes | None: ...


@dataclass
class Endpoints:
    """What the server reads; ``results_json`` is the last round rendered once (gzip of
    it when called with ``gzipped=True``)."""

    state: AgentState
    metrics_text: Callable[[], bytes]
    results_json: ResultsDocument


class HtmlPage:
    """The page of the last round, rendered on the first request after the round (a
    30,000-result page costs more than a request should) and served from then on.
    Kept gzipped only (a 5,000-target page is ~5 MB, ~0.3 MB gzipped): a client that
    does not take gzip gets it inflated per request, and the agent does not hold
    megabytes of HTML for a whole interval."""

    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._gzipped: tuple[RoundReport, bytes] | None = None

    def body(self, *, gzipped: bool = False) -> bytes | None:
        """The page, or gzip of it."""
        last, trend = self._state.last_with_trend()
        if last is None:
            return None
        with self._lock:
            if self._gzipped is None or self._gzipped[0] is not last:
                results = tuple(last.results)  # unpacked once for this page
                page = render_html(results, _info(last, trend)).encode()
                del results
                self._gzipped = (last, gzip.compress(page, compresslevel=6, mtime=0))
            body = self._gzipped[1]
        return body if gzipped else gzip.decompress(body)


def _info(last: RoundReport, trend: tuple[TrendPoint, ...]) -> RunInfo:
    targets = last.targets
    notes = [("Round duration", f"{last.duration_s:.2f}s")]
    if last.total:
        notes.append(("Work items", f"{last.assigned} of {last.total} (this agent's shard)"))
    if last.agents:
        notes.append((f"Agents ({len(last.agents)})", ", ".join(last.agents)))
    if last.failure_reason:
        notes.append(("Round failed", last.failure_reason))
    return RunInfo(
        command="agent",
        trust_domain=targets.trust_domain if targets else None,
        root_fingerprints=_root_fingerprints(targets.root_cert_file) if targets else (),
        source_identity=last.source_identity,
        round=last.number,
        round_started=last.started,
        trend=trend,
        notes=tuple(notes),
    )


_NO_ROUND_PAGE = (
    b"<!DOCTYPE html><html lang=en><meta charset=utf-8><title>mtlsprobe agent</title>"
    b"<p>No round completed yet: the verdict matrix appears here after the first one.</p>"
    b"</html>\n"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self.page = HtmlPage(endpoints.state)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.address_family = family
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Over the cap, drop the connection instead of queueing threads without bound.
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.1"
    server_version = "mtlsprobe-agent"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes every few seconds would drown the agent's own log."""

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, *, head: bool) -> None:
        ep = self.server.endpoints
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8", head)
        elif path == "/readyz":
            r = ep.state.readiness()
            self._send(200 if r.ready else 503, (r.reason + "\n").encode(), "text/plain", head)
        elif path == "/metrics":
            self._send(200, ep.metrics_text(), PROMETHEUS_CONTENT_TYPE, head)
        elif path == "/results":
            gz = _accepts_gzip(self.headers.get("accept-encoding", ""))
            body = ep.results_json(gzipped=gz)
            if body is None:
                msg = {"error": "no round completed yet"}
                self._send(503, json.dumps(msg).encode(), "application/json", head)
            else:
                enc = "gzip" if gz else None
                self._send(200, body, "application/json", head, encoding=enc)
        elif path in ("/", "/report.html"):
            gz = _accepts_gzip(self.headers.get("accept-encoding", ""))
            page = self.server.page.body(gzipped=gz)
            html = "text/html; charset=utf-8"
            if page is None:
                self._send(503, _NO_ROUND_PAGE, html, head, csp="default-src 'none'")
            else:
                csp = content_security_policy()
                self._send(200, page, html, head, csp=csp, encoding="gzip" if gz else None)
        else:
            self._send(
                404, b"not found: / /healthz /readyz /metrics /results\n", "text/plain", head
            )

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str,
        head: bool,
        csp: str | None = None,
        encoding: str | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        if encoding is not None:
            self.send_header("content-encoding", encoding)
            self.send_header("vary", "accept-encoding")
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "no-store")
        self.send_header("x-content-type-options", "nosniff")
        if csp is not None:
            self.send_header("content-security-policy", csp)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _refuse(self) -> None:
        self.send_error(405, "read-only: GET or HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse


def _accepts_gzip(header: str) -> bool:
    """``gzip`` listed without ``q=0`` (RFC 9110 content negotiation, simply)."""
    for item in header.lower().split(","):
        name, _, params = item.strip().partition(";")
        if name.strip() == "gzip":
            q = params.replace(" ", "")
            return not (q.startswith("q=0") and q.strip("q=0.") == "")
    return False


class AgentServer:
    """Serves in a daemon thread; ``close`` stops it and frees the port."""

    def __init__(self, listen: tuple[str, int], endpoints: Endpoints) -> None:
        self._srv = _Server(listen, endpoints)
        self._thread = threading.Thread(
            target=self._srv.serve_forever, name="mtlsprobe-agent-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._srv.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(timeout=2)


def parse_listen(text: str) -> tuple[str, int]:
    """``0.0.0.0:9090``, ``:9090``, ``[::]:9090``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen {text!r}: want HOST:PORT, e.g. 0.0.0.0:9090")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
