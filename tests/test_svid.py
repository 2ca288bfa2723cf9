"""X.509-SVID judgement as a pure function: every rule, chains, hostile certificates."""

from __future__ import annotations

import datetime as dt
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.pki import CertificateAuthority, Issued
from probe.svid import SvidJudgement, judge_svid

TD = "cluster.local"
ECHO = f"spiffe://{TD}/ns/ns-a/sa/echo"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create_root(TD, key_type="ec")


def judge(
    chain: list[x509.Certificate],
    roots: list[x509.Certificate] | None,
    *,
    identity: str | None = ECHO,
    now: dt.datetime | None = None,
) -> SvidJudgement:
    return judge_svid(
        chain,
        expected_identity=identity,
        trust_domain=TD,
        roots=roots,
        # The moment of judging, not of import: a long suite must not age the certificates.
        now=now or dt.datetime.now(dt.UTC),
        min_remaining=dt.timedelta(hours=6),
        max_lifetime=dt.timedelta(days=90),
    )


def presented(issued: Issued) -> list[x509.Certificate]:
    """What a TLS server sends: the leaf and intermediates, never the root."""
    return [issued.cert, *issued.chain[:-1]]


def test_istio_like_svid_is_valid_with_evidence(ca: CertificateAuthority) -> None:
    issued = ca.issue_workload(ECHO, key_type="ec")
    j = judge(presented(issued), [ca.root])
    assert j.ok, j.violations
    ev = j.evidence
    assert ev["san_uris"] == [ECHO] and ev["chain_verified"] is True
    assert ev["key_type"] == "EC secp256r1" and ev["key_size"] == 256
    assert ev["issuer"] == ca.root.subject.rfc4514_string()
    assert ev["serial"] == format(issued.cert.serial_number, "x")
    assert ev["fingerprint_sha256"] == issued.cert.fingerprint(hashes.SHA256()).hex()
    assert 0 < ev["remaining_seconds"] <= ev["lifetime_seconds"]


def test_rsa_svid_reports_key_size(ca: CertificateAuthority) -> None:
    j = judge(presented(ca.issue_workload(ECHO, key_type="rsa")), [ca.root])
    assert j.ok and j.evidence["key_type"] == "RSA" and j.evidence["key_size"] == 2048


def test_without_roots_chain_is_skipped_and_said(ca: CertificateAuthority) -> None:
    j = judge(presented(ca.issue_workload(ECHO, key_type="ec")), None)
    assert j.ok and j.evidence["chain_verified"] is None
    assert "chain not verified" in j.evidence["chain_note"]


def test_plugin_ca_intermediate_chains_to_root(ca: CertificateAuthority) -> None:
    inter = ca.issue_intermediate(key_type="ec")
    issued = inter.issue_workload(ECHO, key_type="ec")
    assert judge(presented(issued), [ca.root]).ok
    # Without the intermediate in the presented chain there is no path.
    j = judge([issued.cert], [ca.root])
    assert any("no valid path to the mesh root" in v for v in j.violations)


def test_foreign_root_and_forged_intermediate_fail(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create_root(TD, key_type="ec")
    j = judge(presented(other.issue_workload(ECHO, key_type="ec")), [ca.root])
    assert any("no valid path" in v for v in j.violations)
    # A foreign intermediate named like a real one does not help.
    forged = other.issue_intermediate(key_type="ec")
    j = judge(presented(forged.issue_workload(ECHO, key_type="ec")), [ca.root])
    assert not j.ok


def test_expired_and_not_yet_valid_measured_against_now(ca: CertificateAuthority) -> None:
    issued = ca.issue_workload(ECHO, key_type="ec")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    assert any("expired" in v for v in judge(presented(issued), [ca.root], now=later).violations)
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    assert any(
        "not yet valid" in v for v in judge(presented(issued), [ca.root], now=earlier).violations
    )
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=20)
    assert any(
        "minimum remaining" in v for v in judge(presented(issued), [ca.root], now=soon).violations
    )


def test_identity_not_compared_without_expectation(ca: CertificateAuthority) -> None:
    issued = ca.issue_workload(f"spiffe://{TD}/ns/x/sa/y", key_type="ec")
    assert judge(presented(issued), [ca.root], identity=None).ok
    assert not judge(presented(issued), [ca.root]).ok


def test_no_certificate_is_a_violation() -> None:
    assert judge([], None).violations == ["the server presented no certificate"]


def test_crl_sign_and_no_digital_signature(ca: CertificateAuthority) -> None:
    ku = x509.KeyUsage(False, False, True, False, False, False, True, False, False)
    j = judge(presented(ca.issue([ECHO], key_type="ec", key_usage=ku)), [ca.root])
    assert any("digitalSignature" in v for v in j.violations)
    assert any("keyCertSign or cRLSign" in v for v in j.violations)


def test_eku_without_server_auth(ca: CertificateAuthority) -> None:
    issued = ca.issue([ECHO], key_type="ec", extended_key_usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    j = judge(presented(issued), [ca.root])
    assert any("serverAuth" in v for v in j.violations)


def _hand_made(exts: list[tuple[x509.ExtensionType, bool]], raw_dup: bool = False) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, TD)]))
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(hours=24))
    )
    for ext, critical in exts:
        b = b.add_extension(ext, critical)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_duplicate_extension_is_a_violation_not_a_crash() -> None:
    # cryptography refuses to build two SANs, so encode a stand-in OID of the same
    # length (2.5.29.99) and rewrite it to the SAN OID (2.5.29.17) in the DER.
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ECHO)])
    stand_in = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.99"), san.public_bytes())
    der = _hand_made([(san, True), (stand_in, True)])
    dup = der.replace(bytes.fromhex("0603551d63"), bytes.fromhex("0603551d11"), 1)
    cert = x509.load_der_x509_certificate(dup)
    j = judge([cert], None)
    assert any("unreadable" in v for v in j.violations), j.violations


def _try_load(der: bytes) -> x509.Certificate | None:
    try:
        with warnings.catch_warnings():  # e.g. a negative serial: parsed, with a warning
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            return x509.load_der_x509_certificate(der)
    except Exception:  # ValueError, and InvalidVersion which is not one
        return None


def test_garbage_san_is_a_violation() -> None:
    bad = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("2.5.29.17"), b"\x30\x03\x86\x01\xff"
    )  # SAN OID with an URI that is not IA5
    cert = x509.load_der_x509_certificate(_hand_made([(bad, True)]))
    j = judge([cert], None)
    assert not j.ok
    assert any("unreadable" in v or "URI SAN" in v for v in j.violations), j.violations


def test_bad_basic_constraints_and_key_usage_bytes() -> None:
    bc = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.19"), b"\x30\x03\x02\x01\x05")
    ku = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.15"), b"\x04\x00")
    cert = x509.load_der_x509_certificate(_hand_made([(bc, True), (ku, True)]))
    j = judge([cert], None)
    assert not j.ok


@pytest.fixture(scope="module")
def valid_der(ca: CertificateAuthority) -> bytes:
    return ca.issue_workload(ECHO, key_type="ec").cert.public_bytes(serialization.Encoding.DER)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_certificates_never_crash(
    data: st.DataObject, valid_der: bytes, ca: CertificateAuthority
) -> None:
    der = bytearray(valid_der)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(der) - 1))
        der[i] = data.draw(st.integers(0, 255))
    cert = _try_load(bytes(der))
    if cert is None:
        return
    j = judge([cert, ca.root], [ca.root])
    assert isinstance(j.violations, list) and isinstance(j.evidence, dict)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_random_der_never_crashes(blob: bytes) -> None:
    cert = _try_load(blob)
    if cert is not None:
        judge([cert], None)


def test_path_length_constraint_is_enforced(ca: CertificateAuthority) -> None:
    # Every pki intermediate has pathLenConstraint 0: a second level under it breaks it.
    inner = ca.issue_intermediate("outer", key_type="ec").issue_intermediate("inner", key_type="ec")
    j = judge(presented(inner.issue_workload(ECHO, key_type="ec")), [ca.root])
    assert any("path length constraint" in v for v in j.violations), j.violations
