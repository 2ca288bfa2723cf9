"""A stand-in for the probe's sidecar (an HTTP proxy) and for an Envoy admin API,
for tests of the mesh-side checks without Envoy. Real sockets, real HTTP."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ENVOY_503 = (
    b"upstream connect error or disconnect/reset before headers. "
    b"reset reason: connection termination"
)


@dataclass
class SidecarBehaviour:
    """What the stand-in does with a request: ``mtls`` appends an XFCC element the
    way a server sidecar does (after dropping the client's, SANITIZE), ``forward``
    keeps the client's XFCC and appends, ``plaintext`` adds none, ``503`` answers
    like Envoy when the upstream reset."""

    mode: str = "mtls"
    by: str = "spiffe://cluster.local/ns/ns-a/sa/echo"
    uri: str = "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    seen_hosts: list[str] = field(default_factory=list)


def _proxy_handler(b: SidecarBehaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            b.seen_hosts.append(self.headers.get("host", ""))
            if b.mode == "503":
                self.send_response(503)
                self.send_header("server", "envoy")
                self.send_header("content-length", str(len(ENVOY_503)))
                self.end_headers()
                self.wfile.write(ENVOY_503)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
            client_xfcc = [
                v for k, v in self.headers.items() if k.lower() == "x-forwarded-client-cert"
            ]
            headers = {k: v for k, v in headers.items() if k.lower() != "x-forwarded-client-cert"}
            if b.mode == "mtls":
                headers["x-forwarded-client-cert"] = f'By={b.by};Hash=ab12;Subject="";URI={b.uri}'
            elif b.mode == "forward":
                mine = f'By={b.by};Hash=ab12;Subject="";URI={b.uri}'
                headers["x-forwarded-client-cert"] = ",".join([*client_xfcc, mine])
            conn = http.client.HTTPConnection(*b.upstream, timeout=5)
            conn.request("GET", "/", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("content-length", "connection", "server", "date"):
                    self.send_header(k, v)
            self.send_header("server", "envoy")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            conn.close()

    return Handler


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
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


def admin_handler(routes: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    """An Envoy admin stand-in serving JSON documents by path (with query)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            doc = routes.get(self.path)
            body = json.dumps(doc).encode() if doc is not None else b"not found"
            self.send_response(200 if doc is not None else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
