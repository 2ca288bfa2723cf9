"""Red-team round 2 for foreign-client, with real pyOpenSSL servers holding their key.

- A TLS 1.3 server that takes our foreign certificate, issues its session tickets
  (OpenSSL writes them only after it verified our Certificate and Finished), and then
  sends a genuine, encrypted ``unknown_ca`` alert: it accepted the certificate; the
  late alert is a lie (``fail``, never ``pass``).
- The same server, but sending application data before the alert: accepted.
- A server that rejects only the wrong-trust-domain certificate but takes the
  own-identity one: ``fail``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

import pytest
from cryptography import x509
from OpenSSL import SSL

from probe import netio
from probe.checks.foreign_client import FOREIGN_TRUST_DOMAIN, ForeignClientCheck
from probe.model import Expect
from probe.pki import Issued
from probe.results import Verdict
from tests import hostile_tls as h
from tests.runone import ECHO_ID, run_one
from tests.tlsservers import (
    MeshPKI,
    keylogged_13,
    openssl_server_context,
    serve_http_once,
    serving,
)


def _records(data: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i + 5 <= len(data):
        n = int.from_bytes(data[i + 3 : i + 5], "big")
        out.append((data[i], data[i : i + 5 + n]))
        i += 5 + n
    return out


def _late_alert_13(issued: Issued, *, data_first: bool) -> Callable[[socket.socket], None]:
    """TLS 1.3 (AES-128-GCM), asks for a client certificate and accepts any. The
    handshake runs over memory BIOs so the test sees every record the server writes;
    after the handshake (session tickets included) it seals a fatal unknown_ca alert
    with the server's application traffic secret (from the key log) at the right
    sequence number: a genuine encrypted alert the client decrypts."""
    ctx, secrets = keylogged_13(issued)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        server = SSL.Connection(ctx, None)
        server.set_accept_state()
        last = b""
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
                if out:
                    conn.sendall(out)
                    last = out
                if done:
                    break
                chunk = conn.recv(65536)
                if not chunk:
                    return
                server.bio_write(chunk)
            # The last flight after the client's Finished: session tickets only, each
            # one application-data record under the server's application key.
            writer = h._Writer(secrets["SERVER_TRAFFIC_SECRET_0"])
            writer.seq = sum(1 for ctype, _ in _records(last) if ctype == h.APP_DATA)
            assert writer.seq > 0, "no session ticket: the test needs one"
            if data_first:
                server.sendall(b"220 ready\r\n")
                conn.sendall(server.bio_read(65536))
                writer.seq += 1
            conn.sendall(writer.seal(h.ALERT, bytes([2, 48])))
            netio.set_io_timeout(conn, 3)
            while conn.recv(65536):
                pass

    return handle


@pytest.mark.parametrize("data_first", [False, True])
def test_ticket_then_unknown_ca_alert_is_acceptance(pki: MeshPKI, data_first: bool) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(_late_alert_13(issued, data_first=data_first)) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki, timeout=2.0)
    assert r.verdict is Verdict.FAIL, r.reason


def _rejects_only_foreign_domain(issued: Issued) -> Callable[[socket.socket], None]:
    """Asks for a client certificate; rejects (unknown_ca via the verify callback) only
    the wrong-trust-domain one; serves the own-identity foreign one."""

    def verify(_c: SSL.Connection, cert: object, _e: int, depth: int, _ok: int) -> bool:
        if depth != 0:
            return True
        leaf = cert.to_cryptography()  # type: ignore[attr-defined]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        return not any(FOREIGN_TRUST_DOMAIN in u for u in uris)

    ctx = openssl_server_context(issued)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)

    return serve_http_once(ctx)


def test_rejecting_only_the_wrong_trust_domain_fails(pki: MeshPKI) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(_rejects_only_foreign_domain(issued)) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki, timeout=2.0)
    assert r.verdict is Verdict.FAIL, r.reason
    assert "own identity" in r.reason
    assert str(r.evidence["foreign CA, wrong trust domain"]).startswith("rejected")


def _preemptive_13(issued: Issued) -> Callable[[socket.socket], None]:
    """TLS 1.3, asks for a client certificate, and appends to its own flight (same
    write) a genuine unknown_ca alert sealed under its application traffic secret: the
    alert exists before our certificate could have been read."""
    ctx, secrets = keylogged_13(issued)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        server = SSL.Connection(ctx, None)
        server.set_accept_state()
        with contextlib.suppress(OSError, SSL.Error):
            server.bio_write(conn.recv(65536))  # the ClientHello (one segment on loopback)
            with contextlib.suppress(SSL.WantReadError):
                server.do_handshake()
            flight = b""
            with contextlib.suppress(SSL.WantReadError):
                while True:
                    flight += server.bio_read(65536)
            # After its Finished a TLS 1.3 server writes under its application key.
            writer = h._Writer(secrets["SERVER_TRAFFIC_SECRET_0"])
            conn.sendall(flight + writer.seal(h.ALERT, bytes([2, 48])))
            netio.set_io_timeout(conn, 3)
            while conn.recv(65536):
                pass

    return handle


def test_preemptive_encrypted_alert_13_is_not_a_rejection(pki: MeshPKI) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(_preemptive_13(issued)) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki, timeout=2.0)

    assert r.verdict is Verdict.ERROR, r.reason
    assert "pre-emptive" in r.reason, r.reason
