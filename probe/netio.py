"""Plain TCP I/O that names every failure with the probe.errors hierarchy.

Blocking sockets with SO_RCVTIMEO/SO_SNDTIMEO rather than Python socket timeouts:
pyOpenSSL needs a blocking socket underneath (a Python timeout makes it
non-blocking and surfaces WantReadError), and the same helpers serve both.
"""

from __future__ import annotations

import errno
import socket
import struct
import time

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
    set_io_timeout(sock, timeout)
    return sock


def exchange(
    sock: socket.socket, payload: bytes, endpoint: Endpoint, timeout: float, want: int = 1
) -> bytes:
    """Send ``payload`` then read until ``want`` bytes arrived or the peer closes.

    Returns what arrived (possibly fewer bytes if the peer closed after sending some).
    Raises ResetAfterRequest when the peer reset or closed without sending anything
    after our bytes went out — the observation STRICT requires — and ReadTimedOut
    when it stayed silent (inconclusive)."""
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
