"""The echo responder, ``mtlsprobe serve``: answers any request, on any path (the probe
asks ``/headers``, like httpbin; ``/`` works too), with the request itself as JSON,
so a probe can see the X-Forwarded-Client-Cert the server's sidecar added. Users
deploy it as a known target; the lab runs one process for hundreds of workloads
(``--listen`` repeats, each address with its own name). ``--tcp-listen`` echoes raw
bytes back, so tcp ports have something that answers plaintext.

Hostile-input bounds: the request head (line + headers) is capped in bytes and must
arrive within a deadline (a slowloris client cannot hold a worker: the deadline is
for the whole head, not per read); bodies are capped (413) and read under their own
deadline; accepted connections never exceed the worker count (the rest wait in the
kernel's backlog). Authorization, Proxy-Authorization, Cookie and Set-Cookie values
are never echoed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import selectors
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
MAX_HEAD = 32 * 1024
MAX_BODY = 1024 * 1024
HEAD_TIMEOUT = 10.0  # whole request head, including the idle wait on keep-alive
BODY_TIMEOUT = 10.0
TCP_TIMEOUT = 30.0  # a tcp echo session, total
DEFAULT_WORKERS = 64
_BUF = 8192


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    name: str
    tcp: bool = False


def parse_listen(text: str, *, tcp: bool = False, default_name: str | None = None) -> Listen:
    """``ADDR:PORT[=NAME]``; IPv6 as ``[addr]:port``. Without a name: ``default_name``,
    else the address itself."""
    addr, _, name = text.partition("=")
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = addr.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"{text!r} is not ADDR:PORT[=NAME]")
    return Listen(host, int(port_text), name or default_name or addr, tcp)


class _HeadTooLarge(Exception):
    pass


class _Reader(io.RawIOBase):
    """The socket's read side under a deadline and, while a request head is being
    read, a byte cap (counted on raw reads, so buffering can add one buffer)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._deadline = time.monotonic() + HEAD_TIMEOUT
        self._cap: int | None = MAX_HEAD + _BUF
        self._count = 0

    def phase(self, timeout: float, cap: int | None) -> None:
        self._deadline = time.monotonic() + timeout
        self._cap = cap
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(remaining)
        n = self._sock.recv_into(buf)
        self._count += n
        if self._cap is not None and self._count > self._cap:
            raise _HeadTooLarge
        return n


def _headers_json(items: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in items:
        k = key.lower()
        out.setdefault(k, []).append("[redacted]" if k in REDACTED_HEADERS else value)
    return out


class _BadBody(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # error replies to garbage get a status line
    server_version = "mtlsprobe-echo"
    sys_version = ""
    listen: Listen  # set per listener (subclass)
    _reader: _Reader

    def setup(self) -> None:
        self.connection = self.request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self._reader = _Reader(self.connection)
        self.rfile = io.BufferedReader(self._reader, _BUF)
        self.wfile = self.connection.makefile("wb", 0)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the lab runs thousands of requests; errors surface in responses."""

    def handle_one_request(self) -> None:
        """Like the base class, with the head cap and deadline, and any method token
        answered (the base class answers unknown methods 501)."""
        self._reader.phase(HEAD_TIMEOUT, MAX_HEAD + _BUF)
        try:
            self.raw_requestline = self.rfile.readline(MAX_HEAD + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > MAX_HEAD:
                raise _HeadTooLarge
            if not self.parse_request():
                return
            self._reader.phase(BODY_TIMEOUT, None)
            self.connection.settimeout(BODY_TIMEOUT)  # bounds the response write too
            self._respond()
            self.wfile.flush()
        except _HeadTooLarge:
            self.requestline = self.request_version = self.command = ""
            self.close_connection = True
            self.send_error(431, "request head too large")
        except TimeoutError:
            self.close_connection = True

    def _read_body(self) -> bytes:
        te = self.headers.get("transfer-encoding")
        cl = self.headers.get_all("content-length") or []
        if te is not None:
            if cl:
                raise _BadBody(400, "both content-length and transfer-encoding")
            if te.strip().lower() != "chunked":
                raise _BadBody(501, "unsupported transfer-encoding")
            return self._read_chunked()
        if not cl:
            return b""
        if len(set(cl)) != 1 or not cl[0].strip().isdigit():
            raise _BadBody(400, "bad content-length")
        length = int(cl[0])
        if length > MAX_BODY:
            raise _BadBody(413, "body too large")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BadBody(400, "body shorter than content-length")
        return body

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1026)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadBody(400, "bad chunk size") from None
            if size < 0:
                raise _BadBody(400, "bad chunk size")
            if size == 0:
                trailers = 0
                while self.rfile.readline(1026).strip():
                    trailers += 1
                    if trailers > 32:
                        raise _BadBody(400, "too many trailers")
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                raise _BadBody(413, "body too large")
            data = self.rfile.read(size)
            if len(data) != size or self.rfile.read(2) != b"\r\n":
                raise _BadBody(400, "truncated chunk")
            chunks.append(data)

    def _respond(self) -> None:
        try:
            body = self._read_body()
        except _BadBody as exc:
            self.close_connection = True
            self.send_error(exc.status, exc.message)
            return
        doc = {
            "name": self.listen.name,
            "listener": f"{self.listen.host}:{self.listen.port}",
            "remote": f"{self.client_address[0]}:{self.client_address[1]}",
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


class EchoServer:
    """Many listeners, one accept loop, at most ``workers`` connections in service.

    ``EchoServer([Listen("127.0.10.2", 8080, "ns-a/echo")]).start()`` serves in
    background threads; ``addresses`` holds the bound (host, port) pairs in order
    (port 0 becomes the real port); ``stop()`` closes listeners and live connections.
    """

    def __init__(self, listens: list[Listen], workers: int = DEFAULT_WORKERS) -> None:
        self._sel = selectors.DefaultSelector()
        self._workers = max(1, workers)
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="echo")
        self._slots = threading.BoundedSemaphore(self._workers)
        self._socks: list[socket.socket] = []
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.addresses: list[tuple[str, int]] = []
        self.listens: list[Listen] = []
        try:
            for listen in listens:
                family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((listen.host, listen.port))
                sock.listen(256)
                sock.setblocking(False)
                bound = Listen(listen.host, sock.getsockname()[1], listen.name, listen.tcp)
                handler = None if bound.tcp else type("EchoHandler", (_Handler,), {"listen": bound})
                self._socks.append(sock)
                self.addresses.append((bound.host, bound.port))
                self.listens.append(bound)
                self._sel.register(sock, selectors.EVENT_READ, (bound, handler))
        except OSError:
            self.stop()
            raise

    def start(self) -> EchoServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="echo-accept")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue  # every worker busy: new connections wait in the backlog
            held = True
            for key, _ in self._sel.select(timeout=0.2):
                if not held and not self._slots.acquire(blocking=False):
                    break
                try:
                    conn, peer = key.fileobj.accept()  # type: ignore[union-attr]
                except OSError:
                    held = True
                    continue
                held = False
                conn.setblocking(True)
                with self._live_lock:
                    self._live.add(conn)
                listen, handler = key.data
                self._pool.submit(self._serve_conn, conn, peer, listen, handler)
            if held:
                self._slots.release()

    def _serve_conn(
        self, conn: socket.socket, peer: Any, listen: Listen, handler: type[_Handler] | None
    ) -> None:
        try:
            if handler is None:
                _tcp_echo(conn)
            else:
                handler(conn, peer, self)  # type: ignore[arg-type]
        except Exception:  # noqa: S110 - a garbage client must never kill a worker
            pass
        finally:
            with self._live_lock:
                self._live.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()
            self._slots.release()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for sock in self._socks:
            with contextlib.suppress(Exception):
                self._sel.unregister(sock)
            sock.close()
        self._sel.close()
        with self._live_lock:
            live = list(self._live)
        for conn in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tcp_echo(conn: socket.socket) -> None:
    deadline = time.monotonic() + TCP_TIMEOUT
    total = 0
    while total < MAX_BODY:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        conn.settimeout(remaining)
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)
        total += len(data)


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Echo responder: answers every HTTP request (any method, any path, /healthz "
        "included) with the request as JSON: method, path, host, headers incl. "
        "X-Forwarded-Client-Cert; Authorization and Cookie values redacted."
    )
    p.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="ADDR:PORT[=NAME]",
        help="HTTP listen address, repeatable, each with its own name "
        "(default 0.0.0.0:8080 unless --tcp-listen is given)",
    )
    p.add_argument(
        "--tcp-listen",
        action="append",
        default=[],
        metavar="ADDR:PORT[=NAME]",
        help="raw TCP echo listen address (bytes are sent back), repeatable",
    )
    p.add_argument(
        "--name",
        default=None,
        help="label reported in every response for addresses given without =NAME "
        "(e.g. ns/workload; default: the address)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"connections served at once (default {DEFAULT_WORKERS}); more wait in the backlog",
    )


def main(args: argparse.Namespace) -> int:
    from probe.cliargs import UsageError

    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    try:
        http = args.listen or ([] if args.tcp_listen else ["0.0.0.0:8080"])
        listens = [parse_listen(x, default_name=args.name) for x in http]
        listens += [parse_listen(x, tcp=True, default_name=args.name) for x in args.tcp_listen]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        server = EchoServer(listens, workers=args.workers)
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
