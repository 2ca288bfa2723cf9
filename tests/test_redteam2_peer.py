"""Red-team round 2 for peer-cert: a real OpenSSL server holding the genuine key of the
certificate it presents, with chains and trust bundles built to mislead.

rootCertFile is the user's trust bundle: a server that chains to any root in it passes
(that is what trusting a bundle means, as during an Istio root rotation). But a bundle
that is not a bundle of CA certificates — a private key, a leaf, a CA=false
certificate — is the user's mistake, not the server's: ``error`` naming the file, never
``pass`` and never a ``fail`` that blames the server."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from probe.checks.peer_cert import PeerCertCheck
from probe.model import Expect
from probe.pki import CertificateAuthority, Issued, cert_pem, key_pem
from probe.results import Result, Verdict
from tests.runone import ECHO_ID, run_one
from tests.tlsservers import MeshPKI, serving, tls_handler


@pytest.fixture(scope="module")
def good(pki: MeshPKI) -> Issued:
    return pki.ca.issue_workload(ECHO_ID, key_type="ec")


def _check(pki: MeshPKI, issued: Issued, bundle: bytes | None = None, name: str = "b") -> Result:
    p = copy.copy(pki)
    if bundle is not None:
        p.root_file = pki.tmp / f"{name}.pem"
        p.root_file.write_bytes(bundle)
    with serving(tls_handler(p, issued, require_client=False)) as srv:
        return run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, p)


def test_genuine_server_with_an_extra_unrelated_intermediate_passes(
    pki: MeshPKI, good: Issued
) -> None:
    # OpenSSL (and Envoy's BoringSSL) build the path and ignore an unrelated extra.
    stray = CertificateAuthority.create_root(key_type="ec").issue_intermediate(key_type="ec")
    issued = Issued(cert=good.cert, key=good.key, chain=(stray.cert, pki.ca.cert))
    r = _check(pki, issued)
    assert r.verdict is Verdict.PASS, r.reason


def test_leaf_for_another_identity_from_the_right_root_fails(pki: MeshPKI) -> None:
    r = _check(pki, pki.ca.issue_workload("spiffe://cluster.local/ns/x/sa/y", key_type="ec"))
    assert r.verdict is Verdict.FAIL and "expected" in r.reason


def test_leaf_signed_by_a_ca_false_intermediate_fails(pki: MeshPKI) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-a-ca")])
    nonca = pki.ca.issue([], key_type="ec", is_ca=False, subject=subject)
    fake = CertificateAuthority(nonca.cert, nonca.key, (pki.ca.cert,))
    r = _check(pki, fake.issue_workload(ECHO_ID, key_type="ec"))
    assert r.verdict is Verdict.FAIL and "no valid path" in r.reason, r.reason


def test_expired_root_in_the_bundle_fails(pki: MeshPKI) -> None:
    now = dt.datetime.now(dt.UTC)
    old = CertificateAuthority.create_root(
        key_type="ec", now=now - dt.timedelta(days=400), lifetime=dt.timedelta(days=10)
    )
    r = _check(pki, old.issue_workload(ECHO_ID, key_type="ec"), old.root_pem(), "expired")
    assert r.verdict is Verdict.FAIL and "expired" in r.reason, r.reason


def test_a_server_chaining_to_any_root_of_the_users_bundle_passes(pki: MeshPKI) -> None:
    # Decided: rootCertFile is what the user trusts; a second root in it is trusted too.
    other = CertificateAuthority.create_root(key_type="ec")
    bundle = pki.ca.root_pem() + other.root_pem()
    r = _check(pki, other.issue_workload(ECHO_ID, key_type="ec"), bundle, "two-roots")
    assert r.verdict is Verdict.PASS, r.reason


def _bad_bundles(pki: MeshPKI, good: Issued) -> dict[str, tuple[bytes, str]]:
    return {
        "key-only": (key_pem(pki.ca.key), "rootCertFile"),
        "root-and-key": (pki.ca.root_pem() + key_pem(pki.ca.key), "private key"),
        "leaf": (cert_pem(good.cert), "not a CA"),
        "root-and-leaf": (pki.ca.root_pem() + cert_pem(good.cert), "not a CA"),
        "garbage": (b"\x00\xffgarbage" * 100, "rootCertFile"),
        "bad-pem": (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "rootCertFile",
        ),
        "empty": (b"", "rootCertFile"),
    }


@pytest.mark.parametrize(
    "case", ["key-only", "root-and-key", "leaf", "root-and-leaf", "garbage", "bad-pem", "empty"]
)
def test_a_bundle_that_is_not_ca_certificates_is_an_error(
    pki: MeshPKI, good: Issued, case: str
) -> None:
    bundle, words = _bad_bundles(pki, good)[case]
    r = _check(pki, good, bundle, case)
    assert r.verdict is Verdict.ERROR, (case, r.verdict, r.reason)
    assert words in r.reason and "\n" not in r.reason
