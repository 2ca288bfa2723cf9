"""A small CA that issues what istiod issues (docs/istio-behaviour.md, Workload certificates).

Used by the foreign-client check (a CA made at run time that the mesh must not
trust), by the lab's mesh CA, and by tests that need every kind of bad certificate:
each deviation from an Istio X.509-SVID is an explicit keyword argument.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["rsa", "ec"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

WORKLOAD_LIFETIME = dt.timedelta(hours=24)
ROOT_LIFETIME = dt.timedelta(days=3650)
# istiod backdates NotBefore to tolerate clock skew between nodes.
NOT_BEFORE_SKEW = dt.timedelta(minutes=2)

# The key usage Istio puts on workload certificates: digitalSignature + keyEncipherment.
ISTIO_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
BOTH_AUTH = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def new_key(key_type: KeyType = "rsa") -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM of a private key. Only for writing files Envoy reads; never log it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Issued:
    """A leaf certificate, its key, and the chain above it (root last)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]

    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def chain_pem(self, *, include_root: bool = False) -> bytes:
        """Leaf then intermediates (what a TLS server sends); the root only on request."""
        certs = [self.cert, *self.chain]
        if not include_root and len(certs) > 1:
            certs = certs[:-1]
        return b"".join(cert_pem(c) for c in certs)


class CertificateAuthority:
    """A signing CA (root or intermediate)."""

    def __init__(
        self, cert: x509.Certificate, key: PrivateKey, parents: Sequence[x509.Certificate] = ()
    ) -> None:
        self.cert = cert
        self.key = key
        # Chain above this CA, root last (empty for a root).
        self.parents = tuple(parents)

    @property
    def root(self) -> x509.Certificate:
        return self.parents[-1] if self.parents else self.cert

    def root_pem(self) -> bytes:
        return cert_pem(self.root)

    @classmethod
    def create_root(
        cls,
        trust_domain: str = "cluster.local",
        *,
        key_type: KeyType = "rsa",
        lifetime: dt.timedelta = ROOT_LIFETIME,
        now: dt.datetime | None = None,
        organization: str | None = None,
        subject: x509.Name | None = None,
        key_id: bytes | None = None,
    ) -> CertificateAuthority:
        """A self-signed root like Istio's: subject O=<trust domain>. ``subject`` and
        ``key_id`` (its SubjectKeyIdentifier) let a root impersonate another by name and
        key identifier, with a key of its own (the foreign-client check's CA)."""
        key = new_key(key_type)
        now = now or _now()
        name = subject or x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization or trust_domain)]
        )
        ski = (
            x509.SubjectKeyIdentifier(key_id)
            if key_id is not None
            else x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - NOT_BEFORE_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(CA_KEY_USAGE, critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        """Our SubjectKeyIdentifier as issued certificates name it (the same digest as
        from our public key, unless this CA carries another's identifier)."""
        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    def issue_intermediate(
        self,
        common_name: str = "intermediate",
        *,
        key_type: KeyType = "rsa",
        lifetime: dt.timedelta = dt.timedelta(days=365),
    ) -> CertificateAuthority:
        key = new_key(key_type)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "intermediate"),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - NOT_BEFORE_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(CA_KEY_USAGE, critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                self._authority_key_id(),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return CertificateAuthority(cert, key, (self.cert, *self.parents))

    def issue(
        self,
        uris: Sequence[str] = (),
        *,
        key: PrivateKey | None = None,
        key_type: KeyType = "rsa",
        subject: x509.Name | None = None,
        dns_names: Sequence[str] = (),
        lifetime: dt.timedelta = WORKLOAD_LIFETIME,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        is_ca: bool = False,
        key_usage: x509.KeyUsage | None = ISTIO_KEY_USAGE,
        key_usage_critical: bool = True,
        extended_key_usage: Sequence[x509.ObjectIdentifier] | None = BOTH_AUTH,
        san_critical: bool | None = None,
    ) -> Issued:
        """Issue a leaf. Defaults are exactly an Istio workload certificate; every
        keyword exists so tests can break one SVID rule at a time.

        ``key`` lets many certificates share one key (the lab at scale: RSA keygen is
        the slow part, and certificates stay distinct)."""
        key = key or new_key(key_type)
        now = _now()
        nb = not_before or (now - NOT_BEFORE_SKEW)
        na = not_after or (nb + NOT_BEFORE_SKEW + lifetime)
        subject = subject if subject is not None else x509.Name([])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .add_extension(
                self._authority_key_id(),
                critical=False,
            )
        )
        if key_usage is not None:
            builder = builder.add_extension(key_usage, critical=key_usage_critical)
        if extended_key_usage is not None:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False
            )
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns_names]
        if names:
            # SPIFFE: the SAN must be critical when the subject is empty.
            critical = san_critical if san_critical is not None else len(subject) == 0
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=critical)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert=cert, key=key, chain=(self.cert, *self.parents))

    def issue_workload(
        self,
        spiffe_id: str,
        *,
        key: PrivateKey | None = None,
        key_type: KeyType = "rsa",
        lifetime: dt.timedelta = WORKLOAD_LIFETIME,
    ) -> Issued:
        """What istiod issues for ``spiffe://<td>/ns/<ns>/sa/<sa>``."""
        return self.issue([spiffe_id], key=key, key_type=key_type, lifetime=lifetime)
