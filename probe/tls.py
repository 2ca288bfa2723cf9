"""TLS straight to a pod port with pyOpenSSL: capture the server chain, record how
far the handshake got, and see whether the server rejects a client certificate.

Facts this relies on (docs/istio-behaviour.md): a handshake with an Istio ALPN shows the
server chain even without a client certificate (TLS 1.2 and 1.3); in TLS 1.3 the
client handshake "succeeds" and the rejection arrives as an alert on the first
read, so we read before we write.

A chain that was merely *shown* proves nothing: anyone can replay a public
certificate. What proves the server holds the key is read from OpenSSL's own
handshake state machine (the info callback's state trail), never from error
texts: the client writes its Finished in TLS 1.3 only after it verified the
server's CertificateVerify and Finished, and its ClientKeyExchange in TLS 1.2 only
after it verified the ECDHE ServerKeyExchange signature (we offer ECDHE suites
only, so a TLS 1.2 server must sign). Alerts the server sent are taken from the
same callback, so bytes that merely look like an alert never count.
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

from OpenSSL import SSL

from probe import netio
from probe.errors import ReadTimedOut

if TYPE_CHECKING:
    from cryptography import x509
    from OpenSSL import crypto

    from probe.model import Endpoint
    from probe.pki import Issued

HTTP_ALPNS = (b"istio-http/1.1", b"istio", b"http/1.1")
TCP_ALPNS = (b"istio-peer-exchange", b"istio")
# TLS 1.2: only key exchanges the server must sign (no static-RSA key transport,
# where nothing short of a completed handshake proves the server holds its key).
TLS12_CIPHERS = b"ECDHE:!aNULL:!eNULL:!PSK"

_ALERT = re.compile(r"(?:sslv3|tlsv1[0-9]*|tls) alert ([a-z0-9 _]+)", re.IGNORECASE)

# OpenSSL client states (SSL_state_string_long), stable since OpenSSL 1.1.0. The
# info callback reports a state (SSL_CB_LOOP) when its message was fully processed.
ST_READ_CERT_REQUEST = "SSLv3/TLS read server certificate request"
ST_WRITE_KEY_EXCHANGE = "SSLv3/TLS write client key exchange"
ST_WRITE_CERT_VERIFY = "SSLv3/TLS write certificate verify"
ST_WRITE_FINISHED = "SSLv3/TLS write finished"
ST_READ_TICKET = "SSLv3/TLS read server session ticket"
ST_READ_CERT = "SSLv3/TLS read server certificate"
ST_WRITE_CLIENT_CERT = "SSLv3/TLS write client certificate"
# The server's last message before our flight: ServerHelloDone (TLS 1.2), its
# Finished (TLS 1.3; in TLS 1.2 "read finished" comes after our flight, excluded by
# the "write client certificate" test where it is used).
_END_OF_SERVER_FLIGHT = frozenset({"SSLv3/TLS read server done", "SSLv3/TLS read finished"})

# RFC 8446 section 6 (and RFC 5246 for the TLS 1.2-only ones), by code.
ALERT_NAMES = {
    0: "close notify",
    10: "unexpected message",
    20: "bad record mac",
    22: "record overflow",
    40: "handshake failure",
    42: "bad certificate",
    43: "unsupported certificate",
    44: "certificate revoked",
    45: "certificate expired",
    46: "certificate unknown",
    47: "illegal parameter",
    48: "unknown ca",
    49: "access denied",
    50: "decode error",
    51: "decrypt error",
    70: "protocol version",
    71: "insufficient security",
    80: "internal error",
    86: "inappropriate fallback",
    90: "user canceled",
    109: "missing extension",
    110: "unsupported extension",
    112: "unrecognized name",
    113: "bad certificate status response",
    115: "unknown psk identity",
    116: "certificate required",
    120: "no application protocol",
}


def client_context(alpns: tuple[bytes, ...], client: Issued | None = None) -> SSL.Context:
    """An SSL context that verifies nothing itself (the SVID rules judge the chain)
    but records, per connection, the handshake states and the alerts received."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_verify(SSL.VERIFY_NONE, lambda *_: True)
    ctx.set_cipher_list(TLS12_CIPHERS)
    ctx.set_alpn_protos(list(alpns))
    ctx.set_info_callback(_on_info)
    if client is not None:
        ctx.use_certificate(client.cert)  # type: ignore[arg-type]  # stubs predate cryptography objects
        ctx.use_privatekey(client.key)  # type: ignore[arg-type]
        for extra in client.chain[:-1]:  # intermediates; never the root
            ctx.add_extra_chain_cert(extra)  # type: ignore[arg-type]
    return ctx


@dataclass
class Trail:
    """What OpenSSL's state machine went through on one connection (client side)."""

    states: list[str] = field(default_factory=list)
    #: Alerts the server sent, by name, in order (``close notify`` included).
    alerts_received: list[str] = field(default_factory=list)
    #: Alerts we sent, with the state we were in (why we gave up).
    alerts_sent: list[tuple[str, str]] = field(default_factory=list)
    #: Bytes were already waiting when the server's flight ended, before we wrote
    #: anything of ours (no legitimate server sends more before our flight): whatever
    #: they say, they were sent before the server could have read our certificate.
    early_bytes: bool = False
    #: Hold our flight briefly after the server's ends (``connect_tls(hold_flight=True)``):
    #: an answer that arrives while we hold was sent without our certificate. Without the
    #: hold, a pre-emptive alert that is merely a little late looks like a rejection.
    hold: bool = False
    started: float = field(default_factory=time.monotonic)


def _on_info(conn: SSL.Connection, where: int, ret: int) -> None:
    trail = conn.get_app_data()
    if not isinstance(trail, Trail):
        return
    if where & SSL.SSL_CB_READ_ALERT == SSL.SSL_CB_READ_ALERT:
        code = ret & 0xFF
        trail.alerts_received.append(ALERT_NAMES.get(code, f"alert {code}"))
    elif where & SSL.SSL_CB_WRITE_ALERT == SSL.SSL_CB_WRITE_ALERT:
        code = ret & 0xFF
        state = conn.get_state_string().decode("ascii", "replace")
        trail.alerts_sent.append((ALERT_NAMES.get(code, f"alert {code}"), state))
    elif where & SSL.SSL_CB_LOOP:
        state = conn.get_state_string().decode("ascii", "replace")
        if not trail.states or trail.states[-1] != state:
            trail.states.append(state)
            if state in _END_OF_SERVER_FLIGHT and ST_WRITE_CLIENT_CERT not in trail.states:
                wait = _hold_for(trail) if ST_READ_CERT_REQUEST in trail.states else 0.0
                trail.early_bytes = trail.early_bytes or _readable(conn, wait)


def _hold_for(trail: Trail) -> float:
    """How long to hold our flight: twice what the server's flight took, so a server as
    slow to send its alert as to send its flight is still caught; 50 ms to 0.5 s."""
    if not trail.hold:
        return 0.0
    return min(0.5, max(0.05, 2 * (time.monotonic() - trail.started)))


def _readable(conn: SSL.Connection, wait: float = 0.0) -> bool:
    """Whether the socket under ``conn`` has bytes (or an end) waiting, within ``wait`` s."""
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(int(wait * 1000)))
    except (OSError, ValueError):
        return False


@dataclass
class TLSConnection:
    """A live pyOpenSSL connection and the blocking socket under it."""

    conn: SSL.Connection
    sock: socket.socket


@dataclass
class Handshake:
    """What one TLS connection showed."""

    chain: list[x509.Certificate] = field(default_factory=list)
    #: The same certificates as OpenSSL parsed them (``native[i]`` is ``chain[i]``):
    #: path validation takes these as they are instead of converting ``chain`` back.
    native: list[crypto.X509] = field(default_factory=list)
    version: str | None = None
    alpn: str | None = None
    cipher: str | None = None
    #: Set when the handshake itself failed (the chain may still have been captured).
    failure: str | None = None
    #: Set when a presented certificate could not be parsed (``chain`` stops before it).
    unparseable: str | None = None
    #: The state trail; keeps growing while the connection is read after the handshake.
    trail: Trail = field(default_factory=Trail)

    @property
    def completed(self) -> bool:
        return self.failure is None

    @property
    def cert_requested(self) -> bool:
        """The server sent a CertificateRequest (it asked who we are)."""
        return ST_READ_CERT_REQUEST in self.trail.states

    @property
    def sent_client_cert(self) -> bool:
        """We sent a non-empty Certificate: a CertificateVerify follows only that."""
        return ST_WRITE_CERT_VERIFY in self.trail.states

    @property
    def session_ticket(self) -> bool:
        """The server issued a session ticket (TLS 1.3: after it took our Finished)."""
        return ST_READ_TICKET in self.trail.states

    @property
    def possession(self) -> str | None:
        """How the server proved it holds the key of the certificate it showed, or
        None when it did not (yet)."""
        states = self.trail.states
        if self.version == "TLSv1.3":
            if self.completed or ST_WRITE_FINISHED in states:
                return "TLS 1.3 CertificateVerify and Finished verified"
            return None
        if self.version == "TLSv1.2":
            if self.completed:
                return "TLS 1.2 handshake completed (server Finished verified)"
            if ST_WRITE_KEY_EXCHANGE in states:
                # We offer ECDHE suites only (TLS12_CIPHERS): the ServerKeyExchange
                # was signed, and verified before we wrote our key exchange.
                return "TLS 1.2 ECDHE ServerKeyExchange signature verified"
        return None

    @property
    def signature_rejected(self) -> bool:
        """We aborted because the server's signature (TLS 1.3 CertificateVerify, TLS
        1.2 ServerKeyExchange: the message after its Certificate) did not verify with
        the key of the certificate it showed. OpenSSL reports a state only once its
        message was processed, so the last one is the Certificate we accepted."""
        return (
            self.possession is None
            and bool(self.trail.states)
            and self.trail.states[-1] == ST_READ_CERT
            and any(alert == "decrypt error" for alert, _ in self.trail.alerts_sent)
        )

    @property
    def server_alert(self) -> str | None:
        """The first alert the server sent other than close_notify."""
        return next((a for a in self.trail.alerts_received if a != "close notify"), None)


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
        hs.native.append(c)
    hs.version = conn.get_protocol_version_name()
    proto = conn.get_alpn_proto_negotiated()
    hs.alpn = proto.decode("ascii", "replace") if proto else None
    hs.cipher = conn.get_cipher_name()


def connect_tls(
    endpoint: Endpoint,
    context: SSL.Context,
    timeout: float,
    server_name: str | None = None,
    *,
    hold_flight: bool = False,
) -> tuple[TLSConnection, Handshake]:
    """TCP + TLS handshake. Returns the live connection (caller closes it) and what
    it showed. A failed handshake is recorded in ``failure``, with the chain if the
    server sent it; timeouts raise (inconclusive). ``hold_flight``: see ``Trail.hold``."""
    sock = netio.connect(endpoint, timeout)
    try:
        conn = SSL.Connection(context, sock)
        conn.set_connect_state()
        sni = _sni_bytes(server_name)
        if sni:
            conn.set_tlsext_host_name(sni)
        hs = Handshake()
        hs.trail.hold = hold_flight
        hs.trail.started = time.monotonic()
        conn.set_app_data(hs.trail)
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
    if server_name.isascii():
        # What the idna codec gives an ASCII name, or what its UnicodeError fallback below
        # would; without the codec's pure-Python label walk (and its imports) per check.
        return server_name.encode("ascii")
    try:
        return server_name.encode("idna")
    except UnicodeError:
        return server_name.encode("ascii") if server_name.isascii() else None


def close(tc: TLSConnection) -> None:
    with contextlib.suppress(OSError):
        tc.sock.close()


@dataclass(frozen=True)
class After:
    """What the server did after a completed (client-side) handshake."""

    #: alert | data | close-notify | eof | reset | tls-error | silent
    kind: str
    detail: str
    alert: str | None = None
    #: True when it happened before we sent our request (server-first).
    before_request: bool = False


def after_handshake(
    tc: TLSConnection,
    hs: Handshake,
    payload: bytes,
    endpoint: Endpoint,
    wait: float,
    timeout: float,
) -> After:
    """Read first for ``wait`` seconds (TLS 1.3 servers reject a client certificate
    after the client's Finished), then send ``payload`` and read the answer."""
    netio.set_io_timeout(tc.sock, wait)
    first = _read(tc, hs, endpoint)
    if first is not None:
        return After(first.kind, first.detail, first.alert, before_request=True)
    netio.set_io_timeout(tc.sock, timeout)
    try:
        tc.conn.sendall(payload)
    except SSL.WantWriteError:
        return After("silent", f"sending over TLS to {endpoint} timed out")
    except SSL.Error as exc:
        return _classify(exc, hs, endpoint)
    answer = _read(tc, hs, endpoint)
    if answer is None:
        return After("silent", f"no answer over TLS from {endpoint} within {timeout:g}s")
    return answer


def _read(tc: TLSConnection, hs: Handshake, endpoint: Endpoint) -> After | None:
    try:
        data = tc.conn.recv(4096)
    except SSL.WantReadError:
        return None
    except SSL.Error as exc:
        return _classify(exc, hs, endpoint)
    if not data:
        return After("eof", f"{endpoint} closed the connection (TCP FIN, no close_notify)")
    first = data.split(b"\r\n", 1)[0].decode("latin-1")[:80]
    return After("data", f"answered over TLS: {first!r}")


def _classify(exc: SSL.Error, hs: Handshake, endpoint: Endpoint) -> After:
    alert = hs.server_alert
    if alert is not None:
        return After("alert", f"TLS alert from {endpoint}: {alert}", alert)
    if isinstance(exc, SSL.ZeroReturnError):
        return After("close-notify", f"{endpoint} closed the TLS session (close_notify)")
    if isinstance(exc, SSL.SysCallError):
        code = exc.args[0] if exc.args else None
        if code in (errno.ECONNRESET, errno.EPIPE):
            return After("reset", f"{endpoint} reset the connection (TCP RST, no TLS alert)")
        return After("eof", f"{endpoint} closed the connection (TCP FIN, no close_notify)")
    return After("tls-error", f"{endpoint}: {_describe(exc)}")
