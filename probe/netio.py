"""Plain TCP I/O that names every failure with the probe.errors hierarchy.

Blocking sockets with SO_RCVTIMEO/SO_SNDTIMEO rather than Python socket timeouts:
pyOpenSSL needs a blocking socket underneath (a Python timeout makes it
non-blocking and surfaces WantReadError), and the same helpers serve both.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from probe.errors import (
    ConnectTimedOut,
    DNSFailure,
    NetworkUnreachable,
    NothingListening,
    ReadTimedOut,
    ResetAfterRequest,
)
from probe.model import Endpoint

_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}
_RESET = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}
_TIMEOUT = {errno.EAGAIN, errno.EWOULDBLOCK}
#: Most bytes ``converse`` keeps: enough to judge an answer, bounded against a firehose.
REPLY_LIMIT = 64 * 1024


def _timeval(seconds: float) -> bytes:
    # A zero timeval means "no timeout at all": never let a tiny remainder become that.
    seconds = max(seconds, 0.001)
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


def set_io_timeout(sock: socket.socket, seconds: float) -> None:
    """Bound every blocking read/write on ``sock`` without making it non-blocking."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(seconds))


def connect(endpoint: Endpoint, timeout: float) -> socket.socket:
    """Open a TCP connection; the returned socket is blocking with I/O timeouts set."""
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DNSFailure(f"cannot resolve {endpoint.host}: {exc.strerror}") from None
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.settimeout(timeout)
        sock.connect(addr)
    except TimeoutError:
        sock.close()
        raise ConnectTimedOut(
            f"TCP connect to {endpoint} timed out after {timeout:g}s (black hole or filtered)"
        ) from None
    except ConnectionRefusedError:
        sock.close()
        raise NothingListening(
            f"connection refused at TCP: nothing listens on {endpoint} (not an mTLS refusal)"
        ) from None
    except OSError as exc:
        sock.close()
        if exc.errno in _UNREACHABLE:
            raise NetworkUnreachable(f"cannot reach {endpoint}: {exc.strerror}") from None
        raise NetworkUnreachable(
            f"TCP connect to {endpoint} failed: {exc.strerror or exc}"
        ) from None
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # TCP urgent data is bytes the server sent too: without this Linux takes it out of
    # the stream, and an answer sent as urgent data then a reset read as a bare reset.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    set_io_timeout(sock, timeout)
    return sock


def exchange(
    sock: socket.socket, payload: bytes, endpoint: Endpoint, timeout: float, want: int = 1
) -> bytes:
    """Send ``payload`` then read until ``want`` bytes arrived or the peer closes.

    Returns what arrived (possibly fewer bytes if the peer closed after sending some).
    Raises ResetAfterRequest when the peer reset or closed without sending anything
    after our bytes went out, and ReadTimedOut when it stayed silent (inconclusive).
    A reset and a close are one outcome here: a check that must tell them apart (the
    plaintext check) uses ``converse``."""
    try:
        sock.sendall(payload)
    except OSError as exc:
        if exc.errno in _RESET:
            raise ResetAfterRequest(
                f"connection reset while sending the request to {endpoint}"
            ) from None
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise ReadTimedOut(f"sending to {endpoint} timed out after {timeout:g}s") from None
        raise
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < want:
        try:
            chunk = sock.recv(65536)
        except OSError as exc:
            if exc.errno in _RESET:
                if data:
                    return data
                raise ResetAfterRequest(
                    f"connection reset by {endpoint} after the request, no response"
                ) from None
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                if data:
                    return data
                raise ReadTimedOut(
                    f"no answer from {endpoint} within {timeout:g}s after the request "
                    "(silence is not proof of refusal)"
                ) from None
            raise
        if not chunk:
            if data:
                return data
            raise ResetAfterRequest(
                f"{endpoint} closed the connection after the request, no response"
            )
        data += chunk
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # A server dripping bytes must not stretch the read past one timeout in all.
        set_io_timeout(sock, remaining)
    return data


class Ending(StrEnum):
    """How the peer left the connection after our bytes went out."""

    RESET = "reset"  # TCP RST (ECONNRESET / EPIPE): what Envoy does with unmatched bytes
    CLOSED = "closed"  # FIN, an orderly close: what plaintext apps do with input they reject
    OPEN = "open"  # still open when we stopped reading (the bytes decided, limit, deadline)


@dataclass(frozen=True)
class Reply:
    """What came back after a request, and how the connection ended."""

    data: bytes
    ending: Ending
    #: Seconds from sending the request to the ending (or to the last read when OPEN).
    elapsed: float
    #: The reset hit us while we were still writing the request: it was not an answer to it.
    reset_at_send: bool = False


def _drain_queued(sock: socket.socket, limit: int) -> bytes:
    """What already sits in the receive queue, without waiting (after a reset, Linux
    still hands out the bytes that arrived before it)."""
    data = b""
    with contextlib.suppress(OSError):
        while len(data) < limit:
            chunk = sock.recv(min(65536, limit - len(data)), socket.MSG_DONTWAIT)
            if not chunk:
                break
            data += chunk
    return data


def converse(
    sock: socket.socket,
    payload: bytes,
    endpoint: Endpoint,
    timeout: float,
    *,
    decided: Callable[[bytes], bool],
    limit: int = REPLY_LIMIT,
) -> Reply:
    """Send ``payload``, then read until the peer resets or closes, ``decided(data)``
    says the bytes so far settle the question, ``limit`` bytes arrived, or one
    ``timeout`` in all passed. Unlike ``exchange`` it keeps a reset apart from a
    close, which is the difference between an enforcing proxy and an app.

    Raises ReadTimedOut when nothing came back and the connection stayed open."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    try:
        sock.sendall(payload)
    except OSError as exc:
        if exc.errno in _RESET:
            # Bytes the server wrote before its reset are already queued here; they are
            # its answer (a banner: plaintext accepted) and must not be dropped.
            early = _drain_queued(sock, limit)
            return Reply(early, Ending.RESET, time.monotonic() - t0, reset_at_send=True)
        if exc.errno in _TIMEOUT:
            raise ReadTimedOut(f"sending to {endpoint} timed out after {timeout:g}s") from None
        raise
    data = b""
    while True:
        if data and (len(data) >= limit or decided(data)):
            return Reply(data, Ending.OPEN, time.monotonic() - t0)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # A server dripping bytes must not stretch the read past one timeout in all.
        set_io_timeout(sock, remaining)
        try:
            chunk = sock.recv(min(65536, limit - len(data)))
        except OSError as exc:
            if exc.errno in _RESET:
                return Reply(data, Ending.RESET, time.monotonic() - t0)
            if exc.errno in _TIMEOUT:
                break
            raise
        if not chunk:
            return Reply(data, Ending.CLOSED, time.monotonic() - t0)
        data += chunk
    if data:
        return Reply(data, Ending.OPEN, time.monotonic() - t0)
    raise ReadTimedOut(
        f"no answer from {endpoint} within {timeout:g}s after the request "
        "(silence is not proof of refusal)"
    )
