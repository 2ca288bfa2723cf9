"""Red-team round 4 for ``authz``: whose identity the probe's calls really carry. A case
runs only on the probe whose sidecar holds the case's ``source``; the identity a
sidecar's mTLS presents is its ``default`` SDS secret, not any certificate it happens to
hold (a mounted ``file-cert:`` or gateway credential). Real echo app, real HTTP sidecar
stand-in and admin stand-in, real certificates."""

from __future__ import annotations

from typing import Any

from probe.authzmodel import AuthzCase, AuthzExpect
from probe.checks import load_check
from probe.checks.base import RunContext, Settings
from probe.engine import run_checks
from probe.model import Expect, Source, Target, TargetsFile
from probe.pki import CertificateAuthority, Issued
from probe.reflect import App
from probe.results import Verdict
from tests.reflect_apps import handler, serving
from tests.sidecar_standin import DUMP, SidecarBehaviour, admin_handler, b64, http_server, sidecar

TD = "cluster.local"
ME = f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe"
OTHER = f"spiffe://{TD}/ns/tenant/sa/admin"


def _secret(name: str, issued: Issued) -> dict[str, Any]:
    return {
        "name": name,
        "secret": {
            "name": name,
            "tls_certificate": {"certificate_chain": {"inline_bytes": b64(issued.chain_pem())}},
        },
    }


def test_identity_held_only_in_a_side_secret_is_not_the_probes() -> None:
    """Liar: the sidecar's ``default`` certificate is another workload's (``OTHER``, say
    one the policy allows); the declared source identity sits only in a side credential.
    The calls go out as ``OTHER``, so an allow observed says nothing about ``ME``. Before
    the fix every chain counted and the case passed as ``ME``."""
    ca = CertificateAuthority.create_root(TD, key_type="ec")
    dump = {
        "configs": [
            _secret("default", ca.issue_workload(OTHER, key_type="ec")),
            _secret(
                "file-cert:/etc/certs/probe.pem~/etc/certs/probe-key.pem",
                ca.issue_workload(ME, key_type="ec"),
            ),
        ]
    }
    case = AuthzCase(ME, AuthzExpect.ALLOW, "ns-a/allow-probe", "GET", "/headers")
    with (
        serving(handler(App.HTTPBIN)) as upstream,
        sidecar(SidecarBehaviour(upstream=upstream, uri=OTHER)) as proxy,
        http_server(admin_handler({DUMP: dump})) as admin,
    ):
        target = Target(
            "ns-a/echo",
            "echo.ns-a.svc.cluster.local",
            8080,
            Expect.STRICT,
            echo=True,
            authz=(case,),
        )
        tf = TargetsFile(
            TD, (target,), Source(identity=ME, sidecar_proxy=proxy, sidecar_admin=admin)
        )
        ctx = RunContext(tf, Settings(timeout=2))
        try:
            (r,) = run_checks([load_check("authz")], ctx)
        finally:
            ctx.close()
    assert r.verdict is Verdict.ERROR, r
    assert OTHER in r.reason and "not source.identity" in r.reason, r
