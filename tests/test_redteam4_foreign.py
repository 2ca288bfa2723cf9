"""Red-team round 4 for foreign-client: servers that "verify" a client certificate by
its issuer's name or key identifier instead of its signature (a hand-rolled check,
the classic bug). An attacker's CA can copy the mesh root's subject and key identifier,
so the probe's run-time CA does too: such a server must take our certificate (fail).
Before round 4 the run-time CA was named ``O=mtlsprobe run-time foreign CA`` and these
servers rejected it: a wrong pass. Real pyOpenSSL servers holding their key; the honest
OpenSSL verifier (signature checked) still rejects, and so does real Envoy
(tests/test_plain_envoy.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from cryptography import x509
from OpenSSL import SSL, crypto

from probe.checks.foreign_client import ForeignClientCheck
from probe.model import Expect
from probe.pki import Issued
from probe.results import Verdict
from tests.runone import ECHO_ID, run_one
from tests.tlsservers import MeshPKI, openssl_server_context, serve_http_once, serving

Trusts = Callable[[x509.Certificate, x509.Certificate], bool]


def _by_issuer_name(leaf: x509.Certificate, root: x509.Certificate) -> bool:
    return leaf.issuer == root.subject


def _by_key_identifier(leaf: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return False
    return aki.key_identifier == ski.digest


def _name_trusting_server(
    issued: Issued, root: x509.Certificate, trusts: Trusts, *, signature_too: bool = False
) -> Callable[[socket.socket], None]:
    """Asks for a client certificate and decides by ``trusts(leaf, mesh root)`` alone
    (``signature_too``: and OpenSSL's own verification against the mesh root, the honest
    server); rejects with OpenSSL's alert otherwise, serves HTTP when it accepts."""

    def verify(_c: SSL.Connection, cert: object, _err: int, depth: int, ok: int) -> bool:
        if depth != 0:
            return True if not signature_too else bool(ok)
        leaf = cert.to_cryptography()  # type: ignore[attr-defined]
        return trusts(leaf, root) and (bool(ok) or not signature_too)

    ctx = openssl_server_context(issued)
    store = ctx.get_cert_store()
    assert store is not None
    store.add_cert(crypto.X509.from_cryptography(root))
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)

    return serve_http_once(ctx)


@pytest.mark.parametrize(
    ("trusts", "with_root_file"),
    [(_by_issuer_name, True), (_by_key_identifier, True), (_by_issuer_name, False)],
    ids=["issuer-name", "key-identifier", "issuer-name-without-rootCertFile"],
)
def test_server_trusting_the_issuer_name_or_key_id_fails(
    pki: MeshPKI, trusts: Trusts, with_root_file: bool
) -> None:
    """Without rootCertFile the run-time CA still copies Istio's root subject
    (``O=<trust domain>``), so the name-trusting server takes it; the root's key
    identifier is only known from the file."""
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(_name_trusting_server(issued, pki.ca.cert, trusts)) as srv:
        r = run_one(
            ForeignClientCheck(),
            srv.endpoint,
            Expect.STRICT,
            pki if with_root_file else None,
            timeout=2.0,
        )
    assert r.verdict is Verdict.FAIL, r.reason
    assert "accepted" in r.reason, r.reason


@pytest.mark.parametrize("trusts", [_by_issuer_name, _by_key_identifier])
def test_server_that_also_checks_the_signature_still_rejects(pki: MeshPKI, trusts: Trusts) -> None:
    """The honest server: name or key identifier to find the issuer, then the signature
    (OpenSSL against the mesh root). Our copied CA fails the signature: rejected, pass."""
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    server = _name_trusting_server(issued, pki.ca.cert, trusts, signature_too=True)
    with serving(server) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki, timeout=2.0)
    assert r.verdict is Verdict.PASS, r.reason
