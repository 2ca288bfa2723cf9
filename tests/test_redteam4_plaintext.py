"""Red-team round 4 for ``plaintext``: servers that answer in ways a stream read misses,
or close half-way. Real sockets on loopback; each server finishes its writes before it
resets, so the order on the wire is fixed (no timing)."""

from __future__ import annotations

import socket
import struct

import pytest

from probe.checks.plaintext import PlaintextCheck
from probe.model import Expect
from probe.results import Verdict
from tests.runone import run_one
from tests.tlsservers import read_request, serving


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _urgent_answer_then_reset(conn: socket.socket) -> None:
    """Liar: reads the plaintext request, answers it as TCP urgent (out-of-band) data,
    then resets. Without SO_OOBINLINE Linux keeps the urgent byte out of the stream,
    the probe saw "no data, then RST" and passed STRICT (before round 4)."""
    conn.settimeout(5)
    if read_request(conn):
        conn.send(b"!", socket.MSG_OOB)
    _reset(conn)


def test_an_answer_sent_as_urgent_data_is_plaintext_accepted() -> None:
    with serving(_urgent_answer_then_reset) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT)
    assert r.verdict is Verdict.FAIL, r
    assert "accepted plaintext" in r.reason, r


def _half_close_then_reset(conn: socket.socket) -> None:
    """Half-open: shuts its sending side at once (FIN), reads our request, then resets."""
    conn.settimeout(5)
    conn.shutdown(socket.SHUT_WR)
    read_request(conn)
    _reset(conn)


def _half_close_and_keep_reading(conn: socket.socket) -> None:
    """Half-open: FIN at once, then keeps reading (never resets)."""
    conn.settimeout(5)
    conn.shutdown(socket.SHUT_WR)
    read_request(conn)
    conn.recv(1)  # returns when the probe closes


@pytest.mark.parametrize("server", [_half_close_then_reset, _half_close_and_keep_reading])
def test_half_closed_servers_are_not_a_refusal(server: object) -> None:
    """A FIN came first: whatever follows, the server closed politely, which is what
    plaintext apps do with bytes they cannot parse, not Envoy's reset."""
    with serving(server) as srv:  # type: ignore[arg-type]
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT)
    assert r.verdict is Verdict.ERROR and "FIN" in r.reason, r
