"""Real servers for tests: TLS servers that behave like Istio sidecar inbounds in
each mode, plaintext servers, black holes. Threaded, on 127.0.0.1, always stopped."""

from __future__ import annotations

import contextlib
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from OpenSSL import SSL

from probe.model import Endpoint
from probe.pki import CertificateAuthority, Issued

HTTP_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


class Server:
    """Accept loop in a thread; each connection handled by ``handle`` in its own thread."""

    def __init__(self, handle: Callable[[socket.socket], None], host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(128)
        self._handle = handle
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> Endpoint:
        host, port = self._sock.getsockname()[:2]
        return Endpoint(host, port)

    @property
    def accepted(self) -> int:
        """Connections accepted so far (lets a test wait for a client to arrive)."""
        return len(self._conns)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        with contextlib.suppress(OSError):
            self._sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()
        self._thread.join(timeout=2)


@contextlib.contextmanager
def serving(handle: Callable[[socket.socket], None]) -> Iterator[Server]:
    srv = Server(handle)
    try:
        yield srv
    finally:
        srv.close()


def read_request(conn: socket.socket | ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def plaintext_http(conn: socket.socket) -> None:
    conn.settimeout(5)
    if read_request(conn):
        conn.sendall(HTTP_OK)


def black_hole(conn: socket.socket) -> None:
    """Accepts and never answers (what a STRICT listener does to a silent client,
    and what a dead app behind a load balancer looks like)."""
    conn.settimeout(30)
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass


def tcp_echo(conn: socket.socket) -> None:
    conn.settimeout(5)
    data = conn.recv(4096)
    if data:
        conn.sendall(data)


def reset_after_read(conn: socket.socket) -> None:
    """Read the request, then RST: what an mTLS-only chain does to plaintext."""
    conn.settimeout(5)
    conn.recv(4096)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


# Bound, never listening, kept open until the test process exits (see below).
_RESERVED: list[socket.socket] = []


def nothing_listening() -> Endpoint:
    """A loopback port where connects are refused, for the whole session. The socket
    stays bound without listening: the kernel answers a SYN with a reset, and no other
    process (another test run on a shared machine) can take the port meanwhile, as it
    could if the port were closed and merely assumed to stay free."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _RESERVED.append(s)
    return Endpoint("127.0.0.1", s.getsockname()[1])


class MeshPKI:
    """A mesh CA plus files a server needs."""

    def __init__(self, tmp: Path, trust_domain: str = "cluster.local") -> None:
        self.tmp = tmp
        self.td = trust_domain
        self.ca = CertificateAuthority.create_root(trust_domain, key_type="ec")
        self.root_file = tmp / "root-cert.pem"
        self.root_file.write_bytes(self.ca.root_pem())

    def identity(self, ns: str, sa: str) -> str:
        return f"spiffe://{self.td}/ns/{ns}/sa/{sa}"

    def files(self, issued: Issued, name: str) -> tuple[Path, Path]:
        cert = self.tmp / f"{name}.crt"
        key = self.tmp / f"{name}.key"
        cert.write_bytes(issued.chain_pem())
        key.write_bytes(issued.key_pem())
        return cert, key


def tls_handler(
    pki: MeshPKI,
    issued: Issued,
    *,
    require_client: bool = True,
    permissive: bool = False,
    version: ssl.TLSVersion | None = None,
    app: Callable[[ssl.SSLSocket], None] | None = None,
) -> Callable[[socket.socket], None]:
    """A sidecar-like inbound: TLS with client certs from the mesh root (STRICT);
    with ``permissive`` plaintext HTTP is served too (Istio's raw_buffer chain)."""
    tmpdir = Path(tempfile.mkdtemp(dir=pki.tmp))
    cert, key = pki.files(issued, str(tmpdir / "server"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["istio-http/1.1", "istio-peer-exchange", "istio", "http/1.1"])
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.root_file)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        first = conn.recv(1, socket.MSG_PEEK)
        if not first:
            return
        if first != b"\x16":  # not a TLS ClientHello
            if permissive:
                plaintext_http(conn)
            else:
                reset_after_read(conn)
            return
        tconn = ctx.wrap_socket(conn, server_side=True)
        try:
            if app is not None:
                app(tconn)
            elif read_request(tconn):
                tconn.sendall(HTTP_OK)
        finally:
            with contextlib.suppress(OSError):
                tconn.close()

    return handle


# ---- pyOpenSSL servers: the liars' starting point (callbacks ssl cannot express) ----------


def openssl_server_context(issued: Issued) -> SSL.Context:
    """A pyOpenSSL server context holding ``issued``, choosing the client's first ALPN
    protocol; tests add the client-certificate policy they lie with."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate(issued.cert)  # type: ignore[arg-type]
    ctx.use_privatekey(issued.key)  # type: ignore[arg-type]
    ctx.set_alpn_select_callback(lambda _c, offered: offered[0])
    return ctx


def keylogged_13(issued: Issued) -> tuple[SSL.Context, dict[str, bytes]]:
    """A TLS 1.3 server context that asks for (and accepts) any client certificate and
    records its traffic secrets, so a test can seal records under them."""
    secrets: dict[str, bytes] = {}

    def keylog(_conn: SSL.Connection, line: bytes) -> None:
        label, _random, secret = line.decode().split()
        secrets[label] = bytes.fromhex(secret)

    ctx = openssl_server_context(issued)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_tls13_ciphersuites(b"TLS_AES_128_GCM_SHA256")
    ctx.set_verify(SSL.VERIFY_PEER, lambda *_: True)  # takes any client certificate
    ctx.set_keylog_callback(keylog)
    return ctx, secrets


def serve_http_once(ctx: SSL.Context, response: bytes = HTTP_OK) -> Callable[[socket.socket], None]:
    """Handshake under ``ctx`` (whatever it decides about the client's certificate),
    read one request's head, answer ``response``, close_notify."""
    from probe import netio

    def handle(conn: socket.socket) -> None:
        conn.settimeout(None)
        netio.set_io_timeout(conn, 5)
        server = SSL.Connection(ctx, conn)
        server.set_accept_state()
        with contextlib.suppress(SSL.Error, OSError):
            server.do_handshake()
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = server.recv(4096)
                if not chunk:
                    return
                data += chunk
            server.sendall(response)
            server.shutdown()

    return handle
