"""Apps that would make the ``authz`` check lie, for the lab (``serve_argv``) and for
direct socket tests. An app's behaviour comes from its workload name:

- ``rbac*``: answers every request 403 with Envoy's RBAC body, as if a sidecar denied it;
- ``fake*``: answers 200 with the body ``RBAC: access denied``;
- ``ok*``: answers 200 ``ok`` to everything (no reflection);
- ``reset*``: accepts, reads the request, resets the connection (RST, no answer);
- ``shut*`` (tcp): reads the bytes and closes without a reply, as a denying sidecar would;
- anything else: the project's echo responder (the honest app).
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RBAC = b"RBAC: access denied"


def liar_handler(kind: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            if n:
                self.rfile.read(n)
            if kind == "reset":
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True
                return
            status, body = {"rbac": (403, RBAC), "fake": (200, RBAC), "ok": (200, b"ok")}[kind]
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    return Handler


def kind_of(name: str) -> str | None:
    short = name.rsplit("/", 1)[-1]
    return next((k for k in ("rbac", "fake", "ok", "reset", "shut") if short.startswith(k)), None)


def _shut_tcp(host: str, port: int) -> None:
    srv = socket.create_server((host, port))

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            try:
                conn.settimeout(5)
                conn.recv(65536)
            except OSError:
                pass
            conn.close()

    threading.Thread(target=serve, daemon=True).start()


def main() -> None:
    from probe.echo import EchoServer, parse_listen

    p = argparse.ArgumentParser()
    p.add_argument("--listen", action="append", default=[])
    p.add_argument("--tcp-listen", action="append", default=[])
    args, _ = p.parse_known_args()
    honest = []
    for text in args.listen:
        lst = parse_listen(text)
        kind = kind_of(lst.name)
        if kind is None:
            honest.append(lst)
            continue
        srv = ThreadingHTTPServer((lst.host, lst.port), liar_handler(kind))
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    for text in args.tcp_listen:
        lst = parse_listen(text, tcp=True)
        if kind_of(lst.name) == "shut":
            _shut_tcp(lst.host, lst.port)
        else:
            honest.append(lst)
    server = EchoServer(honest).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
