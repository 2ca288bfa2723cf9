"""One target through the real engine, as the check tests drive it: sidecar-less
against an endpoint (plaintext, peer-cert, foreign-client), or through the sidecar
stand-in in front of an HTTP app (mesh, xfcc-spoof)."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

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


def _one(check: object, tf: TargetsFile, timeout: float) -> Result:
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
    target = Target(
        name="ns-a/echo",
        host="echo.ns-a.svc.cluster.local",
        port=8080,
        expect=expect,
        endpoints=(endpoint,),
        identity=identity,
        protocol=protocol,
        echo=True,
    )
    tf = TargetsFile(
        trust_domain=TD,
        targets=(target,),
        source=Source(identity=SRC),
        root_cert_file=pki.root_file if pki else None,
    )
    return _one(check, tf, timeout)


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
            target = Target(
                name="ns-a/echo",
                host="echo.ns-a.svc.cluster.local",
                port=8080,
                expect=expect,
                identity=ECHO_ID,
                echo=True,
                echo_path=echo_path,
            )
            tf = TargetsFile(TD, (target,), Source(identity=SRC, sidecar_proxy=proxy))
            return _one(check, tf, 2)
