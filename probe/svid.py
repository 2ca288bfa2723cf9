"""X.509-SVID rules (spiffe/spiffe standards/X509-SVID.md) as a pure judgement,
layered on OpenSSL's path validation (``verify_chain``).

``judge_svid`` never raises on a hostile certificate: anything cryptography cannot
read (malformed or duplicate extensions) becomes a violation naming it.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import crypto

from probe.spiffe import SpiffeIdError, parse_spiffe_id
from probe.textsafe import line

MAX_CHAIN = 8


@dataclass
class SvidJudgement:
    violations: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


def _key_description(cert: x509.Certificate) -> tuple[str, int | None]:
    try:
        key = cert.public_key()
    except Exception:
        return "unreadable", None
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}", key.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__, None


def _ext(cert: x509.Certificate, cls: type[Any], problems: list[str]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None
    except Exception as exc:  # malformed/duplicate extensions from a hostile server
        problems.append(f"certificate extensions unreadable: {exc}")
        return None


def describe(cert: x509.Certificate) -> dict[str, Any]:
    """Evidence about a certificate: what a person needs to find it. No key material."""
    key_type, key_size = _key_description(cert)
    out: dict[str, Any] = {
        "subject": _name(cert, "subject"),
        "issuer": _name(cert, "issuer"),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "key_type": key_type,
        "key_size": key_size,
    }
    return out


def _safe(fn: Callable[[], object]) -> str:
    """Hostile certificates can make any lazily parsed field raise on access."""
    try:
        return str(fn())
    except Exception:
        return "<unreadable>"


def _name(cert: x509.Certificate, which: str) -> str:
    return _safe(lambda: getattr(cert, which).rfc4514_string())


# OpenSSL verify codes for the leaf's own validity period: the SVID rules report
# those (once, with dates), so the path result does not repeat them.
_LEAF_TIME_ERRORS = frozenset({9, 10})  # X509_V_ERR_CERT_NOT_YET_VALID, _HAS_EXPIRED


def verify_chain(
    leaf: x509.Certificate,
    presented: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: dt.datetime,
    native: Sequence[crypto.X509] | None = None,
) -> str | None:
    """Path validation from ``leaf`` through presented intermediates to one of
    ``roots`` at ``now``, by OpenSSL's X509_verify_cert (pyOpenSSL's X509Store),
    the same family of path rules Envoy's BoringSSL applies: signatures, validity of
    every element, basicConstraints and pathLenConstraint (the trust anchor's
    too), keyCertSign, name constraints, unknown critical extensions. Not
    cryptography's ``x509.verification``: as of 50.0 it refuses URI name
    constraints ("unsupported name constraint"), which SPIFFE CAs use. Returns
    None when a valid path exists, else why not; a leaf that is merely outside its
    own validity period returns ``LEAF_TIME`` (the SVID rules say when).

    ``native``: ``[leaf, *presented]`` as OpenSSL objects (what the handshake gave),
    used as they are instead of converting each certificate back."""
    try:
        store = _store(roots)
        store.set_time(now)
        if native is not None and len(native) == len(presented) + 1:
            target = native[0]
            pairs = zip(presented[:MAX_CHAIN], native[1 : MAX_CHAIN + 1], strict=False)
            untrusted = [n for c, n in pairs if c != leaf]
        else:
            untrusted = [
                crypto.X509.from_cryptography(c) for c in presented[:MAX_CHAIN] if c != leaf
            ]
            target = crypto.X509.from_cryptography(leaf)
    except Exception as exc:  # a certificate OpenSSL cannot take back
        return f"the chain could not be loaded for path validation: {exc}"
    try:
        crypto.X509StoreContext(store, target, untrusted).verify_certificate()
    except crypto.X509StoreContextError as exc:
        code, depth, message = [*exc.errors, None, None, str(exc)][:3]
        if depth == 0 and code in _LEAF_TIME_ERRORS:
            return LEAF_TIME
        failing = exc.certificate
        where = "the leaf" if depth == 0 else _safe(lambda: _subject(failing))
        return f"no valid path to the mesh root: {message} (at {where}, chain depth {depth})"
    return None


LEAF_TIME = "the leaf is outside its validity period"

_stores = threading.local()


def _store(roots: Sequence[x509.Certificate]) -> crypto.X509Store:
    """An X509Store holding ``roots``, built once per thread and bundle instead of once
    per check. Per thread because ``set_time`` changes the store itself; a store is only
    read while one of its thread's checks verifies, so nothing else sees that time."""
    key = tuple(roots)
    cached: tuple[tuple[x509.Certificate, ...], crypto.X509Store] | None = getattr(
        _stores, "entry", None
    )
    if cached is not None and cached[0] == key:
        return cached[1]
    store = crypto.X509Store()
    for root in roots:
        store.add_cert(_openssl_root(root))
    _stores.entry = (key, store)
    return store


@functools.lru_cache(maxsize=64)
def _openssl_root(root: x509.Certificate) -> crypto.X509:
    """A trust anchor converted to pyOpenSSL once per process, not once per check (the
    bundle is the same for every check of a run; certificates hash and compare by DER)."""
    return crypto.X509.from_cryptography(root)


def _subject(cert: crypto.X509) -> str:
    return cert.to_cryptography().subject.rfc4514_string() or "<empty subject>"


def judge_svid(
    chain: Sequence[x509.Certificate],
    *,
    expected_identity: str | None,
    trust_domain: str,
    roots: Sequence[x509.Certificate] | None,
    now: dt.datetime,
    min_remaining: dt.timedelta,
    max_lifetime: dt.timedelta,
    native: Sequence[crypto.X509] | None = None,
) -> SvidJudgement:
    """``native``: ``chain`` as OpenSSL objects, if the caller has them (see verify_chain)."""
    j = SvidJudgement()
    v = j.violations
    if not chain:
        v.append("the server presented no certificate")
        return j
    leaf = chain[0]
    j.evidence.update(describe(leaf))
    j.evidence["chain_length"] = len(chain)

    problems: list[str] = []
    san_ext = _ext(leaf, x509.SubjectAlternativeName, problems)
    uris: list[str] = []
    if san_ext is not None:
        try:
            uris = list(san_ext.value.get_values_for_type(x509.UniformResourceIdentifier))
            j.evidence["san_dns"] = list(san_ext.value.get_values_for_type(x509.DNSName))
        except Exception as exc:
            problems.append(f"SAN unreadable: {exc}")
    j.evidence["san_uris"] = uris
    if len(uris) != 1:
        v.append(f"an X.509-SVID has exactly one URI SAN; this certificate has {len(uris)}")
    spiffe_id = None
    if len(uris) == 1:
        try:
            spiffe_id = parse_spiffe_id(uris[0])
            j.evidence["spiffe_id"] = uris[0]
        except SpiffeIdError as exc:
            v.append(f"URI SAN {uris[0]!r} is not a SPIFFE ID: {exc}")
    try:
        subject_empty = len(leaf.subject) == 0
    except Exception:
        subject_empty = False
    if san_ext is not None and subject_empty and not san_ext.critical:
        v.append("the subject is empty, so the SAN extension must be critical; it is not")

    bc = _ext(leaf, x509.BasicConstraints, problems)
    if bc is not None and bc.value.ca:
        v.append("the leaf is a CA certificate (basicConstraints CA=true)")

    ku = _ext(leaf, x509.KeyUsage, problems)
    if ku is None:
        v.append("key usage extension missing (an SVID must have digitalSignature)")
    else:
        if not ku.critical:
            v.append("key usage extension is not critical")
        if not ku.value.digital_signature:
            v.append("key usage lacks digitalSignature")
        if ku.value.key_cert_sign or ku.value.crl_sign:
            v.append("key usage of a leaf SVID includes keyCertSign or cRLSign")

    eku = _ext(leaf, x509.ExtendedKeyUsage, problems)
    if eku is not None:
        missing = [
            name
            for oid, name in (
                (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
                (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
            )
            if oid not in eku.value
        ]
        if missing:
            v.append(f"extended key usage lacks {' and '.join(missing)}")
    v.extend(dict.fromkeys(problems))

    if spiffe_id is not None:
        if spiffe_id.trust_domain != trust_domain:
            v.append(f"trust domain {spiffe_id.trust_domain!r} is not the mesh's {trust_domain!r}")
        if expected_identity is not None and uris[0] != expected_identity:
            v.append(f"identity is {uris[0]}, expected {expected_identity}")

    nb, na = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    remaining = na - now
    j.evidence["remaining_seconds"] = int(remaining.total_seconds())
    j.evidence["lifetime_seconds"] = int((na - nb).total_seconds())
    if now < nb:
        v.append(f"not yet valid (notBefore {nb.isoformat()})")
    elif now > na:
        v.append(f"expired at {na.isoformat()}")
    elif remaining < min_remaining:
        v.append(
            f"expires in {_human(remaining)}, below the minimum remaining {_human(min_remaining)}"
            " (rotation may have stopped)"
        )
    if na - nb > max_lifetime:
        v.append(f"lifetime {_human(na - nb)} exceeds the maximum {_human(max_lifetime)}")

    if roots is None:
        j.evidence["chain_verified"] = None
        j.evidence["chain_note"] = "no rootCertFile: chain not verified to the mesh root"
    else:
        why = verify_chain(leaf, chain[1:], roots, now, native)
        j.evidence["chain_verified"] = why is None
        if why == LEAF_TIME:
            j.evidence["chain_note"] = "not verified: " + LEAF_TIME
        elif why is not None:
            v.append(why)
    return j


def _human(delta: dt.timedelta) -> str:
    secs = int(delta.total_seconds())
    if secs >= 86400 * 2:
        return f"{secs / 86400:.1f}d"
    if secs >= 3600:
        return f"{secs / 3600:.1f}h"
    if secs >= 60:
        return f"{secs / 60:.0f}m"
    return f"{secs}s"


def load_roots(pem: bytes) -> list[x509.Certificate]:
    """The CA certificates of a trust bundle. ValueError when it is not one: a private
    key (the wrong file, and a secret that must not sit in a trust bundle) or a
    certificate that is not a CA (a leaf is no trust anchor: judging a server against
    it would blame the server for the user's file)."""
    if b"PRIVATE KEY-----" in pem:
        raise ValueError("holds a private key: a trust bundle holds only root certificates")
    roots = list(x509.load_pem_x509_certificates(pem))
    for cert in roots:
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except (x509.ExtensionNotFound, ValueError):
            ca = False
        if not ca:
            subject = line(_name(cert, "subject") or "<empty subject>", 120)
            raise ValueError(
                f"certificate {subject} is not a CA (no basicConstraints CA=true): not a trust "
                "anchor"
            )
    return roots
