"""The plaintext check's wire signatures (rule: only the enforcing proxy's signature
is a refusal), against servers built to lie to it, plus ``netio.converse``."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe import netio
from probe.checks.plaintext import PROMPT_RESET_S, PlaintextCheck, classify
from probe.errors import ReadTimedOut
from probe.model import Expect, Protocol
from probe.netio import Ending, Reply
from probe.results import Verdict
from tests.runone import run_one
from tests.tlsservers import HTTP_OK, black_hole, reset_after_read, serving


def _converse(handler: object, timeout: float = 1.0, limit: int = netio.REPLY_LIMIT) -> netio.Reply:
    with serving(handler) as srv:  # type: ignore[arg-type]
        sock = netio.connect(srv.endpoint, timeout)
        try:
            return netio.converse(
                sock,
                b"GET / HTTP/1.1\r\n\r\n",
                srv.endpoint,
                timeout,
                decided=lambda d: False,
                limit=limit,
            )
        finally:
            sock.close()


def test_converse_tells_a_reset_from_a_close() -> None:
    reset = _converse(reset_after_read)
    assert reset.data == b"" and reset.ending is netio.Ending.RESET
    assert reset.elapsed < 0.5

    def fin(conn: socket.socket) -> None:
        conn.recv(100)

    closed = _converse(fin)
    assert closed.data == b"" and closed.ending is netio.Ending.CLOSED


def test_converse_keeps_bytes_that_came_before_the_end() -> None:
    def answer_then_reset(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        time.sleep(0.05)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    got = _converse(answer_then_reset)
    assert got.data.startswith(b"HTTP/1.1 200") and got.ending is netio.Ending.RESET


def test_converse_silence_is_a_timeout_and_a_firehose_is_bounded() -> None:
    with pytest.raises(ReadTimedOut, match="silence is not proof"):
        _converse(black_hole, timeout=0.3)

    def firehose(conn: socket.socket) -> None:
        conn.recv(100)
        with contextlib.suppress(OSError):
            while True:
                conn.sendall(b"x" * 65536)

    got = _converse(firehose, limit=1000)
    assert len(got.data) == 1000 and got.ending is netio.Ending.OPEN


# --- plaintext liars: servers built to make the plaintext check say "refused" --------


def _fin_without_data(conn: socket.socket) -> None:
    """PostgreSQL/Kafka/Thrift on bytes they cannot parse: read, then an orderly close."""
    conn.settimeout(5)
    conn.recv(4096)


def _sends_then_closes(payload: bytes, *, delay: float = 0.0) -> Any:
    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.recv(4096)
        if delay:
            time.sleep(delay)
        conn.sendall(payload)

    return handle


def _sends_then_resets(payload: bytes) -> Any:
    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.recv(4096)
        conn.sendall(payload)
        time.sleep(0.05)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return handle


def _sends_then_holds(payload: bytes) -> Any:
    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.recv(4096)
        conn.sendall(payload)
        time.sleep(3)

    return handle


def _late_reset(conn: socket.socket) -> None:
    conn.settimeout(5)
    conn.recv(4096)
    time.sleep(PROMPT_RESET_S + 0.3)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


ALERT = b"\x15\x03\x03\x00\x02\x02\x46"  # fatal protocol_version

LIARS: dict[str, tuple[Any, str]] = {
    "fin-without-data": (_fin_without_data, "closed without answer"),
    "half-alert": (_sends_then_closes(ALERT[:6]), "start like a TLS alert"),
    "one-byte-0x15": (_sends_then_closes(b"\x15"), "start like a TLS alert"),
    "alert-plus-extra": (_sends_then_closes(ALERT + b"\x00"), "start like a TLS alert"),
    "two-alerts": (_sends_then_closes(ALERT + ALERT), "start like a TLS alert"),
    "alert-then-http": (
        _sends_then_closes(b"\x15\x03HTTP/1.1 200 OK\r\n\r\n"),
        "start like a TLS alert",
    ),
    "wrong-length": (_sends_then_closes(b"\x15\x03\x03\x00\x03\x02\x46"), "start like"),
    "level-3": (_sends_then_closes(b"\x15\x03\x03\x00\x02\x03\x46"), "start like"),
    "version-3.9": (_sends_then_closes(b"\x15\x03\x09\x00\x02\x02\x46"), "start like"),
    "alert-held-open": (_sends_then_holds(ALERT), "kept the connection open"),
    "late-reset": (_late_reset, "not the enforcing proxy's immediate reset"),
    "silent-hold": (black_hole, "silence is not proof"),
}


@pytest.mark.parametrize("protocol", [Protocol.HTTP, Protocol.TCP])
@pytest.mark.parametrize("kind", sorted(LIARS))
def test_plaintext_liars_never_pass_as_refusals(kind: str, protocol: Protocol) -> None:
    handler, needle = LIARS[kind]
    # The late reset must arrive inside the timeout (a loaded machine only delays it);
    # the others end by themselves or are held past any timeout.
    timeout = 5.0 if kind == "late-reset" else 1.0
    with serving(handler) as srv:
        r = run_one(
            PlaintextCheck(), srv.endpoint, Expect.STRICT, protocol=protocol, timeout=timeout
        )
    assert r.verdict is Verdict.ERROR, r
    assert needle in r.reason, r.reason
    assert r.observed not in ("refused", "accepted"), r


@pytest.mark.parametrize(
    ("kind", "handler"),
    [
        ("200-after-delay", _sends_then_closes(HTTP_OK, delay=0.4)),
        ("rst-after-response", _sends_then_resets(HTTP_OK)),
        ("response-held-open", _sends_then_holds(HTTP_OK)),
    ],
)
def test_answers_are_acceptance_however_the_connection_ends(kind: str, handler: Any) -> None:
    with serving(handler) as srv:
        strict = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT)
        none = run_one(PlaintextCheck(), srv.endpoint, Expect.NONE)
    assert strict.verdict is Verdict.FAIL and strict.observed == "accepted", strict
    assert "HTTP/1.1 200 OK" in strict.reason, strict.reason
    assert none.verdict is Verdict.PASS, none


@pytest.mark.parametrize(
    ("record", "ending", "name"),
    [
        (ALERT, "close", "fatal protocol_version"),
        (b"\x15\x03\x01\x00\x02\x01\x00", "close", "warning close_notify"),
        (b"\x15\x03\x04\x00\x02\x02\xfe", "reset", "fatal alert 254"),
    ],
)
def test_exact_alert_record_then_end_is_a_refusal(record: bytes, ending: str, name: str) -> None:
    handler = _sends_then_closes(record) if ending == "close" else _sends_then_resets(record)
    with serving(handler) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT)
    assert r.verdict is Verdict.PASS and r.observed == "refused", r
    assert r.evidence["alert"] == name, r.evidence


def test_prompt_reset_is_the_refusal_signature() -> None:
    with serving(reset_after_read) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT)
    assert r.verdict is Verdict.PASS and "TCP RST" in r.reason, r
    assert r.evidence == {"ending": "reset"}


def test_fin_without_data_is_not_a_refusal_for_any_expectation() -> None:
    """Neither a refusal (STRICT pass) nor a contradiction (PERMISSIVE fail)."""
    with serving(_fin_without_data) as srv:
        results = [run_one(PlaintextCheck(), srv.endpoint, e) for e in Expect]
    assert all(r.verdict is Verdict.ERROR for r in results), results
    assert all(r.evidence["error"] == "closed-without-answer" for r in results)


_ENDINGS = st.sampled_from(list(Ending))


@given(
    data=st.one_of(
        st.binary(max_size=24),
        st.builds(lambda tail: b"\x15\x03" + tail, st.binary(max_size=12)),
        st.builds(
            lambda v, lvl, d: bytes([0x15, 3, v, 0, 2, lvl, d]),
            st.integers(0, 255),
            st.integers(0, 255),
            st.integers(0, 255),
        ),
    ),
    ending=_ENDINGS,
    elapsed=st.floats(0, 10),
    is_http=st.booleans(),
)
def test_refused_only_on_the_two_signatures(
    data: bytes, ending: Ending, elapsed: float, is_http: bool
) -> None:
    obs = classify(Reply(data, ending, elapsed), is_http)
    if obs.observed != "refused":
        return
    prompt_reset = not data and ending is Ending.RESET and elapsed <= PROMPT_RESET_S
    one_alert = (
        len(data) == 7
        and data[:2] == b"\x15\x03"
        and data[2] <= 4
        and data[3:5] == b"\x00\x02"
        and data[5] in (1, 2)
        and ending is not Ending.OPEN
    )
    assert prompt_reset or one_alert, (data, ending, elapsed)
