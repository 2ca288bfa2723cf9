"""One HTTP call through the probe's sidecar and what came back, classified.

Shared by ``mesh`` and ``xfcc-spoof``. The sidecar's own error responses (503/502
with Envoy's ``upstream connect error … reset reason: …`` body) are told apart from
the application's answers, because they mean opposite things.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from probe.checks.common import http_client
from probe.errors import (
    ConnectTimedOut,
    DNSFailure,
    NothingListening,
    ProtocolViolation,
    ReadTimedOut,
    SidecarUnavailable,
)

if TYPE_CHECKING:
    from probe.checks.base import RunContext
    from probe.model import Target

ENVOY_MARKERS = (
    "upstream connect error",
    "no healthy upstream",
    "upstream request timeout",
    "no such service",
    "delayed connect error",
    "rbac: access denied",
)


@dataclass
class MeshResponse:
    status: int
    server: str | None
    body: bytes
    sidecar_error: str | None = None  # the sidecar's own words, when it answered itself
    echo: dict[str, Any] | None = None  # the echo responder's JSON, when it answered
    xfcc: list[str] = field(default_factory=list)  # XFCC values the app received


def call(
    ctx: RunContext, target: Target, extra_headers: dict[str, str] | None = None
) -> MeshResponse:
    import httpx

    via_proxy = ctx.targets.source.sidecar_proxy is not None
    client = http_client(ctx, via_sidecar=True)
    url = f"http://{target.host}:{target.port}/mtlsprobe"
    try:
        resp = client.get(url, headers=extra_headers or {})
    except httpx.ConnectTimeout:
        raise ConnectTimedOut(f"connect to {_route(ctx, target)} timed out") from None
    except httpx.ConnectError as exc:
        text = str(exc)
        if via_proxy:
            raise SidecarUnavailable(
                f"the probe's sidecar proxy {ctx.targets.source.sidecar_proxy} "
                f"is unreachable: {text}"
            ) from None
        if "Name or service not known" in text or "nodename nor servname" in text:
            raise DNSFailure(f"cannot resolve {target.host}") from None
        if "refused" in text.lower():
            raise NothingListening(f"connection refused by {target.host}:{target.port}") from None
        raise SidecarUnavailable(f"cannot connect to {target.host}:{target.port}: {text}") from None
    except httpx.TimeoutException:
        raise ReadTimedOut(
            f"no response from {_route(ctx, target)} within {ctx.settings.timeout:g}s"
        ) from None
    except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError) as exc:
        raise ProtocolViolation(
            f"connection to {_route(ctx, target)} broke without an HTTP response ({exc!s}); "
            "is the probe running behind a sidecar?"
        ) from None
    body = resp.content[:65536]
    server = resp.headers.get("server")
    out = MeshResponse(status=resp.status_code, server=server, body=body)
    text = body.decode("utf-8", "replace")
    if server and "envoy" in server.lower() and resp.status_code in (403, 502, 503, 504):
        low = text.lower()
        if any(m in low for m in ENVOY_MARKERS) or not text.strip():
            out.sidecar_error = f"HTTP {resp.status_code} from the sidecar: {text.strip()[:240]}"
            return out
    if resp.headers.get("content-type", "").startswith("application/json"):
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("headers"), dict):
            out.echo = doc
            raw = doc["headers"].get("x-forwarded-client-cert", [])
            if isinstance(raw, str):
                raw = [raw]
            out.xfcc = [str(v) for v in raw] if isinstance(raw, list) else []
    return out


def _route(ctx: RunContext, target: Target) -> str:
    proxy = ctx.targets.source.sidecar_proxy
    dest = f"{target.host}:{target.port}"
    return f"{dest} via {proxy}" if proxy else dest
