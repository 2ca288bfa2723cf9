"""One tcp round trip through the probe's sidecar (``mesh`` on tcp ports): our bytes
out, what came back. In a pod the sidecar captures the connection; in the lab an HTTP
CONNECT tunnel through ``sidecarProxy`` stands in for that capture."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from probe.checks.meshcall import (
    MAX_BODY,
    cluster_gate,
    one_line,
    require_sidecar,
    sidecar_reply,
)
from probe.errors import ProtocolViolation, ReadTimedOut, SidecarUnavailable

if TYPE_CHECKING:
    from probe.checks.base import RunContext
    from probe.model import Target

TCP_MESH_PAYLOAD = b"mtlsprobe mesh tcp "
_MAX_CONNECT_HEAD = 16 * 1024


@dataclass
class TcpMeshResponse:
    """A tcp round trip through the sidecar: what came back for our bytes."""

    sent: bytes
    reply: bytes = b""
    closed: bool = False  # reset or EOF right after our bytes, nothing back
    connect_status: int | None = None  # the sidecar's answer to CONNECT (lab proxy)
    sidecar_error: str | None = None
    sidecar_meaning: str | None = None

    @property
    def echoed(self) -> bool:
        return self.reply == self.sent


def tcp_call(ctx: RunContext, target: Target) -> TcpMeshResponse:
    """Write bytes to the service through the sidecar and read what comes back."""
    with cluster_gate(ctx, target):
        return _tcp_call(ctx, target)


def _tcp_call(ctx: RunContext, target: Target) -> TcpMeshResponse:
    """In a pod the sidecar captures the connection transparently; with an explicit
    ``sidecarProxy`` (the lab) an HTTP CONNECT tunnel stands in for that capture."""
    import secrets

    from probe.errors import ObservationError, ResetAfterRequest
    from probe.model import Endpoint
    from probe.netio import connect, exchange

    require_sidecar(ctx)
    timeout = ctx.settings.timeout
    out = TcpMeshResponse(sent=TCP_MESH_PAYLOAD + secrets.token_hex(8).encode() + b"\n")
    dest = Endpoint(target.host, target.port)
    proxy = ctx.targets.source.sidecar_proxy
    early = b""
    if proxy is not None:
        try:
            sock = connect(Endpoint.parse(proxy.split("://", 1)[-1].rstrip("/")), timeout)
        except ObservationError as exc:
            raise SidecarUnavailable(
                f"the probe's sidecar proxy {proxy} is unreachable ({exc.reason})"
            ) from None
        except ValueError:
            raise SidecarUnavailable(f"sidecarProxy {proxy!r} is not http://HOST:PORT") from None
    else:
        sock = connect(dest, timeout)
    try:
        if proxy is not None:
            status, server, early, body = _connect_tunnel(sock, f"{dest}", timeout)
            out.connect_status = status
            if status != 200:
                local = sidecar_reply(status, server, body.decode("utf-8", "replace"))
                out.sidecar_error, out.sidecar_meaning = local or (
                    one_line(body.decode("utf-8", "replace")) or f"HTTP {status}",
                    f"the sidecar refused the tunnel to {dest}",
                )
                return out
        try:
            out.reply = early + exchange(sock, out.sent, dest, timeout, want=len(out.sent))
        except ResetAfterRequest:
            if early:
                out.reply = early
            else:
                out.closed = True
        return out
    finally:
        sock.close()


def _connect_tunnel(
    sock: socket.socket, authority: str, timeout: float
) -> tuple[int, str | None, bytes, bytes]:
    """CONNECT through the lab's explicit proxy: (status, server, bytes after the head,
    response body when not 200)."""
    import time

    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in head:
        if len(head) > _MAX_CONNECT_HEAD or time.monotonic() > deadline:
            raise ProtocolViolation(
                f"the sidecar proxy sent no valid answer to CONNECT {authority}"
            )
        try:
            chunk = sock.recv(4096)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise ReadTimedOut(
                    f"the sidecar proxy did not answer CONNECT {authority} within {timeout:g}s"
                ) from None
            raise ProtocolViolation(
                f"the sidecar proxy broke the CONNECT to {authority} ({exc})"
            ) from None
        if not chunk:
            raise ProtocolViolation(f"the sidecar proxy closed the CONNECT to {authority}")
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ProtocolViolation(f"the sidecar proxy answered CONNECT with {lines[0][:80]!r}")
    status = int(parts[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if status == 200:
        return status, fields.get("server"), rest, b""
    length = fields.get("content-length", "")
    want = min(int(length), MAX_BODY) if length.isdigit() else 0
    body = rest
    while len(body) < want and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        body += chunk
    return status, fields.get("server"), b"", body[:want]
