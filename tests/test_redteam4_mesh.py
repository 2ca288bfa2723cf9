"""Red-team round 4 for ``mesh`` / ``xfcc-spoof``: honest apps whose HTTP is unusual but
real must still pass (gzip, HTTP/1.0 close-delimited, a 100 Continue before the answer,
a Go struct's ``Headers`` key), and reflections that carry two header maps or a second
spelling of XFCC must not. Real HTTP servers behind the sidecar stand-in (it appends
the server sidecar's XFCC element, as Envoy's inbound does)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from probe.checks.mesh import MeshCheck
from probe.checks.xfcc_spoof import XfccSpoofCheck
from probe.model import Source
from probe.pki import CertificateAuthority
from probe.reflect import App, parse_reflection
from probe.results import Verdict
from tests.reflect_apps import handler, render, serving
from tests.runone import ECHO_ID, SRC, echo_target, run_app, run_target
from tests.sidecar_standin import (
    DUMP,
    SidecarBehaviour,
    admin_handler,
    dump_doc,
    http_server,
    sidecar,
)

Body = Callable[[list[tuple[str, str]]], bytes]


def _raw_app(respond: Callable[[bytes], bytes], body: Body) -> type[BaseHTTPRequestHandler]:
    """An app that writes its own response bytes (status line and all): ``respond``
    frames what ``body`` renders from the request headers it got."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.close_connection = True
            self.wfile.write(respond(body(list(self.headers.items()))))

    return Handler


def _httpbin(headers: list[tuple[str, str]]) -> bytes:
    return render(App.HTTPBIN, headers)


def _go_struct(headers: list[tuple[str, str]]) -> bytes:
    """``json.Marshal(struct{ Headers http.Header; Method, URL string })``: no json tags,
    so the keys are the Go field names."""
    grouped: dict[str, list[str]] = {}
    for k, v in headers:
        grouped.setdefault("-".join(p.capitalize() for p in k.split("-")), []).append(v)
    return json.dumps({"Method": "GET", "URL": "/headers", "Headers": grouped}).encode()


def _gzip(body: bytes) -> bytes:
    z = gzip.compress(body)
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(z) + z
    )


def _http10(body: bytes) -> bytes:
    # no content-length: the body ends when the server closes
    return b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n" + body


def _continue_first(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
    )


@pytest.mark.parametrize(
    ("respond", "body"),
    [
        (_gzip, _httpbin),
        (_http10, _httpbin),
        (_continue_first, _httpbin),
        (_http10, _go_struct),
    ],
    ids=["gzip", "http1.0-close-delimited", "100-continue", "go-struct-Headers"],
)
def test_honest_apps_with_unusual_http_pass(respond: Callable[[bytes], bytes], body: Body) -> None:
    """Before round 4 the Go struct's ``Headers`` key was not read: an honest app became
    an error ("not a header reflection")."""
    for check in (MeshCheck(), XfccSpoofCheck()):
        r = run_app(check, _raw_app(respond, body))
        assert r.verdict is Verdict.PASS, (check.name, r)


def test_two_header_maps_in_two_cases_are_not_a_reflection() -> None:
    """``headers`` and ``Headers`` side by side: which one the app received is unknown
    (one may be the app's own story), so nothing is read from it."""
    body = json.dumps(
        {
            "headers": {"X-Forwarded-Client-Cert": f"By={ECHO_ID};URI=x"},
            "Headers": {"X-Forwarded-Client-Cert": ["By=other;URI=y"]},
        }
    ).encode()
    assert parse_reflection(body) is None


def _appending_xfcc(value: str, spelling: str) -> Body:
    """An app that shows what it got, then one more XFCC value under another spelling of
    the name (as a second header line would be shown)."""

    def body(headers: list[tuple[str, str]]) -> bytes:
        grouped: dict[str, list[str]] = {}
        for k, v in headers:
            grouped.setdefault(k, []).append(v)
        grouped.setdefault(spelling, []).append(value)
        return json.dumps({"headers": grouped}).encode()

    return body


@pytest.mark.parametrize("spelling", ["x-forwarded-client-cert", "X-FORWARDED-CLIENT-CERT"])
def test_a_second_xfcc_line_naming_another_server_is_trusted_last(spelling: str) -> None:
    """The genuine element arrives, then the app shows a second XFCC value (another
    spelling of the name) naming another server: the combined header's last element is
    that one, so ``By=`` is wrong - a fail, never a pass."""
    other = "By=spiffe://cluster.local/ns/evil/sa/x;URI=spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"
    r = run_app(MeshCheck(), _raw_app(_http10, _appending_xfcc(other, spelling)))
    assert r.verdict is Verdict.FAIL and "ns/evil/sa/x" in r.reason, r


def test_fabricated_element_naming_an_identity_the_sidecar_does_not_hold() -> None:
    """Liar: the app is reached in plaintext (the stand-in appends nothing) and shows a
    perfect element, By= the target, URI= source.identity, a made-up Hash=. The probe's
    sidecar admin presents another identity, so the element cannot be bound to this
    probe's connection. Before round 4 the hash was "not compared" and both checks
    passed; now neither does."""
    ca = CertificateAuthority.create_root("cluster.local", key_type="ec")
    other = ca.issue_workload("spiffe://cluster.local/ns/mtlsprobe/sa/other", key_type="ec")
    fabricated = f'By={ECHO_ID};Hash={"ab" * 32};Subject="";URI={SRC}'
    app = handler(App.HTTPBIN, fabricate=fabricated)
    with (
        serving(app) as upstream,
        sidecar(SidecarBehaviour(mode="plaintext", upstream=upstream)) as proxy,
        http_server(admin_handler({DUMP: dump_doc(other, ca.root_pem())})) as admin,
    ):
        source = Source(identity=SRC, sidecar_proxy=proxy, sidecar_admin=admin)
        for check in (MeshCheck(), XfccSpoofCheck()):
            r = run_target(check, echo_target(), source)
            assert r.verdict is Verdict.ERROR, (check.name, r)
            assert "no certificate for source.identity" in r.reason, r


def _self_trusting_sidecar(upstream: tuple[str, int]) -> type[BaseHTTPRequestHandler]:
    """Liar server side (an inbound filter or app middleware): drops the client's XFCC
    elements that some other proxy wrote (``By=`` not the target) but keeps those
    claiming ``By=`` the target itself, then appends the genuine element. Before round 4
    the forged element said ``By=…/sa/forged-<marker>``, was dropped, and the check
    passed, though an attacker's element naming the target goes straight through."""
    import http.client

    from probe.xfcc import format_xfcc, parse_xfcc

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in ("proxy-connection", "x-forwarded-client-cert")
            }
            client = self.headers.get("x-forwarded-client-cert", "")
            kept = [e for e in parse_xfcc(client) if e.by == (ECHO_ID,)] if client else []
            genuine = f'By={ECHO_ID};Hash=ab12;Subject="";URI={SRC}'
            headers["x-forwarded-client-cert"] = ",".join(
                ([format_xfcc(kept)] if kept else []) + [genuine]
            )
            conn = http.client.HTTPConnection(*upstream, timeout=5)
            path = self.path.split("://", 1)[-1]
            conn.request("GET", path[path.find("/") :], headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            self.send_response(resp.status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def test_forged_element_naming_the_target_itself_is_kept_by_a_self_trusting_server() -> None:
    with (
        serving(handler(App.HTTPBIN)) as upstream,
        http_server(_self_trusting_sidecar(upstream)) as proxy,
    ):
        r = run_target(XfccSpoofCheck(), echo_target(), Source(identity=SRC, sidecar_proxy=proxy))
    assert r.verdict is Verdict.FAIL and r.observed == "forged XFCC forwarded", r
    assert r.evidence["forged"]["By"] == [ECHO_ID], r.evidence


def test_app_hiding_xfcc_on_a_plaintext_expected_port_fails_when_tls_was_counted() -> None:
    """Liar: the port is expected DISABLE, the call was mTLS, and the app leaves XFCC out
    of its reflection. Before round 4 echo targets never consulted the sidecar's
    counters: "no XFCC, as DISABLE expects" passed. Pure judgement over what the probe
    saw (the counters' reading is tests/test_clusterstats.py's)."""
    from probe.checks.mesh import judge
    from probe.checks.meshcall import MeshResponse
    from probe.clusterstats import Transport, TransportSeen
    from probe.model import Expect

    body = render(App.HTTPBIN, [("X-Mtlsprobe-Marker", "m1")])
    resp = MeshResponse(200, "istio-envoy", body, reflection=parse_reflection(body), marker="m1")
    target = echo_target(expect=Expect.DISABLE)
    tls = TransportSeen(Transport.TLS, "<tls counted>", {"cluster": "c"})
    j = judge(target, SRC, resp, tls)
    assert j.verdict is Verdict.FAIL and "<tls counted>" in j.reason, j
    unknown = TransportSeen(Transport.UNKNOWN, "<no stats>", {"cluster": "c"})
    assert judge(target, SRC, resp, unknown).verdict is Verdict.PASS  # as before
