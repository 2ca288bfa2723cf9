"""Red-team round 5 for foreign-client: a TLS 1.3 server that asks for a client
certificate, takes any, issues no session ticket, waits for our request (the
application layer got it: its side effects ran under a foreign identity) and only
then sends a genuine, encrypted certificate alert (``access_denied`` or
``bad_certificate``). A server whose TLS layer rejects a certificate alerts as soon
as it reads our flight, before any request; an alert that arrives only after our
request is no rejection signature. Before round 5 this server passed ("TLS alert
access denied after the server requested and got our certificate").

Also: a server whose CertificateRequest allows only RSA signatures, so the client
answers our ECDSA certificate's request with an empty Certificate; the server then
alerts certificate_required or serves the certificate-less caller. Never a pass before
either (error), but the reason said the handshake "did not get that far"; it now names
the empty Certificate."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

import pytest
from OpenSSL import SSL

from probe import netio
from probe.checks.foreign_client import ForeignClientCheck
from probe.model import Expect
from probe.pki import Issued
from probe.results import Verdict
from tests import hostile_tls as h
from tests.runone import ECHO_ID, run_one
from tests.tlsservers import MeshPKI, keylogged_13, openssl_server_context, serve_http_once, serving


def _alert_after_request(issued: Issued, alert: int) -> Callable[[socket.socket], None]:
    """The handshake over memory BIOs; the server's last flight (session tickets) is
    withheld, so the client sees no ticket. Once our request's bytes arrived, a fatal
    ``alert`` sealed under the server's application traffic secret at sequence 0."""
    ctx, secrets = keylogged_13(issued)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        server = SSL.Connection(ctx, None)
        server.set_accept_state()
        with contextlib.suppress(OSError, SSL.Error):
            while True:
                try:
                    server.do_handshake()
                    done = True
                except SSL.WantReadError:
                    done = False
                out = b""
                with contextlib.suppress(SSL.WantReadError):
                    while True:
                        out += server.bio_read(65536)
                if done:
                    break  # ``out``: the tickets, never sent
                if out:
                    conn.sendall(out)
                chunk = conn.recv(65536)
                if not chunk:
                    return
                server.bio_write(chunk)
            request = conn.recv(65536)  # the client's request: the app has it now
            if not request:
                return
            writer = h._Writer(secrets["SERVER_TRAFFIC_SECRET_0"])
            conn.sendall(writer.seal(h.ALERT, bytes([2, alert])))
            netio.set_io_timeout(conn, 3)
            while conn.recv(65536):
                pass

    return handle


@pytest.mark.parametrize("alert", [49, 42], ids=["access_denied", "bad_certificate"])
def test_certificate_alert_only_after_our_request_does_not_pass(pki: MeshPKI, alert: int) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(_alert_after_request(issued, alert)) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki, timeout=2.0)
    assert r.verdict is not Verdict.PASS, r.reason
    assert "after our request" in r.reason, r.reason


def _rsa_only_optional_auth(issued: Issued, *, require: bool) -> Callable[[socket.socket], None]:
    """Asks for a client certificate but allows only RSA signatures in its
    CertificateRequest: our ECDSA foreign certificate cannot be used, so the client
    sends an empty Certificate. ``require``: then alert certificate_required (a
    rejection of nothing we sent); else serve HTTP to the certificate-less caller."""
    from OpenSSL._util import lib

    ctx = openssl_server_context(issued)
    # pyOpenSSL has no setter; OpenSSL's CertificateRequest uses these sigalgs too.
    rsa_only = b"rsa_pss_rsae_sha256:RSA+SHA256"
    assert lib.SSL_CTX_set1_sigalgs_list(ctx._context, rsa_only) == 1
    flags = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if require else 0)
    ctx.set_verify(flags, lambda *_: True)  # any certificate would do

    return serve_http_once(ctx, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


@pytest.mark.parametrize("require", [True, False], ids=["certificate-required", "optional"])
def test_a_certificate_request_our_certificate_cannot_answer_is_no_pass(
    pki: MeshPKI, require: bool
) -> None:
    """The server never saw our certificate (an empty Certificate went out): whatever it
    does next, it says nothing about a foreign certificate."""
    issued = pki.ca.issue_workload(ECHO_ID, key_type="rsa")
    with serving(_rsa_only_optional_auth(issued, require=require)) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki, timeout=2.0)
    assert r.verdict is Verdict.ERROR, r.reason
    assert "empty Certificate" in r.reason, r.reason
