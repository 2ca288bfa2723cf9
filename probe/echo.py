"""The echo responder, ``mtlsprobe serve``: answers any request with the request
itself as JSON, so a probe can see the X-Forwarded-Client-Cert the server's sidecar
added. Users deploy it as a known target; the lab runs one process for hundreds of
workloads (``--listen`` repeats, each address with its own name).

Hostile-input bounds: request line and header size, header count, body size, and
read timeouts (a slow client cannot hold a worker for long); a bounded worker pool.
Authorization, Proxy-Authorization, Cookie and Set-Cookie values are never echoed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
MAX_BODY = 1024 * 1024
READ_TIMEOUT = 10.0
DEFAULT_WORKERS = 64


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    name: str
    tcp: bool = False


def parse_listen(text: str, *, tcp: bool = False) -> Listen:
    """``ADDR:PORT[=name]``; IPv6 as ``[addr]:port``."""
    addr, _, name = text.partition("=")
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = addr.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"{text!r} is not ADDR:PORT[=name]")
    return Listen(host, int(port_text), name or addr, tcp)


def _headers_json(items: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in items:
        k = key.lower()
        out.setdefault(k, []).append("[redacted]" if k in REDACTED_HEADERS else value)
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT
    server_version = "mtlsprobe-echo"
    sys_version = ""
    listen: Listen  # set per connection

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the lab runs thousands of requests; errors surface in responses."""

    def _respond(self) -> None:
        length_text = self.headers.get("content-length", "0")
        try:
            length = int(length_text)
        except ValueError:
            self.send_error(400, "bad content-length")
            return
        if length > MAX_BODY:
            self.send_error(413, "body too large")
            self.close_connection = True
            return
        body = self.rfile.read(length) if length > 0 else b""
        doc = {
            "name": self.listen.name,
            "listener": f"{self.listen.host}:{self.listen.port}",
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("host"),
            "headers": _headers_json(list(self.headers.items())),
            "body_bytes": len(body),
        }
        payload = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _respond


def _handler_for(listen: Listen) -> type[_Handler]:
    return type("EchoHandler", (_Handler,), {"listen": listen})


class EchoServer:
    """Many listeners, one accept loop, a bounded pool of workers."""

    def __init__(self, listens: list[Listen], workers: int = DEFAULT_WORKERS) -> None:
        self._sel = selectors.DefaultSelector()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="echo")
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.addresses: list[tuple[str, int]] = []
        try:
            for listen in listens:
                family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((listen.host, listen.port))
                sock.listen(256)
                sock.setblocking(False)
                bound = Listen(listen.host, sock.getsockname()[1], listen.name, listen.tcp)
                self._socks.append(sock)
                self.addresses.append((bound.host, bound.port))
                self._sel.register(sock, selectors.EVENT_READ, bound)
        except OSError:
            self.stop()
            raise

    def start(self) -> EchoServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="echo-accept")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.2):
                listen: Listen = key.data
                try:
                    conn, peer = key.fileobj.accept()  # type: ignore[union-attr]
                except OSError:
                    continue
                conn.setblocking(True)
                self._pool.submit(self._serve_conn, conn, peer, listen)

    def _serve_conn(self, conn: socket.socket, peer: Any, listen: Listen) -> None:
        try:
            if listen.tcp:
                _tcp_echo(conn)
            else:
                _handler_for(listen)(conn, peer, self)  # type: ignore[arg-type]
        except Exception:  # noqa: S110 - a garbage client must never kill a worker
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for sock in self._socks:
            with contextlib.suppress(Exception):
                self._sel.unregister(sock)
            sock.close()
        self._sel.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _tcp_echo(conn: socket.socket) -> None:
    conn.settimeout(READ_TIMEOUT)
    total = 0
    while total < MAX_BODY:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)
        total += len(data)


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Echo responder: answers every HTTP request with the request (method, path, "
        "headers incl. X-Forwarded-Client-Cert) as JSON; Authorization and Cookie redacted."
    )
    p.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="ADDR:PORT[=NAME]",
        help="HTTP listen address, repeatable (default 0.0.0.0:8080)",
    )
    p.add_argument(
        "--tcp-listen",
        action="append",
        default=[],
        metavar="ADDR:PORT[=NAME]",
        help="raw TCP echo listen address, repeatable",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"concurrent connections served (default {DEFAULT_WORKERS})",
    )


def main(args: argparse.Namespace) -> int:
    from probe.cli import UsageError

    try:
        listens = [
            parse_listen(x) for x in args.listen or ([] if args.tcp_listen else ["0.0.0.0:8080"])
        ]
        listens += [parse_listen(x, tcp=True) for x in args.tcp_listen]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        server = EchoServer(listens, workers=max(1, args.workers))
    except OSError as exc:
        raise UsageError(f"cannot listen: {exc.strerror or exc}") from None
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    server.start()
    print(f"mtlsprobe serve: listening on {len(server.addresses)} addresses", flush=True)
    stop.wait()
    server.stop()
    return 0
