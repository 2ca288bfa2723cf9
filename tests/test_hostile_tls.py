"""Rules 1 and 2 of issue 10 against servers written to make peer-cert and
foreign-client lie: a copied certificate without its key never passes peer-cert,
and foreign-client passes only on a certificate alert after our certificate was
sent to a server that asked for it. Real servers on 127.0.0.1, no mocks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from probe.checks.foreign_client import ForeignClientCheck
from probe.checks.peer_cert import PeerCertCheck
from probe.model import Expect
from probe.pki import Issued
from probe.results import Verdict
from tests import hostile_tls as h
from tests.test_plain_checks import ECHO_ID, run_one
from tests.tlsservers import MeshPKI, serving

V12, V13 = SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> MeshPKI:
    return MeshPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", params=["ec", "rsa"])
def genuine(pki: MeshPKI, request: pytest.FixtureRequest) -> Issued:
    """The workload's real certificate, whose public chain the liars copied."""
    return pki.ca.issue_workload(ECHO_ID, key_type=request.param)


def _der(issued: Issued) -> list[bytes]:
    return [issued.cert.public_bytes(serialization.Encoding.DER)]


# --- peer-cert: a shown certificate is not a held one -------------------------------------

REPLAYS: dict[str, Callable[[list[bytes]], Callable[..., None]]] = {
    "tls13-forged-verify": lambda c: h.replay13(c, ending="forged-verify"),
    "tls13-garbage-verify": lambda c: h.replay13(c, ending="garbage-verify"),
    "tls13-alert-after-certificate": lambda c: h.replay13(c, ending="alert"),
    "tls13-silence-after-certificate": lambda c: h.replay13(c, ending="silence"),
    "tls13-request-then-forged-verify": lambda c: h.replay13(c, request_cert=True),
    "tls12-forged-key-exchange": h.replay12,
    "tls12-alert-after-certificate": lambda c: h.replay12(c, ending="alert"),
}


@pytest.mark.parametrize("kind", sorted(REPLAYS))
def test_replayed_certificate_never_passes_peer_cert(
    pki: MeshPKI, genuine: Issued, kind: str
) -> None:
    with serving(REPLAYS[kind](_der(genuine))) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, pki, timeout=1.0)
    assert r.verdict in (Verdict.FAIL, Verdict.ERROR), r
    assert r.evidence.get("possession") is None, r.evidence
    assert "chain_verified" not in r.evidence, r.evidence
    if "verify" in kind or "key-exchange" in kind:
        assert r.verdict is Verdict.FAIL and "does not hold the key" in r.reason, r
    elif "silence" not in kind:
        assert r.verdict is Verdict.ERROR and "before it proved it holds the key" in r.reason, r


def test_fake_alert_bytes_are_no_certificate(pki: MeshPKI) -> None:
    with serving(h.fake_alert) as srv:
        cert = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, pki)
        foreign = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki)
    assert cert.verdict is Verdict.ERROR, cert
    assert foreign.verdict is Verdict.ERROR and "before our certificate" in foreign.reason, foreign


@pytest.mark.parametrize("kind", sorted(REPLAYS))
def test_replayed_certificate_never_passes_foreign_client(
    pki: MeshPKI, genuine: Issued, kind: str
) -> None:
    """A liar that rejects everything must not look like a server rejecting us."""
    with serving(REPLAYS[kind](_der(genuine))) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki, timeout=1.0)
    assert r.verdict is Verdict.ERROR, r


@pytest.mark.parametrize("version", [V12, V13])
def test_key_holding_server_passes_peer_cert(pki: MeshPKI, genuine: Issued, version: int) -> None:
    """Control: the same certificate served by its key holder passes, with the proof named."""
    with serving(h.openssl_server(genuine, version=version, request_cert=True)) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, pki)
    assert r.verdict is Verdict.PASS, r
    want = "CertificateVerify" if version == V13 else "handshake completed"
    assert want in r.evidence["possession"], r.evidence


# --- foreign-client: only a certificate alert after our certificate is a rejection -------------

ACCEPTING: list[tuple[int, bool, str]] = [
    # version, asks for a client certificate, what it does after the handshake
    *[(v, False, then) for v in (V12, V13) for then in ("serve", "rst", "fin")],
    *[
        (v, True, then)
        for v in (V12, V13)
        for then in ("serve", "fin", "close-notify", "rst", "banner", "fake-alert")
    ],
]


@pytest.mark.parametrize(
    ("version", "request_cert", "then"),
    ACCEPTING,
    ids=[
        f"{'1.2' if v == V12 else '1.3'}-{'request' if r else 'no-request'}-{t}"
        for v, r, t in ACCEPTING
    ],
)
def test_accepting_servers_never_pass_foreign_client(
    pki: MeshPKI, version: int, request_cert: bool, then: str
) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    server = h.openssl_server(issued, version=version, request_cert=request_cert, then=then)
    with serving(server) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki, timeout=1.0)
    assert r.verdict is Verdict.FAIL and r.observed == "accepted", r
    if not request_cert:
        assert "no CertificateRequest" in r.reason, r.reason
    elif version == V12:
        assert "completed a TLSv1.2 handshake" in r.reason, r.reason
