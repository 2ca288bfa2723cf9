"""One HTTP call through the probe's sidecar and what came back, classified.

Shared by ``mesh`` and ``xfcc-spoof``. The sidecar's own answers (Envoy's local
replies: ``upstream connect error … reset reason: …``, ``no healthy upstream``,
``RBAC: access denied``) are told apart from the application's, because they mean
opposite things: the call never reached the app.

Also what every call through the sidecar shares (``meshtcp`` too): that a sidecar is
there at all, one call per outbound cluster at a time, and the sidecar's counters read
around a call (``witnessed``). The probe's own certificates: ``owncerts``.
"""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from probe.checks.common import http_client
from probe.clusterstats import (
    ENABLE_HINT,
    Counters,
    Transport,
    TransportSeen,
    cluster_name,
    judge_transport,
    parse_counters,
    stats_params,
)
from probe.constants import ENVOY_ADMIN
from probe.errors import (
    ConnectTimedOut,
    DNSFailure,
    NothingListening,
    ProtocolViolation,
    ReadTimedOut,
    SidecarUnavailable,
)
from probe.model import DEFAULT_ECHO_PATH
from probe.reflect import MARKER_HEADER, Reflection, parse_reflection

if TYPE_CHECKING:
    from probe.checks.base import RunContext
    from probe.model import Target

MAX_BODY = 256 * 1024
R = TypeVar("R")

# Envoy local-reply bodies, and what each means for the caller.
_LOCAL_REPLIES: tuple[tuple[str, str], ...] = (
    (
        "certificate_verify_failed",
        "the client sidecar rejected the server's certificate (SPIFFE ID/SAN not the "
        "expected service account, expired, or not from the mesh CA)",
    ),
    (
        "connection termination",
        "the server closed the connection: it refused what the client sidecar sent "
        "(plaintext to an mTLS-only port, or the client certificate)",
    ),
    (
        "remote connection failure",
        "the TLS connection to the server failed (handshake or certificate verification)",
    ),
    ("connection refused", "nothing listens behind the server's address"),
    ("delayed connect error", "the sidecar could not connect to the server"),
    ("no healthy upstream", "the sidecar knows no ready endpoint for this service"),
    ("no such service", "the sidecar does not know this host"),
    ("upstream request timeout", "the server did not answer in time"),
    ("rbac: access denied", "an AuthorizationPolicy denied the probe"),
    ("upstream connect error", "the sidecar could not reach the server"),
)
_SIDECAR_STATUSES = frozenset({403, 502, 503, 504})


@dataclass
class MeshResponse:
    status: int
    server: str | None
    body: bytes
    sidecar_error: str | None = None  # the sidecar's own words, when it answered itself
    sidecar_meaning: str | None = None  # what those words mean, for the reason
    reflection: Reflection | None = None  # the request as a header-reflecting app saw it
    marker: str = ""  # sent in MARKER_HEADER; a reflection of this request shows it

    @property
    def reflected(self) -> bool:
        """The body reflects this very request (our marker came back)."""
        return self.reflection is not None and self.marker in self.reflection.values(MARKER_HEADER)

    @property
    def xfcc(self) -> list[str]:
        """XFCC values the app received (every spelling of the name, in order)."""
        return self.reflection.xfcc if self.reflection is not None else []

    @property
    def denied(self) -> bool:
        """An AuthorizationPolicy answered, not the mTLS layer."""
        return (
            self.sidecar_error is not None and "rbac: access denied" in self.sidecar_error.lower()
        )

    @property
    def timed_out(self) -> bool:
        return self.status == 504 and self.sidecar_error is not None


def sidecar_reply(status: int, server: str | None, text: str) -> tuple[str, str] | None:
    """(the sidecar's words, their meaning) when Envoy itself answered, else None.

    Envoy's body is decisive on its own; an empty 502/503/504 counts as the sidecar's
    only when the response says it came from Envoy (through a sidecar every response
    carries ``server: istio-envoy``, but apps do not answer 503 with no body)."""
    if status not in _SIDECAR_STATUSES:
        return None
    low = text.lower()
    for marker, meaning in _LOCAL_REPLIES:
        if marker in low:
            return one_line(text), meaning
    from_envoy = server is not None and "envoy" in server.lower()
    if from_envoy and not text.strip() and status != 403:
        return f"HTTP {status} with an empty body", "the sidecar could not reach the server"
    return None


def one_line(text: str) -> str:
    """``text`` on one line, at most 300 characters: for a reason."""
    flat = " ".join(text.split())
    return flat[:300] + ("…" if len(flat) > 300 else "")


def require_sidecar(ctx: RunContext) -> None:
    """Without ``sidecarProxy`` the call relies on a sidecar capturing it; without one,
    a direct call proves nothing about the mesh. Checked once per run through the
    sidecar's Envoy admin ``/ready``."""
    if ctx.targets.source.sidecar_proxy is not None:
        return
    # The look-up runs under its own lock: ctx.shared's lock must not be held over I/O.
    presence = ctx.shared("sidecar-presence", _Presence)
    with presence.lock:
        if presence.problem is None:
            presence.problem = _sidecar_problem(ctx)
    if presence.problem:
        raise SidecarUnavailable(presence.problem)


class _Presence:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.problem: str | None = None


def _sidecar_problem(ctx: RunContext) -> str:
    import httpx

    admin = (ctx.targets.source.sidecar_admin or ENVOY_ADMIN).rstrip("/")
    try:
        status = http_client(ctx, via_sidecar=False).get(admin + "/ready").status_code
    except httpx.HTTPError as exc:
        return (
            f"no sidecar: no sidecarProxy is given and no Envoy admin answers at {admin} "
            f"({type(exc).__name__}); mesh checks must run in a pod with a sidecar"
        )
    if status != 200:
        return f"the probe's sidecar is not ready: {admin}/ready answered HTTP {status}"
    return ""


def call(
    ctx: RunContext, target: Target, extra_headers: dict[str, str] | None = None
) -> MeshResponse:
    """GET the target's echo path through the sidecar, with our marker header."""
    with cluster_gate(ctx, target):
        return _call(ctx, target, extra_headers)


def _call(ctx: RunContext, target: Target, extra_headers: dict[str, str] | None) -> MeshResponse:
    import httpx

    require_sidecar(ctx)
    client = http_client(ctx, via_sidecar=True)
    url = f"http://{target.host}:{target.port}{target.echo_path or DEFAULT_ECHO_PATH}"
    marker = secrets.token_hex(8)
    headers = {**(extra_headers or {}), MARKER_HEADER: marker}
    try:
        with client.stream("GET", url, headers=headers) as resp:
            body = b""
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY:
                    break
            status, resp_headers = resp.status_code, resp.headers
    except httpx.ConnectTimeout:
        raise ConnectTimedOut(f"connect to {_route(ctx, target)} timed out") from None
    except httpx.ConnectError as exc:
        raise _connect_error(ctx, target, exc) from None
    except httpx.TimeoutException:
        raise ReadTimedOut(
            f"no response from {_route(ctx, target)} within {ctx.settings.timeout:g}s"
        ) from None
    except httpx.TransportError as exc:
        raise ProtocolViolation(
            f"the connection to {_route(ctx, target)} broke without an HTTP response "
            f"({type(exc).__name__}: {exc!s}); is the probe running behind a sidecar?"
        ) from None
    server = resp_headers.get("server")
    out = MeshResponse(status=status, server=server, body=body[:MAX_BODY], marker=marker)
    text = out.body.decode("utf-8", "replace")
    local = sidecar_reply(status, server, text)
    if local is not None:
        out.sidecar_error, out.sidecar_meaning = local
        return out
    if len(body) <= MAX_BODY:
        # A body cut at the cap is not the app's reflection: its tail (the last XFCC
        # element, a forged one) may be exactly what was cut.
        out.reflection = parse_reflection(out.body)
    return out


class _ClusterLock:
    """Calls from this run to one outbound cluster, one at a time: the sidecar's
    counters around a witnessed call must count that call alone. Re-entrant: a
    witnessed call holds it around the call that takes it again."""

    def __init__(self) -> None:
        self.lock = threading.RLock()


def cluster_gate(ctx: RunContext, target: Target) -> threading.RLock:
    cluster = cluster_name(target.host, target.port)
    return ctx.shared(f"cluster-lock:{cluster}", _ClusterLock).lock


def witnessed(
    ctx: RunContext, target: Target, tcp: bool, do: Callable[[], R]
) -> tuple[R, TransportSeen]:
    """Run ``do`` (one call to ``target`` through the sidecar) between two readings of
    the sidecar's counters for the target's outbound cluster, and judge them (see
    probe.clusterstats). Calls to one cluster are serialised so the delta is ours."""
    cluster = cluster_name(target.host, target.port)
    with cluster_gate(ctx, target):
        before, why = _read_counters(ctx, cluster)
        result = do()
        if before is None:
            return result, TransportSeen(Transport.UNKNOWN, why, {"cluster": cluster})
        after, why = _read_counters(ctx, cluster)
    if after is None:
        return result, TransportSeen(Transport.UNKNOWN, why, {"cluster": cluster})
    return result, judge_transport(cluster, before, after, tcp)


def _read_counters(ctx: RunContext, cluster: str) -> tuple[Counters | None, str]:
    import httpx

    admin = (ctx.targets.source.sidecar_admin or ENVOY_ADMIN).rstrip("/")
    try:
        resp = http_client(ctx, via_sidecar=False).get(
            admin + "/stats", params=stats_params(cluster)
        )
        doc = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        return None, f"the probe's sidecar admin {admin} gave no stats ({type(exc).__name__})"
    counters = parse_counters(doc, cluster)
    if counters is None:
        return None, (
            f"the probe's sidecar records no TLS/connection stats for {cluster} "
            f"({admin}/stats; {ENABLE_HINT})"
        )
    return counters, ""


def _connect_error(ctx: RunContext, target: Target, exc: Exception) -> Exception:
    proxy = ctx.targets.source.sidecar_proxy
    if proxy is not None:
        return SidecarUnavailable(
            f"the probe's sidecar proxy {proxy} is unreachable ({exc}): is the sidecar running?"
        )
    if _caused_by(exc, socket.gaierror):
        return DNSFailure(f"cannot resolve {target.host}")
    if _caused_by(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
        return NothingListening(
            f"connection refused by {target.host}:{target.port} (in a pod the sidecar "
            "captures this call: is it running?)"
        )
    return SidecarUnavailable(f"cannot connect to {target.host}:{target.port}: {exc}")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _route(ctx: RunContext, target: Target) -> str:
    proxy = ctx.targets.source.sidecar_proxy
    dest = f"{target.host}:{target.port}"
    return f"{dest} via {proxy}" if proxy else dest
