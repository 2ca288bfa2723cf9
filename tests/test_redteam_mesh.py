"""Red-team liars for mesh / xfcc-spoof not covered elsewhere: apps that mangle the
reflection so a forged XFCC is hidden, and apps that drip the reflection forever.
Real HTTP servers behind the sidecar stand-in."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from probe.checks.mesh import MeshCheck
from probe.checks.meshcall import MAX_BODY
from probe.checks.xfcc_spoof import XfccSpoofCheck
from probe.model import Source
from probe.reflect import App
from probe.results import Verdict
from tests.reflect_apps import render, serving
from tests.runone import ECHO_ID, SRC, echo_target, run_app, run_target
from tests.sidecar_standin import SidecarBehaviour


def _truncating(app: App, width: int) -> type[BaseHTTPRequestHandler]:
    """An app that shows every header value cut to ``width`` characters (as some
    dashboards and echo apps do): a forged XFCC that reached it loses its marker."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen = [(k, v[:width]) for k, v in self.headers.items()]
            body = render(app, seen)
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def test_forged_xfcc_hidden_by_a_truncating_app_never_passes() -> None:
    """The server side trusts the client's XFCC (the forged element reaches the app as
    the trusted one), but the app shows values cut short, so the marker is gone. What
    is left is not the genuine element the server sidecar writes: not a pass."""
    for app in App:
        r = run_app(XfccSpoofCheck(), _truncating(app, 40), SidecarBehaviour(mode="trusting"))
        assert r.verdict is not Verdict.PASS, (app, r)


def test_xfcc_of_another_identity_is_no_genuine_element_for_spoof() -> None:
    """A proxy in between replaced XFCC with its own element (By= some other workload):
    the genuine element of the target's sidecar is not shown, so nothing proves the
    forged one was dropped by the mesh rather than hidden."""
    raw = "By=spiffe://cluster.local/ns/edge/sa/proxy;URI=spiffe://cluster.local/ns/x/sa/y"
    r = run_app(
        XfccSpoofCheck(),
        _truncating(App.HTTPBIN, 10_000),
        SidecarBehaviour(mode="raw", raw_xfcc=raw),
    )
    assert r.verdict is not Verdict.PASS, r


def test_genuine_element_still_passes_spoof() -> None:
    r = run_app(XfccSpoofCheck(), _truncating(App.HTTPBIN, 10_000))
    assert r.verdict is Verdict.PASS, r


class _DripProxy(BaseHTTPRequestHandler):
    """Stands where the probe's sidecar proxy is and answers a chunked reflection one
    byte every 0.5 s, each read well inside the 2 s timeout: without an overall
    deadline the probe would wait for ever."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = render(App.HTTPBIN, list(self.headers.items())) + b" " * 4096
        self.send_response(200)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            for i in range(len(body)):
                self.wfile.write(b"1\r\n" + body[i : i + 1] + b"\r\n")
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            return


def test_slowloris_reflection_is_bounded_and_not_a_pass() -> None:
    """Timeout is 2 s: the whole call must end within a few timeouts, as an error."""
    with serving(_DripProxy) as (host, port):
        for check in (MeshCheck(), XfccSpoofCheck()):
            source = Source(identity=SRC, sidecar_proxy=f"http://{host}:{port}")
            t0 = time.monotonic()
            r = run_target(check, echo_target(), source)
            took = time.monotonic() - t0
            assert took < 12, (check.name, took)
            assert r.verdict is Verdict.ERROR, r


GENUINE = f"By={ECHO_ID};URI={SRC}"
WRONG_LAST = f"{GENUINE},By=spiffe://cluster.local/ns/evil/sa/x;URI={SRC}"


class _CutAtTheCap(BaseHTTPRequestHandler):
    """An Istio-echo shaped reflection padded so that the probe's body cap falls right
    after the first XFCC element: read whole, its trusted (last) element names the
    wrong server; cut at the cap, the first element looks trusted."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        marker = self.headers.get("x-mtlsprobe-marker", "")
        head = (
            "ServiceVersion=v1\nServicePort=8080\nURL=/headers\nMethod=GET\nProto=HTTP/1.1\n"
            f"RequestHeader=X-Mtlsprobe-Marker:{marker}\nRequestHeader=A-Pad:"
        ).encode()
        xfcc = f"\nRequestHeader=X-Forwarded-Client-Cert:{WRONG_LAST}\n".encode()
        cut = xfcc.index(b",") + 1
        pad = b"p" * (MAX_BODY - len(head) - cut)
        body = head + pad + xfcc
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            return


def test_reflection_cut_at_the_size_cap_is_not_read_as_one() -> None:
    with serving(_CutAtTheCap) as (host, port):
        source = Source(identity=SRC, sidecar_proxy=f"http://{host}:{port}")
        r = run_target(MeshCheck(), echo_target(), source)
    assert r.verdict is not Verdict.PASS, r
