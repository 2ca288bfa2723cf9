"""probe.netio and probe.tls name every failure precisely, on real sockets."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from OpenSSL import SSL

from probe import netio, tls
from probe.errors import (
    ConnectTimedOut,
    DNSFailure,
    NothingListening,
    ReadTimedOut,
    ResetAfterRequest,
)
from probe.model import Endpoint
from probe.pki import CertificateAuthority
from tests.tlsservers import black_hole, nothing_listening, reset_after_read, serving


def test_refused_connect_is_nothing_listening() -> None:
    ep = nothing_listening()
    with pytest.raises(NothingListening, match=f"nothing listens on {ep}"):
        netio.connect(ep, 1.0)


def test_unresolvable_name_is_dns_failure() -> None:
    with pytest.raises(DNSFailure, match="cannot resolve"):
        netio.connect(Endpoint("no-such-host.invalid", 80), 1.0)


@contextlib.contextmanager
def full_backlog() -> Iterator[Endpoint]:
    """A listener that never accepts, its accept queue filled: Linux drops further
    SYNs, so the next connect times out (a black-holed address, locally)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    ep = Endpoint("127.0.0.1", lsock.getsockname()[1])
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect((ep.host, ep.port))
            fillers.append(s)
        time.sleep(0.05)
        yield ep
    finally:
        for s in fillers:
            s.close()
        lsock.close()


def test_dropped_syn_is_connect_timeout() -> None:
    with full_backlog() as ep:
        t0 = time.monotonic()
        with pytest.raises(ConnectTimedOut, match=r"timed out after 0\.3s"):
            netio.connect(ep, 0.3)
    assert time.monotonic() - t0 < 2


def test_connected_socket_stays_blocking() -> None:
    with serving(black_hole) as srv:
        sock = netio.connect(srv.endpoint, 1.0)
        try:
            assert sock.gettimeout() is None  # pyOpenSSL needs it blocking
        finally:
            sock.close()


def test_silence_after_request_is_read_timeout() -> None:
    with serving(black_hole) as srv:
        sock = netio.connect(srv.endpoint, 0.3)
        try:
            t0 = time.monotonic()
            with pytest.raises(ReadTimedOut, match="silence is not proof"):
                netio.exchange(sock, b"hello", srv.endpoint, 0.3)
            assert time.monotonic() - t0 < 1.5
        finally:
            sock.close()


def test_reset_and_eof_after_request() -> None:
    with serving(reset_after_read) as srv:
        sock = netio.connect(srv.endpoint, 1.0)
        try:
            with pytest.raises(ResetAfterRequest, match="reset"):
                netio.exchange(sock, b"GET / HTTP/1.1\r\n\r\n", srv.endpoint, 1.0)
        finally:
            sock.close()

    def close_after_read(conn: socket.socket) -> None:
        conn.recv(100)

    with serving(close_after_read) as srv:
        sock = netio.connect(srv.endpoint, 1.0)
        try:
            with pytest.raises(ResetAfterRequest, match="closed the connection"):
                netio.exchange(sock, b"x", srv.endpoint, 1.0)
        finally:
            sock.close()


def test_partial_answer_then_close_is_returned() -> None:
    def short(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"HTT")

    with serving(short) as srv:
        sock = netio.connect(srv.endpoint, 1.0)
        try:
            assert netio.exchange(sock, b"x", srv.endpoint, 1.0, want=12) == b"HTT"
        finally:
            sock.close()


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("[('SSL routines', '', 'tlsv13 alert certificate required')]", "certificate required"),
        ("[('SSL routines', '', 'tlsv1 alert unknown ca')]", "unknown ca"),
        ("[('SSL routines', '', 'sslv3 alert bad certificate')]", "bad certificate"),
        ("[('SSL routines', '', 'sslv3 alert handshake failure')]", "handshake failure"),
        ("[('SSL routines', '', 'wrong version number')]", None),
    ],
)
def test_alert_names(text: str, name: str | None) -> None:
    assert tls.alert_name(SSL.Error(text)) == name


def test_tls_to_a_plaintext_port_is_a_recorded_failure() -> None:
    def http(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    with serving(http) as srv:
        conn, hs = tls.connect_tls(srv.endpoint, tls.client_context(tls.HTTP_ALPNS), 1.0)
        tls.close(conn)
    assert hs.failure is not None and hs.failure.startswith("TLS error"), hs.failure
    assert hs.chain == []


def test_tls_handshake_to_a_silent_server_times_out() -> None:
    with serving(black_hole) as srv:
        t0 = time.monotonic()
        with pytest.raises(ReadTimedOut, match="stalled"):
            tls.connect_tls(srv.endpoint, tls.client_context(tls.HTTP_ALPNS), 0.3)
    assert time.monotonic() - t0 < 1.5


def test_server_that_speaks_first_over_tls_is_seen_as_such(tmp_path: Path) -> None:
    """after_handshake reads first; data arriving unasked is not a rejection."""
    ca = CertificateAuthority.create_root("cluster.local", key_type="ec")
    issued = ca.issue_workload("spiffe://cluster.local/ns/a/sa/b", key_type="ec")
    (tmp_path / "c.pem").write_bytes(issued.chain_pem())
    (tmp_path / "k.pem").write_bytes(issued.key_pem())
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")

    def banner(conn: socket.socket) -> None:
        with sctx.wrap_socket(conn, server_side=True) as t:
            t.sendall(b"220 hello\r\n")
            time.sleep(0.5)

    with serving(banner) as srv:
        conn, hs = tls.connect_tls(srv.endpoint, tls.client_context(tls.TCP_ALPNS), 1.0)
        try:
            assert hs.failure is None
            after = tls.after_handshake(conn, hs, b"x", srv.endpoint, 1.0, 1.0)
            assert after.kind == "data" and after.before_request, after
        finally:
            tls.close(conn)


def test_unencodable_server_name_is_not_sent() -> None:
    assert tls._sni_bytes("outbound_.8080_._.echo.ns-a.svc.cluster.local") is not None
    assert tls._sni_bytes("x" * 70 + ".example") == b"x" * 70 + b".example"
    assert tls._sni_bytes("b\u00fccher." + "\u00fc" * 70) is None
    assert tls._sni_bytes(None) is None


def test_dripping_server_is_bounded_by_one_timeout() -> None:
    def drip(conn: socket.socket) -> None:
        conn.recv(100)
        for b in b"HTTP/1.1 200 OK\r\n":
            conn.sendall(bytes([b]))
            time.sleep(0.15)

    with serving(drip) as srv:
        sock = netio.connect(srv.endpoint, 0.5)
        try:
            t0 = time.monotonic()
            data = netio.exchange(sock, b"x", srv.endpoint, 0.5, want=12)
            assert time.monotonic() - t0 < 0.9
            assert data.startswith(b"H")
        finally:
            sock.close()


def test_tiny_timeout_never_becomes_infinite() -> None:
    with serving(black_hole) as srv:
        sock = netio.connect(srv.endpoint, 1.0)
        try:
            netio.set_io_timeout(sock, 1e-9)
            t0 = time.monotonic()
            with pytest.raises(OSError):
                sock.recv(1)
            assert time.monotonic() - t0 < 0.5
        finally:
            sock.close()


def test_dripping_tls_handshake_is_bounded_by_one_timeout() -> None:
    def drip(conn: socket.socket) -> None:
        conn.recv(4096)  # the ClientHello
        conn.sendall(b"\x16\x03\x03\x00\x40")  # a handshake record of 64 bytes...
        for _ in range(64):  # ...one byte at a time, each well inside the timeout
            time.sleep(0.1)
            conn.sendall(b"\x00")

    with serving(drip) as srv:
        t0 = time.monotonic()
        with pytest.raises(ReadTimedOut, match="stalled"):
            tls.connect_tls(srv.endpoint, tls.client_context(tls.HTTP_ALPNS), 0.5)
    assert time.monotonic() - t0 < 1.0
