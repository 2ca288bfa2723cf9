"""mesh and xfcc-spoof through a stand-in for the probe's sidecar (an HTTP proxy
that appends XFCC like a server sidecar, or answers like Envoy), the real echo
responder behind it, real sockets. Real Envoy is covered by the lab tests."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from probe.checks.base import Check, RunContext, Settings
from probe.checks.mesh import MeshCheck
from probe.checks.xfcc_spoof import XfccSpoofCheck
from probe.engine import run_checks
from probe.model import Expect, Protocol, Source, Target, TargetsFile
from probe.results import Result, Verdict
from tests.runone import echo_target, run_target
from tests.sidecar_standin import (
    SidecarBehaviour,
    admin_handler,
    app_handler,
    http_server,
    sidecar,
)
from tests.tlsservers import nothing_listening

TD = "cluster.local"
SRC = f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe"
ECHO = f"spiffe://{TD}/ns/ns-a/sa/echo"


def run(
    check: Check,
    proxy: str | None,
    *,
    expect: Expect = Expect.STRICT,
    echo: bool = True,
    identity: str | None = ECHO,
    source: str | None = SRC,
    host: str = "echo.ns-a.svc.cluster.local",
    port: int = 8080,
    protocol: Protocol = Protocol.HTTP,
    timeout: float = 2.0,
    admin: str | None = None,
) -> Result:
    target = echo_target(
        host=host, port=port, expect=expect, identity=identity, echo=echo, protocol=protocol
    )
    probe = Source(identity=source, sidecar_proxy=proxy, sidecar_admin=admin)
    return run_target(check, target, probe, timeout=timeout)


def mesh_via(b: SidecarBehaviour, **kw: object) -> Result:
    with sidecar(b) as proxy:
        return run(MeshCheck(), proxy, **kw)  # type: ignore[arg-type]


# --- mesh: STRICT / PERMISSIVE, echo targets ------------------------------------------------


@pytest.mark.parametrize("expect", [Expect.STRICT, Expect.PERMISSIVE])
def test_mesh_pass_with_exact_identities(echo: tuple[str, int], expect: Expect) -> None:
    b = SidecarBehaviour(upstream=echo)
    r = mesh_via(b, expect=expect)
    assert r.verdict is Verdict.PASS, r
    assert r.evidence["xfcc_trusted"]["URI"] == [SRC]
    assert r.evidence["xfcc_trusted"]["By"] == [ECHO]
    assert r.evidence["xfcc_trusted"]["Hash"] == "ab12"
    assert r.evidence["server"] == "istio-envoy" and r.evidence["status"] == 200
    assert b.seen_hosts == ["echo.ns-a.svc.cluster.local:8080"]
    assert set(r.to_dict()) >= {"check", "target", "verdict", "reason"}


def test_mesh_wrong_server_identity_names_both(echo: tuple[str, int]) -> None:
    other = f"spiffe://{TD}/ns/ns-a/sa/other"
    r = mesh_via(SidecarBehaviour(upstream=echo, by=other))
    assert r.verdict is Verdict.FAIL
    assert other in r.reason and ECHO in r.reason and "By=" in r.reason


def test_mesh_wrong_client_identity_fails(echo: tuple[str, int]) -> None:
    r = mesh_via(SidecarBehaviour(upstream=echo, uri=f"spiffe://{TD}/ns/x/sa/y"))
    assert r.verdict is Verdict.FAIL and "URI=" in r.reason and SRC in r.reason


def test_mesh_only_the_last_element_counts(echo: tuple[str, int]) -> None:
    # a genuine-looking element first, then the real hop with another server identity
    raw = f"By={ECHO};URI={SRC},By=spiffe://{TD}/ns/ns-a/sa/other;URI={SRC}"
    r = mesh_via(SidecarBehaviour(mode="raw", raw_xfcc=raw, upstream=echo))
    assert r.verdict is Verdict.FAIL and "sa/other" in r.reason
    assert r.evidence["xfcc_elements"] == 2


def test_mesh_no_xfcc_fails(echo: tuple[str, int]) -> None:
    r = mesh_via(SidecarBehaviour(mode="plaintext", upstream=echo))
    assert r.verdict is Verdict.FAIL and "no XFCC: the call was not mTLS" in r.reason


def test_mesh_malformed_xfcc_is_error(echo: tuple[str, int]) -> None:
    r = mesh_via(SidecarBehaviour(mode="raw", raw_xfcc='By=a;Subject="open', upstream=echo))
    assert r.verdict is Verdict.ERROR and "malformed" in r.reason


def test_mesh_unknown_identities_are_said(echo: tuple[str, int]) -> None:
    r = mesh_via(SidecarBehaviour(upstream=echo), identity=None, source=None)
    assert r.verdict is Verdict.PASS
    assert "By= not compared" in r.reason and "URI= not compared" in r.reason


def test_mesh_echo_target_without_echo_json_is_error() -> None:
    with http_server(app_handler(200, b"<html>hi</html>", "text/html")) as app:
        host, port = app.removeprefix("http://").split(":")
        r = mesh_via(SidecarBehaviour(upstream=(host, int(port))))
    assert r.verdict is Verdict.ERROR and "not a header reflection" in r.reason


# --- mesh: sidecar's own answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "words", "verdict"),
    [
        ("503", "reset reason: connection termination", Verdict.FAIL),
        ("san", "CERTIFICATE_VERIFY_FAILED", Verdict.FAIL),
        ("rbac", "RBAC: access denied", Verdict.ERROR),
        ("504", "upstream request timeout", Verdict.ERROR),
    ],
)
def test_mesh_sidecar_replies_carry_envoys_words(
    echo: tuple[str, int], mode: str, words: str, verdict: Verdict
) -> None:
    r = mesh_via(SidecarBehaviour(mode=mode, upstream=echo))
    assert r.verdict is verdict, r
    assert words in r.reason and words in r.evidence["sidecar_error"]


def test_mesh_san_failure_is_explained(echo: tuple[str, int]) -> None:
    r = mesh_via(SidecarBehaviour(mode="san", upstream=echo))
    assert "rejected the server's certificate" in r.reason


def test_mesh_envoy_body_counts_without_server_header(echo: tuple[str, int]) -> None:
    r = mesh_via(SidecarBehaviour(mode="503", upstream=echo, server="something"))
    assert r.verdict is Verdict.FAIL and "connection termination" in r.reason


def test_mesh_sidecar_503_fails_plaintext_targets_too(echo: tuple[str, int]) -> None:
    r = mesh_via(SidecarBehaviour(mode="503", upstream=echo), expect=Expect.DISABLE)
    assert r.verdict is Verdict.FAIL


# --- mesh: status-only and plaintext targets ---------------------------------------------------


@pytest.mark.parametrize("status", [200, 404])
def test_mesh_non_echo_without_sidecar_stats_is_not_a_pass(status: int) -> None:
    """An app's status proves reachability, not mTLS: without the sidecar's counters
    (the stand-in has no admin) the verdict is error and claims no mTLS."""
    with http_server(app_handler(status, b"app")) as app:
        host, port = app.removeprefix("http://").split(":")
        r = mesh_via(SidecarBehaviour(upstream=(host, int(port))), echo=False)
    assert r.verdict is Verdict.ERROR, r
    assert r.reason.startswith("reachable; mTLS not observable") and f"HTTP {status}" in r.reason
    assert "mTLS proven" not in r.reason and r.evidence["transport"]["seen"] == "unknown"


def test_mesh_non_echo_app_5xx_is_error() -> None:
    with http_server(app_handler(500, b"boom")) as app:
        host, port = app.removeprefix("http://").split(":")
        r = mesh_via(SidecarBehaviour(upstream=(host, int(port))), echo=False)
    assert r.verdict is Verdict.ERROR and "proves nothing" in r.reason


@pytest.mark.parametrize("expect", [Expect.DISABLE, Expect.NONE])
def test_mesh_plaintext_target_passes_without_xfcc(echo: tuple[str, int], expect: Expect) -> None:
    r = mesh_via(SidecarBehaviour(mode="plaintext", upstream=echo), expect=expect)
    assert r.verdict is Verdict.PASS and "no XFCC" in r.reason


@pytest.mark.parametrize("expect", [Expect.DISABLE, Expect.NONE])
def test_mesh_xfcc_at_plaintext_target_fails(echo: tuple[str, int], expect: Expect) -> None:
    r = mesh_via(SidecarBehaviour(upstream=echo), expect=expect)
    assert r.verdict is Verdict.FAIL and "expectation is stale" in r.reason


# --- mesh: could not observe ---------------------------------------------------------------------


def test_mesh_proxy_down_is_sidecar_unavailable() -> None:
    r = run(MeshCheck(), f"http://{nothing_listening()}")
    assert r.verdict is Verdict.ERROR and "sidecar proxy" in r.reason
    assert r.evidence["error"] == "sidecar-unavailable"


def test_mesh_sidecar_silent_is_timeout_error(echo: tuple[str, int]) -> None:
    t = time.monotonic()
    r = mesh_via(SidecarBehaviour(mode="hang", upstream=echo), timeout=0.5)
    assert r.verdict is Verdict.ERROR and "within 0.5s" in r.reason
    assert r.evidence["error"] == "read-timeout"
    assert time.monotonic() - t < 15  # the 0.5 s timeout, not the 30 s hang


def test_mesh_connection_closed_is_error(echo: tuple[str, int]) -> None:
    r = mesh_via(SidecarBehaviour(mode="close", upstream=echo))
    assert r.verdict is Verdict.ERROR and "without an HTTP response" in r.reason


@pytest.fixture(scope="module")
def pod_sidecar() -> Iterator[str]:
    """In a pod: no proxy; the sidecar's admin answers /ready (Envoy says LIVE)."""
    with http_server(admin_handler({"/ready": b"LIVE\n"})) as admin:
        yield admin


def test_mesh_in_pod_mode_nothing_listening_is_error(pod_sidecar: str) -> None:
    ep = nothing_listening()
    r = run(MeshCheck(), None, host=ep.host, port=ep.port, admin=pod_sidecar)
    assert r.verdict is Verdict.ERROR and "refused" in r.reason
    assert r.evidence["error"] == "nothing-listening"


def test_mesh_in_pod_mode_dns_failure_is_error(pod_sidecar: str) -> None:
    r = run(MeshCheck(), None, host="no-such-host.invalid", admin=pod_sidecar)
    assert r.verdict is Verdict.ERROR and "resolve" in r.reason
    assert r.evidence["error"] == "dns"


def test_mesh_in_pod_mode_direct(echo: tuple[str, int], pod_sidecar: str) -> None:
    # no sidecarProxy: the call goes straight to the service (the pod's sidecar would
    # capture it); straight to an echo app there is no XFCC, so STRICT fails
    r = run(MeshCheck(), None, host=echo[0], port=echo[1], admin=pod_sidecar)
    assert r.verdict is Verdict.FAIL and "no XFCC" in r.reason


@pytest.mark.parametrize("check", [MeshCheck(), XfccSpoofCheck()])
def test_no_proxy_and_no_sidecar_is_error_not_a_verdict(
    echo: tuple[str, int], check: Check
) -> None:
    r = run(check, None, host=echo[0], port=echo[1], admin=f"http://{nothing_listening()}")
    assert r.verdict is Verdict.ERROR and "no sidecar" in r.reason
    assert r.evidence["error"] == "sidecar-unavailable"
    with http_server(admin_handler({"/ready": 503})) as admin:
        r = run(check, None, host=echo[0], port=echo[1], admin=admin)
    assert r.verdict is Verdict.ERROR and "not ready" in r.reason


# --- mesh: tcp ports -----------------------------------------------------------------------------


def test_mesh_tcp_round_trip_alone_is_not_mtls(tcp_echo: tuple[str, int]) -> None:
    """Bytes coming back prove reachability only: no sidecar counters, no pass."""
    b = SidecarBehaviour(upstream=tcp_echo)
    r = mesh_via(b, protocol=Protocol.TCP, port=5432, host="db.ns-a.svc.cluster.local")
    assert r.verdict is Verdict.ERROR and r.reason.startswith("reachable; mTLS not observable")
    assert "our bytes came back" in r.reason
    assert b.seen_hosts == ["db.ns-a.svc.cluster.local:5432"]


def test_mesh_tcp_refused_tunnel_fails_with_envoys_words(tcp_echo: tuple[str, int]) -> None:
    r = mesh_via(SidecarBehaviour(mode="503", upstream=tcp_echo), protocol=Protocol.TCP)
    assert r.verdict is Verdict.FAIL and "connection termination" in r.reason


def test_mesh_tcp_closed_without_reply(tcp_echo: tuple[str, int]) -> None:
    b = SidecarBehaviour(mode="close", upstream=tcp_echo)
    assert mesh_via(b, protocol=Protocol.TCP).verdict is Verdict.FAIL
    assert mesh_via(b, protocol=Protocol.TCP, echo=False).verdict is Verdict.ERROR


def test_mesh_tcp_in_pod_mode_direct(tcp_echo: tuple[str, int], pod_sidecar: str) -> None:
    host, port = tcp_echo
    r = run(MeshCheck(), None, host=host, port=port, protocol=Protocol.TCP, admin=pod_sidecar)
    assert r.verdict is Verdict.ERROR and "records no TLS/connection stats" in r.reason


# --- xfcc-spoof ----------------------------------------------------------------------------------


def spoof_via(b: SidecarBehaviour, **kw: object) -> Result:
    with sidecar(b) as proxy:
        return run(XfccSpoofCheck(), proxy, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("expect", [Expect.STRICT, Expect.PERMISSIVE])
def test_spoof_dropped_passes_with_elements_seen(echo: tuple[str, int], expect: Expect) -> None:
    b = SidecarBehaviour(upstream=echo)
    r = spoof_via(b, expect=expect)
    assert r.verdict is Verdict.PASS, r
    assert r.evidence["xfcc_elements"] == [
        {"By": [ECHO], "URI": [SRC], "Hash": "ab12", "Subject": ""}
    ]
    # the forged header really was sent, with a unique marker identity
    (sent,) = b.seen_xfcc
    marker_uri = r.evidence["forged"]["URI"][0]
    assert marker_uri in sent and "/ns/mtlsprobe-forged/sa/" in marker_uri
    # By= names the target itself, as an attacker's element would (red-team round 4)
    assert r.evidence["forged"]["By"] == [ECHO]


def test_spoof_disable_target_dropped_passes(echo: tuple[str, int]) -> None:
    r = spoof_via(SidecarBehaviour(mode="plaintext", upstream=echo), expect=Expect.DISABLE)
    assert r.verdict is Verdict.PASS and "no XFCC at all" in r.reason


def test_spoof_forwarded_before_genuine_fails(echo: tuple[str, int]) -> None:
    r = spoof_via(SidecarBehaviour(mode="forward", upstream=echo))
    assert r.verdict is Verdict.FAIL and r.observed == "forged XFCC forwarded"
    assert r.evidence["forged_positions"] == [0] and "element 1 of 2" in r.reason


def test_spoof_trusted_as_last_is_the_worst_case(echo: tuple[str, int]) -> None:
    r = spoof_via(SidecarBehaviour(mode="trusting", upstream=echo))
    assert r.verdict is Verdict.FAIL and r.observed == "forged XFCC trusted"
    assert "LAST (trusted)" in r.reason


@pytest.mark.parametrize("mode", ["503", "san", "rbac"])
def test_spoof_sidecar_error_is_error_not_pass(echo: tuple[str, int], mode: str) -> None:
    r = spoof_via(SidecarBehaviour(mode=mode, upstream=echo))
    assert r.verdict is Verdict.ERROR and "could not observe" in r.reason


def test_spoof_no_response_is_error(echo: tuple[str, int]) -> None:
    assert spoof_via(SidecarBehaviour(mode="close", upstream=echo)).verdict is Verdict.ERROR
    r = run(XfccSpoofCheck(), f"http://{nothing_listening()}")
    assert r.verdict is Verdict.ERROR and r.evidence["error"] == "sidecar-unavailable"


def test_spoof_non_echo_app_is_error() -> None:
    with http_server(app_handler(200, b"{}", "application/json")) as app:
        host, port = app.removeprefix("http://").split(":")
        r = spoof_via(SidecarBehaviour(upstream=(host, int(port))))
    assert r.verdict is Verdict.ERROR and "not a header reflection" in r.reason


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"echo": False}, "echo: false"),
        ({"expect": Expect.NONE}, "no server sidecar"),
        ({"protocol": Protocol.TCP}, "tcp port"),
    ],
)
def test_spoof_skips(kw: dict[str, object], why: str) -> None:
    r = run(XfccSpoofCheck(), None, **kw)  # type: ignore[arg-type]
    assert r.verdict is Verdict.SKIP and why in r.reason


def test_mesh_requests_reuse_one_client(echo: tuple[str, int]) -> None:
    """One client per run: sequential calls to 40 targets share one kept-alive
    connection to the sidecar (building a client costs ~40 ms; see BENCHMARKS.md for
    the real-Envoy per-call time)."""
    targets = tuple(
        Target(
            name=f"ns-a/echo{i}",
            host="echo.ns-a",
            port=8080,
            expect=Expect.STRICT,
            identity=ECHO,
            echo=True,
        )
        for i in range(40)
    )
    b = SidecarBehaviour(upstream=echo)
    with sidecar(b) as proxy:
        tf = TargetsFile(trust_domain=TD, targets=targets, source=Source(SRC, proxy))
        ctx = RunContext(tf, Settings(timeout=2, concurrency=1))
        try:
            results = run_checks([MeshCheck()], ctx)
        finally:
            ctx.close()
    assert {r.verdict for r in results} == {Verdict.PASS}
    assert len(set(b.seen_peers)) == 1 and len(b.seen_peers) == 40
