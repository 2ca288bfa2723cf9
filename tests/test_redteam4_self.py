"""Red-team round 4 for ``self``: sidecar admins whose secrets config dump holds more
than Istio's two mTLS secrets. pilot-agent serves the workload certificate as SDS
resource ``default`` and the mesh trust bundle as ``ROOTCA``; a sidecar may also hold
others (``file-cert:…`` / ``file-root:…`` for a DestinationRule's mounted credentials,
a gateway's ``kubernetes://…``). A healthy certificate or the right root in one of
those says nothing about what mTLS presents or trusts. Real HTTP admin stand-ins
serving Envoy 1.40's ``dynamic_active_secrets`` shape, real certificates."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from probe.checks.base import RunContext, Settings
from probe.checks.self_cert import SelfCheck
from probe.engine import run_checks
from probe.model import Source, TargetsFile
from probe.pki import CertificateAuthority, Issued
from probe.results import Result, Verdict
from tests.sidecar_standin import DUMP, admin_handler, b64, http_server

TD = "cluster.local"
SRC = f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe"
T = "type.googleapis.com/envoy."


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, Path]:
    ca = CertificateAuthority.create_root(TD, key_type="ec")
    root = tmp_path_factory.mktemp("root") / "root-cert.pem"
    root.write_bytes(ca.root_pem())
    return ca, root


def _cert_secret(name: str, issued: Issued) -> dict[str, Any]:
    return {
        "@type": T + "admin.v3.SecretsConfigDump.DynamicSecret",
        "name": name,
        "secret": {
            "@type": T + "extensions.transport_sockets.tls.v3.Secret",
            "name": name,
            "tls_certificate": {
                "certificate_chain": {"inline_bytes": b64(issued.chain_pem())},
                "private_key": {"inline_bytes": b64(b"[redacted]")},
            },
        },
    }


def _root_secret(name: str, pem: bytes) -> dict[str, Any]:
    return {
        "@type": T + "admin.v3.SecretsConfigDump.DynamicSecret",
        "name": name,
        "secret": {
            "@type": T + "extensions.transport_sockets.tls.v3.Secret",
            "name": name,
            "validation_context": {"trusted_ca": {"inline_bytes": b64(pem)}},
        },
    }


def _run(configs: list[dict[str, Any]], root: Path) -> Result:
    with http_server(admin_handler({DUMP: {"configs": configs}})) as admin:
        tf = TargetsFile(TD, (), Source(identity=SRC, sidecar_admin=admin), root_cert_file=root)
        ctx = RunContext(tf, Settings(timeout=2))
        try:
            (r,) = run_checks([SelfCheck()], ctx)
        finally:
            ctx.close()
    return r


def _expired(ca: CertificateAuthority) -> Issued:
    nb = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    return ca.issue([SRC], key_type="ec", not_before=nb, not_after=nb + dt.timedelta(days=1))


def test_healthy_copy_beside_an_expired_default_secret_fails(
    mesh: tuple[CertificateAuthority, Path],
) -> None:
    """Liar: a healthy certificate for the probe's identity sits in a ``file-cert:``
    secret listed first, while ``default`` (what mTLS presents) has expired. Before the
    fix the first chain holding the identity was judged: pass."""
    ca, root = mesh
    configs = [
        _cert_secret(
            "file-cert:/etc/certs/cert-chain.pem~/etc/certs/key.pem",
            ca.issue_workload(SRC, key_type="ec"),
        ),
        _cert_secret("default", _expired(ca)),
        _root_secret("ROOTCA", ca.root_pem()),
    ]
    r = _run(configs, root)
    assert r.verdict is Verdict.FAIL, r
    assert "expired" in r.reason or "not valid after" in r.reason or "remaining" in r.reason, r


def test_default_secret_of_another_identity_fails(mesh: tuple[CertificateAuthority, Path]) -> None:
    """``default`` names someone else; only a side secret holds the probe's identity."""
    ca, root = mesh
    configs = [
        _cert_secret("default", ca.issue_workload(f"spiffe://{TD}/ns/x/sa/y", key_type="ec")),
        _cert_secret("kubernetes://probe-credential", ca.issue_workload(SRC, key_type="ec")),
        _root_secret("ROOTCA", ca.root_pem()),
    ]
    r = _run(configs, root)
    assert r.verdict is Verdict.FAIL and "holds no certificate for" in r.reason, r


def test_mesh_root_only_in_a_destination_rule_bundle_fails(
    mesh: tuple[CertificateAuthority, Path],
) -> None:
    """Liar: ROOTCA holds another root; the mesh root is only in a ``file-root:``
    bundle (a DestinationRule's caCertificates). Before the fix every validation context
    was pooled and the check passed, though mTLS would reject every mesh peer."""
    ca, root = mesh
    other = CertificateAuthority.create_root(TD, key_type="ec").root_pem()
    configs = [
        _cert_secret("default", ca.issue_workload(SRC, key_type="ec")),
        _root_secret("ROOTCA", other),
        _root_secret("file-root:/etc/certs/root-cert.pem", ca.root_pem()),
    ]
    r = _run(configs, root)
    assert r.verdict is Verdict.FAIL and "ROOTCA" in r.reason, r


def test_unnamed_dump_with_one_bad_chain_for_the_identity_fails(
    mesh: tuple[CertificateAuthority, Path],
) -> None:
    """Without Istio's names (a hand-written static config) which chain is presented is
    unknown: a healthy first one must not hide an expired second one."""
    ca, root = mesh
    configs = [
        _cert_secret("server-a", ca.issue_workload(SRC, key_type="ec")),
        _cert_secret("server-b", _expired(ca)),
        _root_secret("trust", ca.root_pem()),
    ]
    r = _run(configs, root)
    assert r.verdict is Verdict.FAIL and "certificate 2 of 2" in r.reason, r


def test_istio_shape_with_extra_secrets_still_passes(
    mesh: tuple[CertificateAuthority, Path],
) -> None:
    """The honest case: ``default`` and ``ROOTCA`` healthy, plus a gateway credential for
    another name and a DestinationRule root that is not the mesh's."""
    ca, root = mesh
    other = CertificateAuthority.create_root("example.com", key_type="ec")
    configs = [
        _cert_secret(
            "kubernetes://egress-cred",
            other.issue_workload("spiffe://example.com/x", key_type="ec"),
        ),
        _cert_secret("default", ca.issue_workload(SRC, key_type="ec")),
        _root_secret("file-root:/etc/egress/ca.pem", other.root_pem()),
        _root_secret("ROOTCA", ca.root_pem()),
    ]
    r = _run(configs, root)
    assert r.verdict is Verdict.PASS, r
