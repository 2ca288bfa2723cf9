"""A stand-in for the probe's sidecar (an HTTP forward proxy, CONNECT included) and
for an Envoy admin API (and the documents it serves), for tests of the mesh-side
checks without Envoy; and one for pilot-agent's readiness and quit endpoints. Real
sockets, real HTTP; the error bodies are the ones Envoy 1.40 sends
(docs/istio-behaviour.md)."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from probe.pki import Issued

ENVOY_RESET = (
    "upstream connect error or disconnect/reset before headers. "
    "reset reason: connection termination"
)
ENVOY_SAN = (
    "upstream connect error or disconnect/reset before headers. retried and the latest reset "
    "reason: remote connection failure, transport failure reason: TLS_error:|268435581:SSL "
    "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:verify cert failed: verify SAN "
    "list:TLS_error_end"
)
ENVOY_RBAC = "RBAC: access denied"
ENVOY_TIMEOUT = "upstream request timeout"


@dataclass
class SidecarBehaviour:
    """What the stand-in does with a request.

    ``mtls``: drop the client's XFCC (SANITIZE) and append the server sidecar's element;
    ``forward``: keep the client's XFCC and append (a client side that forwards);
    ``trusting``: pass the client's XFCC through untouched, append nothing;
    ``plaintext``: no XFCC; ``raw``: set XFCC to ``raw_xfcc`` exactly;
    ``503``/``san``/``rbac``/``504``: answer like Envoy; ``hang``: never answer;
    ``close``: close the connection without a response."""

    mode: str = "mtls"
    by: str = "spiffe://cluster.local/ns/ns-a/sa/echo"
    uri: str = "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    raw_xfcc: str = ""
    server: str = "istio-envoy"
    seen_hosts: list[str] = field(default_factory=list)
    seen_xfcc: list[str] = field(default_factory=list)
    seen_peers: list[tuple[str, int]] = field(default_factory=list)


_LOCAL = {
    "503": (503, ENVOY_RESET),
    "san": (503, ENVOY_SAN),
    "rbac": (403, ENVOY_RBAC),
    "504": (504, ENVOY_TIMEOUT),
}


def _proxy_handler(b: SidecarBehaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def version_string(self) -> str:
            return b.server

        def _local(self, status: int, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_CONNECT(self) -> None:
            b.seen_hosts.append(self.path)
            if b.mode in _LOCAL:
                self._local(*_LOCAL[b.mode])
                return
            up = socket.create_connection(b.upstream, timeout=5)
            self.send_response(200)
            self.end_headers()
            self.wfile.flush()
            if b.mode == "close":
                up.close()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.close_connection = True
            socks = [self.connection, up]
            try:
                while True:
                    ready, _, _ = select.select(socks, [], [], 5)
                    if not ready:
                        return
                    for s in ready:
                        data = s.recv(65536)
                        if not data:
                            return
                        (up if s is self.connection else self.connection).sendall(data)
            finally:
                up.close()

        def do_GET(self) -> None:
            b.seen_hosts.append(self.headers.get("host", ""))
            b.seen_peers.append(self.client_address)
            client_xfcc = [
                v for k, v in self.headers.items() if k.lower() == "x-forwarded-client-cert"
            ]
            b.seen_xfcc.extend(client_xfcc)
            if b.mode in _LOCAL:
                self._local(*_LOCAL[b.mode])
                return
            if b.mode == "hang":
                time.sleep(30)  # far past any probe timeout in the tests (daemon thread)
                return
            if b.mode == "close":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in ("proxy-connection", "x-forwarded-client-cert")
            }
            mine = f'By={b.by};Hash=ab12;Subject="";URI={b.uri}'
            if b.mode == "mtls":
                headers["x-forwarded-client-cert"] = mine
            elif b.mode == "forward":
                headers["x-forwarded-client-cert"] = ",".join([*client_xfcc, mine])
            elif b.mode == "trusting" and client_xfcc:
                headers["x-forwarded-client-cert"] = ",".join(client_xfcc)
            elif b.mode == "raw":
                headers["x-forwarded-client-cert"] = b.raw_xfcc
            conn = http.client.HTTPConnection(*b.upstream, timeout=5)
            path = self.path.split("://", 1)[-1]
            path = path[path.find("/") :] if "/" in path else "/"
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("content-length", "connection", "server", "date"):
                    self.send_header(k, v)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            conn.close()

    return Handler


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=2)


@contextmanager
def sidecar(b: SidecarBehaviour) -> Iterator[str]:
    with http_server(_proxy_handler(b)) as url:
        yield url


def app_handler(
    status: int, body: bytes, content_type: str = "text/plain"
) -> type[BaseHTTPRequestHandler]:
    """An app that is not the echo responder."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def admin_handler(routes: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    """An Envoy admin stand-in: JSON documents by path (with query); a ``bytes``
    value is sent as is; an ``int`` value is a bare status; unknown paths 404 the way
    Envoy does for an unknown config_dump resource."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            doc = routes.get(self.path)
            status = 200
            if doc is None:
                status, body = 404, b"not found in config dump"
            elif isinstance(doc, int):
                status, body = doc, b"error"
            elif isinstance(doc, bytes):
                body = doc
            else:
                body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


DUMP = "/config_dump?resource=dynamic_active_secrets"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dump_doc(issued: Issued, trusted_pem: bytes | None, *, key: bytes = b"[redacted]") -> Any:
    """Envoy 1.40's dynamic_active_secrets shape (seen below on a real Envoy)."""
    t = "type.googleapis.com/envoy."
    configs: list[Any] = [
        {
            "@type": t + "admin.v3.SecretsConfigDump.DynamicSecret",
            "name": "default",
            "secret": {
                "@type": t + "extensions.transport_sockets.tls.v3.Secret",
                "name": "default",
                "tls_certificate": {
                    "certificate_chain": {"inline_bytes": b64(issued.chain_pem())},
                    "private_key": {"inline_bytes": b64(key)},
                },
            },
        }
    ]
    if trusted_pem is not None:
        configs.append(
            {
                "name": "ROOTCA",
                "secret": {
                    "name": "ROOTCA",
                    "validation_context": {"trusted_ca": {"inline_bytes": b64(trusted_pem)}},
                },
            }
        )
    return {"configs": configs}


def certs_doc(
    ca_serial: int, uri: str, nb: dt.datetime | None, na: dt.datetime | None
) -> dict[str, object]:
    """Envoy's /certs shape (serials in hex, days_until_expiration a string)."""
    leaf: dict[str, object] = {
        "path": "<inline>",
        "serial_number": "39b32daddf1728fa451ac980f39d074983f5a057",
        "subject_alt_names": [{"uri": uri}],
    }
    now = dt.datetime.now(dt.UTC)
    if na is not None:
        leaf["days_until_expiration"] = str((na - now).days)
        leaf["expiration_time"] = na.isoformat().replace("+00:00", "Z")
    else:
        leaf["days_until_expiration"] = "2"
    if nb is not None:
        leaf["valid_from"] = nb.isoformat().replace("+00:00", "Z")
    ca = {"path": "<inline>", "serial_number": "0" + format(ca_serial, "x")}
    return {"certificates": [{"ca_cert": [ca], "cert_chain": [leaf]}]}


@dataclass
class Agent:
    """pilot-agent stand-in: /healthz/ready turns 200 after ``ready_after`` seconds
    (never when None), or after ``not_ready_polls`` answers of 503 when that is set (a
    count, so no race with how fast the probe starts); POST /quitquitquit is recorded."""

    ready_after: float | None = 0.0
    not_ready_polls: int | None = None
    started: float = field(default_factory=time.monotonic)
    ready_polls: int = 0
    quits: list[str] = field(default_factory=list)
    url: str = ""


@contextmanager
def pilot_agent() -> Iterator[Agent]:
    """pilot-agent's 15021 readiness and 15020 quit endpoints, served until the end."""
    a = Agent()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int) -> None:
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            if self.path != "/healthz/ready":
                return self._send(404)
            a.ready_polls += 1
            if a.not_ready_polls is not None:
                up = a.ready_polls > a.not_ready_polls
            else:
                up = a.ready_after is not None and time.monotonic() - a.started >= a.ready_after
            self._send(200 if up else 503)

        def do_POST(self) -> None:
            if self.path != "/quitquitquit":
                return self._send(404)
            a.quits.append(self.command)
            self._send(200)

    with http_server(Handler) as url:
        a.url = url
        yield a
