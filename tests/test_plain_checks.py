"""plaintext, peer-cert and foreign-client against real servers made here."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from probe.checks.foreign_client import ForeignClientCheck
from probe.checks.peer_cert import PeerCertCheck
from probe.checks.plaintext import PlaintextCheck
from probe.model import Expect, Protocol
from probe.pki import ISTIO_KEY_USAGE, CertificateAuthority
from probe.results import Verdict
from tests.runone import ECHO_ID, TD, run_one
from tests.tlsservers import (
    MeshPKI,
    black_hole,
    nothing_listening,
    plaintext_http,
    reset_after_read,
    serving,
    tcp_echo,
    tls_handler,
)

# --- plaintext ---------------------------------------------------------------


def test_strict_refusal_passes() -> None:
    with serving(reset_after_read) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT)
    assert r.verdict is Verdict.PASS, r
    assert r.observed == "refused" and r.expected == "refused"


def test_strict_accepting_plaintext_fails() -> None:
    with serving(plaintext_http) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT)
    assert r.verdict is Verdict.FAIL and "not enforcing mTLS" in r.reason


@pytest.mark.parametrize("expect", [Expect.PERMISSIVE, Expect.DISABLE, Expect.NONE])
def test_accepting_modes_pass(expect: Expect) -> None:
    with serving(plaintext_http) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, expect)
    assert r.verdict is Verdict.PASS and r.observed == "accepted"


def test_permissive_refusing_fails() -> None:
    with serving(reset_after_read) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.PERMISSIVE)
    assert r.verdict is Verdict.FAIL


def test_nothing_listening_is_error_not_refusal() -> None:
    r = run_one(PlaintextCheck(), nothing_listening(), Expect.STRICT)
    assert r.verdict is Verdict.ERROR and "nothing listens" in r.reason


def test_black_hole_is_error() -> None:
    with serving(black_hole) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT, timeout=0.5)
    assert r.verdict is Verdict.ERROR and "silence is not proof" in r.reason


def test_tcp_echo_accepted_and_tcp_strict_refused() -> None:
    with serving(tcp_echo) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.PERMISSIVE, protocol=Protocol.TCP)
    assert r.verdict is Verdict.PASS and r.observed == "accepted"
    with serving(reset_after_read) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT, protocol=Protocol.TCP)
    assert r.verdict is Verdict.PASS and r.observed == "refused"


def test_strict_sidecar_like_tls_server_refuses_plaintext(pki: MeshPKI) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(tls_handler(pki, issued)) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT, pki)
    assert r.verdict is Verdict.PASS, r


# --- peer-cert ---------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_valid_svid_passes_on_tls12_and_13(pki: MeshPKI, version: ssl.TLSVersion) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(tls_handler(pki, issued, version=version)) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, pki)
    assert r.verdict is Verdict.PASS, r
    assert r.evidence["spiffe_id"] == ECHO_ID and r.evidence["chain_verified"] is True
    assert len(r.evidence["fingerprint_sha256"]) == 64


def test_intermediate_chain_passes(pki: MeshPKI) -> None:
    inter = pki.ca.issue_intermediate(key_type="ec")
    issued = inter.issue_workload(ECHO_ID, key_type="ec")
    with serving(tls_handler(pki, issued)) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, pki)
    assert r.verdict is Verdict.PASS, r


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


BAD_CERTS: dict[str, tuple[dict[str, Any], str]] = {
    "expired": (
        dict(not_before=_now() - dt.timedelta(days=2), not_after=_now() - dt.timedelta(hours=1)),
        "expired",
    ),
    "not-yet-valid": (dict(not_before=_now() + dt.timedelta(hours=1)), "not yet valid"),
    "two-uris": (dict(uris=[ECHO_ID, f"spiffe://{TD}/ns/ns-a/sa/other"]), "exactly one URI SAN"),
    "ca-leaf": (dict(is_ca=True), "CA certificate"),
    "wrong-td": (dict(uris=["spiffe://other.td/ns/ns-a/sa/echo"]), "trust domain"),
    "wrong-identity": (dict(uris=[f"spiffe://{TD}/ns/ns-a/sa/other"]), "expected spiffe://"),
    "no-key-usage": (dict(key_usage=None), "key usage extension missing"),
    "keycertsign": (
        dict(key_usage=x509.KeyUsage(True, False, True, False, False, True, False, False, False)),
        "keyCertSign",
    ),
    "eku-server-only": (dict(extended_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH]), "clientAuth"),
    "san-not-critical": (dict(san_critical=False), "must be critical"),
    "too-long": (dict(lifetime=dt.timedelta(days=400)), "exceeds the maximum"),
    "expiring-soon": (
        dict(not_before=_now() - dt.timedelta(hours=23), not_after=_now() + dt.timedelta(hours=1)),
        "minimum remaining",
    ),
    "not-spiffe": (dict(uris=["https://echo.example"]), "not a SPIFFE ID"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CERTS))
def test_bad_certificates_fail(pki: MeshPKI, kind: str) -> None:
    kwargs, needle = BAD_CERTS[kind]
    kwargs = dict(kwargs)
    uris = kwargs.pop("uris", [ECHO_ID])
    issued = pki.ca.issue(uris, key_type="ec", **kwargs)
    with serving(tls_handler(pki, issued)) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, pki)
    assert r.verdict is Verdict.FAIL, r
    assert needle in r.reason, r.reason


def test_foreign_chain_fails(pki: MeshPKI, tmp_path: Path) -> None:
    other = CertificateAuthority.create_root(TD, key_type="ec")
    issued = other.issue_workload(ECHO_ID, key_type="ec")
    with serving(tls_handler(pki, issued, require_client=False)) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, pki)
    assert r.verdict is Verdict.FAIL and "no valid path to the mesh root" in r.reason


def test_subject_with_non_critical_san_is_fine(pki: MeshPKI) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")])
    issued = pki.ca.issue(
        [ECHO_ID], key_type="ec", subject=subject, san_critical=False, key_usage=ISTIO_KEY_USAGE
    )
    with serving(tls_handler(pki, issued)) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, pki)
    assert r.verdict is Verdict.PASS, r


def test_peer_cert_plaintext_server_is_error() -> None:
    with serving(plaintext_http) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, timeout=0.5)
    assert r.verdict is Verdict.ERROR, r


def test_peer_cert_slow_tls_server_is_error() -> None:
    with serving(black_hole) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, timeout=0.5)
    assert r.verdict is Verdict.ERROR and "stalled" in r.reason


def test_peer_cert_skips_without_sidecar() -> None:
    r = run_one(PeerCertCheck(), nothing_listening(), Expect.NONE)
    assert r.verdict is Verdict.SKIP


def test_peer_cert_without_roots_is_not_a_pass(pki: MeshPKI) -> None:
    """No rootCertFile, no chain claim: an otherwise valid SVID is an error naming the
    missing field, and the evidence does not claim a verified chain."""
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(tls_handler(pki, issued)) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, None)
    assert r.verdict is Verdict.ERROR and "rootCertFile" in r.reason, r
    assert r.evidence["chain_verified"] is None


def test_peer_cert_without_roots_still_fails_a_bad_svid(pki: MeshPKI) -> None:
    issued = pki.ca.issue([f"spiffe://{TD}/ns/ns-a/sa/other"], key_type="ec")
    with serving(tls_handler(pki, issued)) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, None)
    assert r.verdict is Verdict.FAIL and "expected spiffe://" in r.reason, r


# --- foreign-client ------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_foreign_client_rejected_passes(pki: MeshPKI, version: ssl.TLSVersion) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(tls_handler(pki, issued, version=version)) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki)
    assert r.verdict is Verdict.PASS, r
    assert r.observed == "rejected"


def test_server_not_demanding_client_certs_fails(pki: MeshPKI) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(tls_handler(pki, issued, require_client=False)) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki)
    assert r.verdict is Verdict.FAIL and "does not verify who calls it" in r.reason


def test_foreign_client_nothing_listening_is_error() -> None:
    r = run_one(ForeignClientCheck(), nothing_listening(), Expect.STRICT)
    assert r.verdict is Verdict.ERROR


def test_foreign_client_plaintext_server_is_error() -> None:
    with serving(plaintext_http) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.PERMISSIVE, timeout=0.5)
    assert r.verdict is Verdict.ERROR, r


# --- more wire shapes ----------------------------------------------------------


def test_permissive_sidecar_like_server(pki: MeshPKI) -> None:
    """Istio PERMISSIVE: plaintext answered, TLS still demands a mesh client cert."""
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(tls_handler(pki, issued, permissive=True)) as srv:
        ok = run_one(PlaintextCheck(), srv.endpoint, Expect.PERMISSIVE, pki)
        strict = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT, pki)
        cert = run_one(PeerCertCheck(), srv.endpoint, Expect.PERMISSIVE, pki)
        foreign = run_one(ForeignClientCheck(), srv.endpoint, Expect.PERMISSIVE, pki)
    assert ok.verdict is Verdict.PASS and "HTTP/1.1 200" in ok.reason, ok
    assert strict.verdict is Verdict.FAIL and strict.observed == "accepted", strict
    assert "STRICT port accepted plaintext" in strict.reason
    assert cert.verdict is Verdict.PASS, cert
    assert foreign.verdict is Verdict.PASS, foreign


def test_tls_alert_record_answering_plaintext_is_a_refusal() -> None:
    def tls_only(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"\x15\x03\x03\x00\x02\x02\x46")  # fatal protocol_version alert

    with serving(tls_only) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT)
        tcp = run_one(PlaintextCheck(), srv.endpoint, Expect.NONE, protocol=Protocol.TCP)
    assert r.verdict is Verdict.PASS and "TLS alert record" in r.reason, r
    assert tcp.verdict is Verdict.FAIL and tcp.observed == "refused", tcp


def test_non_http_answer_is_acceptance() -> None:
    def banner(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    with serving(banner) as srv:
        r = run_one(PlaintextCheck(), srv.endpoint, Expect.STRICT)
    assert r.verdict is Verdict.FAIL and "non-HTTP bytes" in r.reason, r


def test_tcp_silent_server_is_inconclusive() -> None:
    with serving(black_hole) as srv:
        r = run_one(
            PlaintextCheck(), srv.endpoint, Expect.STRICT, protocol=Protocol.TCP, timeout=0.4
        )
    assert r.verdict is Verdict.ERROR and "silence is not proof" in r.reason, r


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_foreign_client_tcp_port_both_attempts(pki: MeshPKI, version: ssl.TLSVersion) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(tls_handler(pki, issued, version=version)) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki, protocol=Protocol.TCP)
    assert r.verdict is Verdict.PASS, r
    labels = {"foreign CA, own identity", "foreign CA, wrong trust domain"}
    assert set(r.evidence) == {*labels, "possession"}
    assert all(str(r.evidence[k]).startswith("rejected") for k in labels), r.evidence


def test_foreign_client_black_hole_is_error() -> None:
    with serving(black_hole) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, timeout=0.4)
    assert r.verdict is Verdict.ERROR and "stalled" in r.reason, r


def test_foreign_client_fail_reports_both_attempts(pki: MeshPKI) -> None:
    """A server that asks for no client certificate serves both foreign attempts."""
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(tls_handler(pki, issued, require_client=False)) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.PERMISSIVE, pki)
    assert r.verdict is Verdict.FAIL and r.observed == "accepted", r
    attempts = [v for k, v in r.evidence.items() if k.startswith("foreign CA")]
    assert len(attempts) == 2 and all(str(v).startswith("accepted") for v in attempts), r.evidence


def test_foreign_client_reset_before_any_certificate_is_error() -> None:
    """A port that resets every connection proves nothing about client certificates."""
    with serving(reset_after_read) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT)
    assert r.verdict is Verdict.ERROR and "before our certificate was sent" in r.reason, r


def test_hostile_duplicate_san_certificate_over_the_wire(pki: MeshPKI) -> None:
    """A server presenting a certificate with two SAN extensions (which cryptography
    refuses to read) gets a fail naming it, not a crash."""
    from cryptography.hazmat.primitives import serialization

    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    san = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    stand_in = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.99"), san.public_bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(issued.cert.subject)
        .issuer_name(issued.cert.issuer)
        .public_key(issued.cert.public_key())
        .serial_number(issued.cert.serial_number)
        .not_valid_before(issued.cert.not_valid_before_utc)
        .not_valid_after(issued.cert.not_valid_after_utc)
    )
    for ext in issued.cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    builder = builder.add_extension(stand_in, True)
    der = builder.sign(pki.ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    dup = der.replace(bytes.fromhex("0603551d63"), bytes.fromhex("0603551d11"), 1)
    # Python's ssl refuses to serve it; OpenSSL via pyOpenSSL does, as a hostile server would.
    sctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    sctx.use_certificate(x509.load_der_x509_certificate(dup))  # type: ignore[arg-type]
    sctx.use_privatekey(issued.key)  # type: ignore[arg-type]

    def handle(conn: socket.socket) -> None:
        conn.settimeout(None)
        server = SSL.Connection(sctx, conn)
        server.set_accept_state()
        with contextlib.suppress(SSL.Error):
            server.do_handshake()
            server.recv(1)

    with serving(handle) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, pki)
    assert r.verdict is Verdict.FAIL, r
    assert "unreadable" in r.reason or "not valid X.509" in r.reason, r.reason
