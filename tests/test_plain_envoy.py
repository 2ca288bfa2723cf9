"""plaintext, peer-cert and foreign-client against a real Envoy STRICT listener."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.lab.addresses import Slot
from probe import tls
from probe.checks.base import RunContext, Settings
from probe.checks.foreign_client import ForeignClientCheck
from probe.checks.peer_cert import PeerCertCheck
from probe.checks.plaintext import PlaintextCheck, http_request
from probe.engine import run_checks
from probe.model import Endpoint, Expect, Protocol, Source, Target, TargetsFile
from probe.pki import CertificateAuthority
from probe.results import Result, Verdict
from tests.strict_envoy import Pod, RunningEnvoy, strict_envoy

TD = "cluster.local"
GOOD = f"spiffe://{TD}/ns/ns-a/sa/echo"
PORT = 8080


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CertificateAuthority, Path, RunningEnvoy, list[Pod]]]:
    tmp = tmp_path_factory.mktemp("envoy")
    ca = CertificateAuthority.create_root(TD, key_type="ec")
    root = tmp / "root-cert.pem"
    root.write_bytes(ca.root_pem())
    now = dt.datetime.now(dt.UTC)

    def pods(slot: Slot) -> list[Pod]:
        return [
            Pod(Endpoint(slot.pod_ip(0), PORT), ca.issue_workload(GOOD, key_type="ec")),
            Pod(
                Endpoint(slot.pod_ip(1), PORT),
                ca.issue(
                    [GOOD],
                    key_type="ec",
                    not_before=now - dt.timedelta(days=2),
                    not_after=now - dt.timedelta(hours=1),
                ),
            ),
            Pod(Endpoint(slot.pod_ip(2), PORT), ca.issue_workload(GOOD, key_type="rsa")),
            Pod(
                Endpoint(slot.pod_ip(3), PORT),
                ca.issue_workload(GOOD, key_type="ec"),
                tls_max="TLSv1_2",
            ),
            *[
                Pod(
                    Endpoint(slot.pod_ip(4 + i), PORT),
                    ca.issue_workload(GOOD, key_type="ec"),
                    tls_max=tls_max,
                    require_client=False,
                )
                for i, tls_max in enumerate(("TLSv1_3", "TLSv1_2"))
            ],
        ]

    with strict_envoy(pods, root, TD, tmp) as (envoy, started):
        yield ca, root, envoy, started


def _run(check: object, endpoint: Endpoint, root: Path, expect: Expect = Expect.STRICT) -> Result:
    target = Target(
        name="ns-a/echo",
        host="echo.ns-a.svc.cluster.local",
        port=PORT,
        expect=expect,
        endpoints=(endpoint,),
        identity=GOOD,
        protocol=Protocol.HTTP,
        echo=False,
    )
    tf = TargetsFile(
        trust_domain=TD,
        targets=(target,),
        source=Source(identity=f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe"),
        root_cert_file=root,
    )
    ctx = RunContext(tf, Settings(timeout=10.0))  # generous: a loaded machine, not a hang
    try:
        (result,) = run_checks([check], ctx)  # type: ignore[list-item]
    finally:
        ctx.close()
    return result


Mesh = tuple[CertificateAuthority, Path, RunningEnvoy, list[Pod]]


def test_plaintext_is_refused_by_envoy(mesh: Mesh) -> None:
    _, root, _, pods = mesh
    r = _run(PlaintextCheck(), pods[0].endpoint, root)
    assert r.verdict is Verdict.PASS and r.observed == "refused", r
    # The same wire observation contradicts a PERMISSIVE expectation.
    r = _run(PlaintextCheck(), pods[0].endpoint, root, Expect.PERMISSIVE)
    assert r.verdict is Verdict.FAIL and r.observed == "refused", r


def test_peer_cert_valid_and_expired_on_envoy(mesh: Mesh) -> None:
    _, root, _, pods = mesh
    r = _run(PeerCertCheck(), pods[0].endpoint, root)
    assert r.verdict is Verdict.PASS, r
    assert r.evidence["spiffe_id"] == GOOD and r.evidence["tls_version"] == "TLSv1.3"
    assert r.evidence["possession"] == "TLS 1.3 CertificateVerify and Finished verified"
    assert r.evidence["alpn"] == "istio-http/1.1"
    r = _run(PeerCertCheck(), pods[1].endpoint, root)
    assert r.verdict is Verdict.FAIL and "expired" in r.reason, r
    r = _run(PeerCertCheck(), pods[2].endpoint, root)
    assert r.verdict is Verdict.PASS and r.evidence["key_type"] == "RSA", r


def test_foreign_client_is_rejected_by_envoy(mesh: Mesh) -> None:
    _, root, _, pods = mesh
    r = _run(ForeignClientCheck(), pods[0].endpoint, root)
    assert r.verdict is Verdict.PASS and r.observed == "rejected", r
    # The run-time CA copies the mesh root's name and key identifier (red-team round 4),
    # so BoringSSL finds the real root and fails the signature: decrypt error.
    assert "decrypt error" in r.reason, r.reason
    assert r.evidence["possession"] == "TLS 1.3 CertificateVerify and Finished verified"


def test_a_mesh_client_is_served(mesh: Mesh) -> None:
    """Control: the same listener answers a client the mesh root signed, so the
    rejections above are about the certificate, not a broken listener."""
    ca, _, _, pods = mesh
    client = ca.issue_workload(f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe", key_type="ec")
    context = tls.client_context(tls.HTTP_ALPNS, client)
    conn, hs = tls.connect_tls(pods[0].endpoint, context, 3.0)
    try:
        assert hs.failure is None and hs.sent_client_cert and hs.possession is not None
        after = tls.after_handshake(conn, hs, http_request("echo"), pods[0].endpoint, 0.2, 3.0)
    finally:
        tls.close(conn)
    assert after.kind == "data" and "HTTP/1.1 200" in after.detail, after


def test_tls12_only_envoy(mesh: Mesh) -> None:
    """TLS 1.2: the handshake fails without a client certificate, but only after
    Envoy signed the ECDHE ServerKeyExchange (we verified it before sending our
    flight): key possession is proven. A foreign certificate fails inside the
    handshake with a certificate alert."""
    _, root, _, pods = mesh
    r = _run(PeerCertCheck(), pods[3].endpoint, root)
    assert r.verdict is Verdict.PASS and r.evidence["tls_version"] == "TLSv1.2", r
    assert "ServerKeyExchange signature verified" in r.evidence["possession"], r.evidence
    r = _run(ForeignClientCheck(), pods[3].endpoint, root)
    assert r.verdict is Verdict.PASS and r.observed == "rejected", r
    assert "requested and got our certificate" in r.reason, r.reason
    assert "ServerKeyExchange" in r.evidence["possession"], r.evidence
    r = _run(PlaintextCheck(), pods[3].endpoint, root)
    assert r.verdict is Verdict.PASS, r


@pytest.mark.parametrize("pod", [4, 5], ids=["tls13", "tls12"])
def test_envoy_asking_for_no_client_certificate(mesh: Mesh, pod: int) -> None:
    """A misconfigured Envoy (no client certificate required, no validation
    context) sends no CertificateRequest: foreign-client fails, whatever happens
    next; its own certificate is still proven and valid."""
    _, root, _, pods = mesh
    r = _run(ForeignClientCheck(), pods[pod].endpoint, root)
    assert r.verdict is Verdict.FAIL and r.observed == "accepted", r
    assert "no CertificateRequest" in r.reason, r.reason
    r = _run(PeerCertCheck(), pods[pod].endpoint, root)
    assert r.verdict is Verdict.PASS and r.evidence["possession"], r
