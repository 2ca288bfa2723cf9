"""One target through the real engine, as the check tests drive it: ns-a/echo as a
targets file names it, run sidecar-less against an endpoint (plaintext, peer-cert,
foreign-client), through a sidecar (stand-in) in front of an HTTP app (mesh,
xfcc-spoof), or from any source the test builds."""

from __future__ import annotations

from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from probe.checks.base import Check, RunContext, Settings
from probe.engine import run_checks
from probe.model import Endpoint, Expect, Protocol, Source, Target, TargetsFile
from probe.results import Result
from tests.reflect_apps import serving
from tests.sidecar_standin import SidecarBehaviour, sidecar
from tests.tlsservers import MeshPKI

TD = "cluster.local"
SRC = f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe"
ECHO_ID = f"spiffe://{TD}/ns/ns-a/sa/echo"
_ECHO = Target(
    name="ns-a/echo",
    host="echo.ns-a.svc.cluster.local",
    port=8080,
    expect=Expect.STRICT,
    identity=ECHO_ID,
    echo=True,
)


def echo_target(**changes: Any) -> Target:
    """ns-a/echo on port 8080, STRICT, identity ``ECHO_ID``, an echo responder; with
    ``changes`` to any field."""
    return replace(_ECHO, **changes)


def run_target(
    check: object,
    target: Target,
    source: Source,
    *,
    root_cert_file: Path | None = None,
    timeout: float = 2.0,
) -> Result:
    """The one result of ``check`` on ``target`` probed from ``source``."""
    tf = TargetsFile(TD, (target,), source, root_cert_file=root_cert_file)
    ctx = RunContext(tf, Settings(timeout=timeout))
    try:
        (result,) = run_checks([check], ctx)  # type: ignore[list-item]
    finally:
        ctx.close()
    return result


def run_one(
    check: object,
    endpoint: Endpoint,
    expect: Expect,
    pki: MeshPKI | None = None,
    *,
    identity: str | None = ECHO_ID,
    protocol: Protocol = Protocol.HTTP,
    timeout: float = 2.0,
) -> Result:
    """``check`` against ns-a/echo served at ``endpoint``, no sidecar in the probe."""
    target = echo_target(expect=expect, endpoints=(endpoint,), identity=identity, protocol=protocol)
    root = pki.root_file if pki else None
    return run_target(check, target, Source(identity=SRC), root_cert_file=root, timeout=timeout)


def run_app(
    check: Check,
    app: type[BaseHTTPRequestHandler],
    b: SidecarBehaviour | None = None,
    *,
    expect: Expect = Expect.STRICT,
    echo_path: str | None = None,
) -> Result:
    """``check`` against ns-a/echo served by ``app``, through the sidecar stand-in
    behaving as ``b`` (by default a server sidecar that appends XFCC)."""
    with serving(app) as upstream:
        b = b or SidecarBehaviour()
        b.upstream = upstream
        with sidecar(b) as proxy:
            target = echo_target(expect=expect, echo_path=echo_path)
            return run_target(check, target, Source(identity=SRC, sidecar_proxy=proxy))
