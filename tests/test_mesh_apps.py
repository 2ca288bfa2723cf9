"""mesh and xfcc-spoof against the header-reflecting apps people run, and against
apps written to mislead: real HTTP servers behind the sidecar stand-in (which appends
XFCC like a server sidecar, or forwards a forged one). Real Envoy: test_mesh_lab_liars."""

from __future__ import annotations

import pytest

from probe.checks.mesh import MeshCheck, judge
from probe.checks.meshcall import MeshResponse
from probe.checks.xfcc_spoof import XfccSpoofCheck
from probe.clusterstats import Transport, TransportSeen
from probe.model import Expect, Target
from probe.reflect import App
from probe.results import Verdict
from tests.reflect_apps import CASES, handler, render
from tests.runone import ECHO_ID, SRC, TD, run_app
from tests.sidecar_standin import SidecarBehaviour


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("app", list(App))
def test_every_app_in_every_name_case_proves_mtls(app: App, case: str) -> None:
    r = run_app(MeshCheck(), handler(app, case))
    assert r.verdict is Verdict.PASS, r
    assert r.evidence["app"] == app.value
    assert r.evidence["xfcc_trusted"]["By"] == [ECHO_ID] and r.evidence["xfcc_trusted"]["URI"] == [
        SRC
    ]
    s = run_app(XfccSpoofCheck(), handler(app, case))
    assert s.verdict is Verdict.PASS, s


@pytest.mark.parametrize("app", list(App))
def test_forged_xfcc_in_any_case_never_passes(app: App) -> None:
    """The app shows the forged element back under an UPPERCASE name, or with its
    value upper-cased: the forgery is still seen."""
    for b, kw in (
        (SidecarBehaviour(mode="forward"), {"case": "upper"}),
        (SidecarBehaviour(mode="forward"), {"xfcc_value_upper": True}),
        (SidecarBehaviour(mode="trusting"), {"case": "lower"}),
        (SidecarBehaviour(mode="trusting"), {"xfcc_value_upper": True, "case": "upper"}),
    ):
        r = run_app(XfccSpoofCheck(), handler(app, **kw), b)
        assert r.verdict is Verdict.FAIL, (b.mode, kw, r)
        assert r.observed in ("forged XFCC forwarded", "forged XFCC trusted")


@pytest.mark.parametrize("expect", [Expect.STRICT, Expect.PERMISSIVE])
def test_app_that_shows_no_xfcc_proves_nothing_for_spoof(expect: Expect) -> None:
    r = run_app(XfccSpoofCheck(), handler(App.HTTPBIN, drop_xfcc=True), expect=expect)
    assert r.verdict is Verdict.ERROR and "no XFCC at all" in r.reason
    m = run_app(MeshCheck(), handler(App.HTTPBIN, drop_xfcc=True), expect=expect)
    assert m.verdict is Verdict.FAIL and "no XFCC" in m.reason


def test_no_xfcc_at_a_disable_target_with_our_marker_passes_spoof() -> None:
    r = run_app(
        XfccSpoofCheck(),
        handler(App.HTTPBIN),
        SidecarBehaviour(mode="plaintext"),
        expect=Expect.DISABLE,
    )
    assert r.verdict is Verdict.PASS and "no XFCC at all" in r.reason


def test_canned_reflection_of_another_request_proves_nothing() -> None:
    """A page that always shows a perfect XFCC (copied from a real call) is not a
    reflection of this request: our marker header is missing."""
    canned = render(App.HTTPBIN, [("X-Forwarded-Client-Cert", f"By={ECHO_ID};Hash=ab;URI={SRC}")])
    for check in (MeshCheck(), XfccSpoofCheck()):
        r = run_app(check, handler(App.HTTPBIN, canned=canned), SidecarBehaviour(mode="plaintext"))
        assert r.verdict is Verdict.ERROR and "marker" in r.reason, r


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (f"By={ECHO_ID};URI={SRC};URI=spiffe://{TD}/ns/x/sa/y", "URI= appears 2 times"),
        (f"By={ECHO_ID};By=spiffe://{TD}/ns/x/sa/y;URI={SRC}", "By= appears 2 times"),
        (f"by={ECHO_ID};URI={SRC};uri={SRC}", "URI= appears 2 times"),
    ],
)
@pytest.mark.parametrize("app", [App.HTTPBIN, App.ISTIO_ECHO])
def test_two_identities_in_the_trusted_element_fail(app: App, raw: str, words: str) -> None:
    r = run_app(MeshCheck(), handler(app), SidecarBehaviour(mode="raw", raw_xfcc=raw))
    assert r.verdict is Verdict.FAIL and words in r.reason and "X.509-SVID" in r.reason


def test_echo_path_is_where_the_call_goes() -> None:
    seen: list[str] = []
    inner = handler(App.GO_HTTPBIN)

    class OnlyAtPath(inner):  # type: ignore[misc, valid-type]
        def do_GET(self) -> None:
            seen.append(self.path)
            if self.path != "/anything/headers":
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            super().do_GET()

    r = run_app(MeshCheck(), OnlyAtPath, echo_path="/anything/headers")
    assert r.verdict is Verdict.PASS and seen == ["/anything/headers"]
    seen.clear()
    r = run_app(MeshCheck(), OnlyAtPath)
    assert r.verdict is Verdict.ERROR and seen == ["/headers"]
    assert "GET /headers" in r.reason and "echoPath" in r.reason


# --- pure judgement: what the sidecar's counters may and may not conclude ------------------


@pytest.mark.parametrize(
    ("expect", "transport", "verdict"),
    [
        (Expect.STRICT, Transport.TLS, Verdict.PASS),
        (Expect.STRICT, Transport.PLAINTEXT, Verdict.FAIL),
        (Expect.STRICT, Transport.UNKNOWN, Verdict.ERROR),
        (Expect.PERMISSIVE, Transport.UNKNOWN, Verdict.ERROR),
        (Expect.DISABLE, Transport.TLS, Verdict.FAIL),
        (Expect.NONE, Transport.TLS, Verdict.FAIL),
        (Expect.NONE, Transport.PLAINTEXT, Verdict.PASS),
        (Expect.DISABLE, Transport.UNKNOWN, Verdict.PASS),
    ],
)
def test_non_echo_verdict_rests_on_the_sidecars_counters(
    expect: Expect, transport: Transport, verdict: Verdict
) -> None:
    target = Target("ns-a/web", "web.ns-a", 80, expect, identity=ECHO_ID, echo=False)
    seen = TransportSeen(transport, f"<{transport.value} evidence>", {"cluster": "c"})
    j = judge(target, SRC, MeshResponse(404, "istio-envoy", b"nope"), seen)
    assert j.verdict is verdict, j
    assert "HTTP 404" in j.reason and f"<{transport.value} evidence>" in j.reason
    if transport is not Transport.TLS:
        assert "mTLS proven" not in j.reason and "TLS handshake" not in j.reason
    if verdict is Verdict.ERROR:
        assert j.reason.startswith("reachable; mTLS not observable")
