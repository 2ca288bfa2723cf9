"""Our chain verdict (probe.svid.verify_chain) against the `openssl verify` command
on generated chains: trust anchors with pathLenConstraint, name constraints,
unknown critical extensions, validity of every element, CA flags and key usage.
The two must agree on every chain; the cases that must fail say so too."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe.pki import CA_KEY_USAGE, ISTIO_KEY_USAGE, cert_pem
from probe.svid import verify_chain

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
LEAF_ID = "spiffe://cluster.local/ns/ns-a/sa/echo"
UNKNOWN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1.1")
KEYS = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]  # root, inter1, inter2, leaf
NO_KEY_CERT_SIGN = x509.KeyUsage(True, False, False, False, False, False, True, False, False)


@dataclass(frozen=True)
class Element:
    """One certificate of a generated chain."""

    ca: bool = True
    path_len: int | None = None
    valid_from: int = -10  # days relative to NOW
    valid_to: int = 100
    unknown_critical: bool = False
    permitted_uri: str | None = None  # a URI name constraint (CAs only)
    key_cert_sign: bool = True


@dataclass(frozen=True)
class Case:
    root: Element = field(default_factory=Element)
    inters: tuple[Element, ...] = ()
    leaf: Element = field(default_factory=lambda: Element(ca=False))
    present_inters: bool = True
    leaf_signed_by_stranger: bool = False


def _build(case: Case) -> tuple[x509.Certificate, list[x509.Certificate], x509.Certificate]:
    elements = [case.root, *case.inters, case.leaf]
    certs: list[x509.Certificate] = []
    for i, el in enumerate(elements):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"level {i}")])
        is_leaf = i == len(elements) - 1
        issuer_name = certs[-1].subject if i else name
        signer = KEYS[min(i - 1, 2)] if i else KEYS[0]
        if is_leaf and case.leaf_signed_by_stranger:
            signer = ec.generate_private_key(ec.SECP256R1())
        key = KEYS[3] if is_leaf else KEYS[min(i, 2)]
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]) if is_leaf else name)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(1000 + i)
            .not_valid_before(NOW + el.valid_from * DAY)
            .not_valid_after(NOW + el.valid_to * DAY)
            .add_extension(x509.BasicConstraints(ca=el.ca, path_length=el.path_len), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if el.ca:
            b = b.add_extension(CA_KEY_USAGE if el.key_cert_sign else NO_KEY_CERT_SIGN, True)
        else:
            b = b.add_extension(ISTIO_KEY_USAGE, True)
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(LEAF_ID)]), True
            )
        if i:
            b = b.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
            )
        if el.permitted_uri is not None:
            nc = x509.NameConstraints([x509.UniformResourceIdentifier(el.permitted_uri)], None)
            b = b.add_extension(nc, True)
        if el.unknown_critical:
            b = b.add_extension(x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"), True)
        certs.append(b.sign(signer, hashes.SHA256()))
    return certs[0], certs[1:-1], certs[-1]


def openssl_says(case: Case, tmp: Path) -> tuple[bool, str]:
    root, inters, leaf = _build(case)
    (tmp / "root.pem").write_bytes(cert_pem(root))
    (tmp / "leaf.pem").write_bytes(cert_pem(leaf))
    argv = ["openssl", "verify", "-attime", str(int(NOW.timestamp())), "-CAfile", "root.pem"]
    if inters and case.present_inters:
        (tmp / "inters.pem").write_bytes(b"".join(cert_pem(c) for c in inters))
        argv += ["-untrusted", "inters.pem"]
    argv.append("leaf.pem")
    out = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, timeout=30)
    return out.returncode == 0, (out.stdout + out.stderr).strip()


def ours(case: Case) -> str | None:
    root, inters, leaf = _build(case)
    presented = [leaf, *inters] if case.present_inters else [leaf]
    return verify_chain(leaf, presented[1:], [root], NOW)


INTER = Element(path_len=0)
CASES: dict[str, tuple[Case, bool]] = {
    "root-leaf": (Case(), True),
    "root-inter-leaf": (Case(inters=(INTER,)), True),
    "intermediate-not-presented": (Case(inters=(INTER,), present_inters=False), False),
    "leaf-signed-by-a-stranger": (Case(leaf_signed_by_stranger=True), False),
    "anchor-pathlen-0-with-intermediate": (
        Case(root=Element(path_len=0), inters=(INTER,)),
        False,
    ),
    "anchor-pathlen-1-with-intermediate": (
        Case(root=Element(path_len=1), inters=(INTER,)),
        True,
    ),
    "intermediate-pathlen-0-over-another": (Case(inters=(INTER, INTER)), False),
    "intermediate-pathlen-1-over-another": (Case(inters=(Element(path_len=1), INTER)), True),
    "name-constraint-ok": (Case(inters=(Element(permitted_uri="cluster.local"),)), True),
    "name-constraint-violated": (Case(inters=(Element(permitted_uri="other.example"),)), False),
    "anchor-name-constraint-violated": (
        Case(root=Element(permitted_uri="other.example")),
        False,
    ),
    "unknown-critical-extension-on-leaf": (
        Case(leaf=Element(ca=False, unknown_critical=True)),
        False,
    ),
    "unknown-critical-extension-on-intermediate": (
        Case(inters=(Element(path_len=0, unknown_critical=True),)),
        False,
    ),
    "expired-intermediate": (Case(inters=(Element(path_len=0, valid_to=-1),)), False),
    "not-yet-valid-intermediate": (Case(inters=(Element(path_len=0, valid_from=1),)), False),
    "not-yet-valid-root": (Case(root=Element(valid_from=1)), False),
    "expired-root": (Case(root=Element(valid_to=-1)), False),
    "intermediate-not-a-ca": (Case(inters=(Element(ca=False),)), False),
    "intermediate-without-keycertsign": (
        Case(inters=(Element(path_len=0, key_cert_sign=False),)),
        False,
    ),
    "expired-leaf": (Case(leaf=Element(ca=False, valid_to=-1)), False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_chain_verdict_matches_openssl(name: str, tmp_path: Path) -> None:
    case, valid = CASES[name]
    ok, said = openssl_says(case, tmp_path)
    why = ours(case)
    assert ok is valid, f"openssl verify disagrees with the case's expectation: {said}"
    assert (why is None) is ok, f"ours: {why!r}; openssl: {said}"


_elements = st.builds(
    lambda window, **kw: Element(valid_from=window[0], valid_to=window[1], **kw),
    window=st.sampled_from([(-10, 100), (-10, -1), (1, 100)]),
    path_len=st.sampled_from([None, 0, 1]),
    unknown_critical=st.booleans(),
    permitted_uri=st.sampled_from([None, "cluster.local", "other.example"]),
    key_cert_sign=st.booleans(),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    root=_elements,
    inters=st.lists(_elements, max_size=2).map(tuple),
    leaf_expired=st.booleans(),
    present=st.booleans(),
)
def test_generated_chains_match_openssl(
    tmp_path: Path,
    root: Element,
    inters: tuple[Element, ...],
    leaf_expired: bool,
    present: bool,
) -> None:
    leaf = Element(ca=False, valid_to=-1 if leaf_expired else 100)
    case = Case(root=root, inters=inters, leaf=leaf, present_inters=present)
    ok, said = openssl_says(case, tmp_path)
    why = ours(case)
    assert (why is None) is ok, f"{case}: ours {why!r}; openssl: {said}"


def test_unknown_critical_extension_is_named(tmp_path: Path) -> None:
    why = ours(replace(CASES["unknown-critical-extension-on-intermediate"][0]))
    assert why is not None and "unhandled critical extension" in why, why
    assert "level 1" in why, why
