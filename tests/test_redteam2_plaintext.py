"""Red-team round 2 for the plaintext check: servers that reset at awkward moments.
The bytes a server sent before its RST are evidence of acceptance even when the RST
reaches us while we are still sending; a reset that came before our request was written
must not be reported as a reset "after the request". Real sockets on loopback."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from probe import netio
from probe.checks.plaintext import classify, decided
from probe.model import Endpoint
from probe.netio import Ending
from tests.tlsservers import serving

_LINGER0 = struct.pack("ii", 1, 0)
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@contextmanager
def _resetting(
    family: socket.AddressFamily, host: str, banner: bytes
) -> Iterator[tuple[Endpoint, threading.Event, threading.Event]]:
    """Accepts one connection, writes ``banner`` without reading anything, then RSTs
    (SO_LINGER 0). ``done`` is set once the RST went out, so the client's request is
    written only after it: deterministic, no timing."""
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.bind((host, 0))
    lsock.listen(1)
    done = threading.Event()
    connected = threading.Event()

    def run() -> None:
        conn, _ = lsock.accept()
        connected.wait(5)  # reset only once the client's connect returned
        if banner:
            conn.sendall(banner)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
        conn.close()
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield Endpoint(host=host, port=lsock.getsockname()[1]), connected, done
    finally:
        lsock.close()
        t.join(5)


def _families() -> list[tuple[socket.AddressFamily, str]]:
    out = [(socket.AF_INET, "127.0.0.1")]
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        out.append((socket.AF_INET6, "::1"))
    except OSError:
        pass
    return out


def _talk(endpoint: Endpoint, connected: threading.Event, done: threading.Event) -> netio.Reply:
    sock = netio.connect(endpoint, 2.0)
    connected.set()
    try:
        assert done.wait(5)
        return netio.converse(sock, REQUEST, endpoint, 2.0, decided=lambda d: decided(d, True))
    finally:
        sock.close()


@pytest.mark.parametrize(("family", "host"), _families())
def test_bytes_sent_before_a_reset_that_hits_our_send_are_kept(
    family: socket.AddressFamily, host: str
) -> None:
    # A server-first app (a banner, a partial status line) that then resets: the reset
    # reaches us while we write the request, but its bytes already sit in our receive
    # queue. Dropping them turns an accepting app into Envoy's "refused" signature.
    with _resetting(family, host, b"HTTP/1.1 2") as (endpoint, connected, done):
        reply = _talk(endpoint, connected, done)
    assert reply.data == b"HTTP/1.1 2"
    assert reply.ending is Ending.RESET
    obs = classify(reply, is_http=True)
    assert obs.observed == "accepted", obs


@pytest.mark.parametrize(("family", "host"), _families())
def test_reset_before_the_request_is_told_honestly(family: socket.AddressFamily, host: str) -> None:
    # RST right after accept, nothing read: no plaintext gets through (refused), but the
    # reason must not claim the reset answered our request.
    with _resetting(family, host, b"") as (endpoint, connected, done):
        reply = _talk(endpoint, connected, done)
    assert reply.data == b"" and reply.ending is Ending.RESET
    obs = classify(reply, is_http=True)
    assert obs.observed == "refused"
    assert "before the request" in obs.detail
    assert obs.evidence.get("reset_at") == "send"


def test_partial_status_line_then_reset_is_accepted() -> None:
    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 2")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)

    with serving(handle) as srv:
        sock = netio.connect(srv.endpoint, 2.0)
        try:
            reply = netio.converse(
                sock, REQUEST, srv.endpoint, 2.0, decided=lambda d: decided(d, True)
            )
        finally:
            sock.close()
    assert reply.data == b"HTTP/1.1 2"
    assert classify(reply, is_http=True).observed == "accepted"
