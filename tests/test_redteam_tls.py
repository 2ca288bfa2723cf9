"""Red-team liars for foreign-client not covered in test_hostile_tls: a server that
holds its key and asks for a certificate, but sends its certificate alert before it
could have read ours (pre-emptive), so the alert says nothing about our certificate.
Real pyOpenSSL servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import select
import socket
import time
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
from tests.tlsservers import MeshPKI, serving


def _preemptive_12(issued: Issued, delay: float = 0.0) -> Callable[[socket.socket], None]:
    """TLS 1.2, asks for a client certificate, and right after its ServerHelloDone (before
    the client's flight can arrive; ``delay`` s later for a slow liar) writes a plaintext
    fatal unknown_ca alert without reading anything of the client's, then drains."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate(issued.cert)  # type: ignore[arg-type]
    ctx.use_privatekey(issued.key)  # type: ignore[arg-type]
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *_: True)

    def handle(conn: socket.socket) -> None:
        conn.setblocking(False)
        server = SSL.Connection(ctx, conn)
        server.set_accept_state()
        select.select([conn], [], [], 5)
        for _ in range(50):
            try:
                server.do_handshake()
                return
            except SSL.WantReadError:
                st = server.get_state_string().decode()
                if "read client certificate" in st or "server done" in st:
                    break
                select.select([conn], [], [], 5)
            except SSL.Error:
                return
        conn.setblocking(True)
        netio.set_io_timeout(conn, 5)
        time.sleep(delay)
        conn.sendall(h.alert_record(48))  # before reading anything of the client's flight
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    return handle


@pytest.mark.parametrize("delay", [0.0, 0.02], ids=["at-once", "20ms-late"])
def test_preemptive_certificate_alert_is_not_a_rejection(pki: MeshPKI, delay: float) -> None:
    """The client holds its flight (at least 50 ms) after the server's ends: an alert
    that arrives meanwhile was written without our certificate, even a little late
    (a loaded machine delays the liar's write past the moment its flight is read)."""
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(_preemptive_12(issued, delay)) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki, timeout=2.0)
    assert r.verdict is not Verdict.PASS, r
