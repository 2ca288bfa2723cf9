"""TLS straight to a pod port with pyOpenSSL: capture the server chain, and see
whether the server rejects a client certificate.

Facts this relies on (istio-facts.md): a handshake with an Istio ALPN shows the
server chain even without a client certificate (TLS 1.2 and 1.3); in TLS 1.3 the
client handshake "succeeds" and the rejection arrives as an alert on the first
read, so we read before we write.
"""

from __future__ import annotations

import contextlib
import errno
import re
import select
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from OpenSSL import SSL, crypto

from probe import netio
from probe.errors import ProtocolViolation, ReadTimedOut, ResetAfterRequest, TLSAlert

if TYPE_CHECKING:
    from cryptography import x509

    from probe.model import Endpoint
    from probe.pki import Issued

HTTP_ALPNS = (b"istio-http/1.1", b"istio", b"http/1.1")
TCP_ALPNS = (b"istio-peer-exchange", b"istio")

_ALERT = re.compile(r"(?:sslv3|tlsv1[0-9]*|tls) alert ([a-z0-9 _]+)", re.IGNORECASE)


def client_context(alpns: tuple[bytes, ...], client: Issued | None = None) -> SSL.Context:
    """An SSL context that verifies nothing itself: the SVID rules judge the chain."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *_: True)
    ctx.set_alpn_protos(list(alpns))
    if client is not None:
        ctx.use_certificate(client.cert)  # type: ignore[arg-type]  # stubs predate cryptography objects
        ctx.use_privatekey(client.key)  # type: ignore[arg-type]
        for extra in client.chain[:-1]:  # intermediates; never the root
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
    return ctx


@dataclass
class TLSConnection:
    """A live pyOpenSSL connection and the blocking socket under it."""

    conn: SSL.Connection
    sock: socket.socket


@dataclass
class Handshake:
    """What one TLS connection showed."""

    chain: list[x509.Certificate] = field(default_factory=list)
    version: str | None = None
    alpn: str | None = None
    cipher: str | None = None
    #: Set when the handshake itself failed (the chain may still have been captured).
    failure: str | None = None
    #: Set when a presented certificate could not be parsed (``chain`` stops before it).
    unparseable: str | None = None


def alert_name(err: SSL.Error) -> str | None:
    """The alert in an OpenSSL error, e.g. 'certificate required', 'unknown ca'."""
    m = _ALERT.search(str(err))
    return m.group(1).replace("_", " ").lower() if m else None


def _describe(err: Exception) -> str:
    if isinstance(err, SSL.SysCallError):
        code = err.args[0] if err.args else None
        if code in (errno.ECONNRESET, errno.EPIPE, -1):
            return "connection reset/closed by the server"
        return f"socket error {err.args}"
    if isinstance(err, SSL.ZeroReturnError):
        return "TLS connection closed by the server"
    name = alert_name(err) if isinstance(err, SSL.Error) else None
    if name:
        return f"TLS alert: {name}"
    text = str(err)
    m = re.search(r"'([^']*(?:error|wrong|unsupported|no protocols)[^']*)'", text)
    return f"TLS error: {m.group(1) if m else text[:160]}"


def _capture(conn: SSL.Connection, hs: Handshake) -> None:
    for i, c in enumerate(conn.get_peer_cert_chain() or []):
        try:
            hs.chain.append(c.to_cryptography())
        except Exception as exc:  # a hostile server's DER that OpenSSL took and we cannot read
            hs.unparseable = f"certificate #{i} of the presented chain is not valid X.509: {exc}"
            break
    hs.version = conn.get_protocol_version_name()
    proto = conn.get_alpn_proto_negotiated()
    hs.alpn = proto.decode("ascii", "replace") if proto else None
    hs.cipher = conn.get_cipher_name()


def connect_tls(
    endpoint: Endpoint,
    context: SSL.Context,
    timeout: float,
    server_name: str | None = None,
) -> tuple[TLSConnection, Handshake]:
    """TCP + TLS handshake. Returns the live connection (caller closes it) and what
    it showed. A failed handshake is recorded in ``failure``, with the chain if the
    server sent it; timeouts raise (inconclusive)."""
    sock = netio.connect(endpoint, timeout)
    try:
        conn = SSL.Connection(context, sock)
        conn.set_connect_state()
        sni = _sni_bytes(server_name)
        if sni:
            conn.set_tlsext_host_name(sni)
        hs = Handshake()
        try:
            _handshake(conn, sock, endpoint, timeout)
        except SSL.Error as exc:
            hs.failure = _describe(exc)
        _capture(conn, hs)
    except BaseException:
        sock.close()
        raise
    return TLSConnection(conn, sock), hs


def _handshake(
    conn: SSL.Connection, sock: socket.socket, endpoint: Endpoint, timeout: float
) -> None:
    """The whole handshake within one deadline, however slowly the server drips
    bytes: non-blocking with a poll loop here (SO_RCVTIMEO bounds each read only),
    blocking again afterwards for the read-first logic."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    sock.setblocking(False)
    try:
        while True:
            try:
                conn.do_handshake()
                return
            except SSL.WantReadError:
                events = select.POLLIN
            except SSL.WantWriteError:
                events = select.POLLOUT
            remaining = deadline - time.monotonic()
            poller.register(sock, events)
            ready = poller.poll(remaining * 1000) if remaining > 0 else []
            poller.unregister(sock)
            if not ready:
                raise ReadTimedOut(
                    f"TLS handshake with {endpoint} stalled for {timeout:g}s (slow or not TLS)"
                )
    finally:
        sock.setblocking(True)


def _sni_bytes(server_name: str | None) -> bytes | None:
    """SNI as the wire wants it; a name that cannot be encoded is simply not sent
    (the server's certificate, not its SNI routing, is what we judge)."""
    if not server_name:
        return None
    try:
        return server_name.encode("idna")
    except UnicodeError:
        return server_name.encode("ascii") if server_name.isascii() else None


def close(tc: TLSConnection) -> None:
    with contextlib.suppress(OSError):
        tc.sock.close()


def await_rejection(tc: TLSConnection, endpoint: Endpoint, wait: float) -> None:
    """Read first: raise TLSAlert/ResetAfterRequest if the server rejects us now.
    Returns quietly when nothing arrived within ``wait`` (the server is waiting
    for our request: it accepted the handshake)."""
    netio.set_io_timeout(tc.sock, wait)
    try:
        data = tc.conn.recv(1)
    except SSL.WantReadError:
        return
    except SSL.ZeroReturnError:
        raise ResetAfterRequest(
            f"{endpoint} closed the TLS connection right after the handshake"
        ) from None
    except SSL.SysCallError as exc:
        raise ResetAfterRequest(f"{endpoint}: {_describe(exc)} after the handshake") from None
    except SSL.Error as exc:
        name = alert_name(exc)
        if name:
            raise TLSAlert(f"TLS alert from {endpoint}: {name}", name) from None
        raise ResetAfterRequest(f"{endpoint}: {_describe(exc)}") from None
    if data:
        raise ProtocolViolation(f"{endpoint} sent data before any request")


def request_over_tls(
    tc: TLSConnection, payload: bytes, endpoint: Endpoint, timeout: float
) -> bytes:
    """Send ``payload`` and read the first bytes of the answer. Rejections (alerts,
    resets, close) before any byte of answer raise; silence raises ReadTimedOut."""
    netio.set_io_timeout(tc.sock, timeout)
    try:
        tc.conn.sendall(payload)
        data = tc.conn.recv(4096)
    except SSL.WantReadError:
        raise ReadTimedOut(f"no answer over TLS from {endpoint} within {timeout:g}s") from None
    except SSL.WantWriteError:
        raise ReadTimedOut(f"sending over TLS to {endpoint} timed out") from None
    except SSL.ZeroReturnError:
        raise ResetAfterRequest(f"{endpoint} closed the TLS connection after the request") from None
    except SSL.SysCallError as exc:
        raise ResetAfterRequest(f"{endpoint}: {_describe(exc)} after the request") from None
    except SSL.Error as exc:
        name = alert_name(exc)
        if name:
            raise TLSAlert(f"TLS alert from {endpoint}: {name}", name) from None
        raise ResetAfterRequest(f"{endpoint}: {_describe(exc)}") from None
    if not data:
        raise ResetAfterRequest(f"{endpoint} closed the TLS connection after the request")
    return data
