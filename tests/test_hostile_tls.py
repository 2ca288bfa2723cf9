"""Rules 1 and 2 of issue 10 against servers written to make peer-cert and
foreign-client lie: a copied certificate without its key never passes peer-cert,
and foreign-client passes only on a certificate alert after our certificate was
sent to a server that asked for it. Real servers on 127.0.0.1, no mocks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from probe import tls
from probe.checks.foreign_client import REJECTING_ALERTS, ForeignClientCheck, judge_attempt
from probe.checks.peer_cert import PeerCertCheck
from probe.model import Expect
from probe.pki import Issued
from probe.results import Verdict
from tests import hostile_tls as h
from tests.runone import ECHO_ID, run_one
from tests.tlsservers import MeshPKI, serving

V12, V13 = SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION


@pytest.fixture(scope="module", params=["ec", "rsa"])
def genuine(pki: MeshPKI, request: pytest.FixtureRequest) -> Issued:
    """The workload's real certificate, whose public chain the liars copied."""
    return pki.ca.issue_workload(ECHO_ID, key_type=request.param)


def _der(issued: Issued) -> list[bytes]:
    return [issued.cert.public_bytes(serialization.Encoding.DER)]


# --- peer-cert: a shown certificate is not a held one -------------------------------------

REPLAYS: dict[str, Callable[[list[bytes]], Callable[..., None]]] = {
    "tls13-forged-verify": lambda c: h.replay13(c, ending="forged-verify"),
    "tls13-garbage-verify": lambda c: h.replay13(c, ending="garbage-verify"),
    "tls13-alert-after-certificate": lambda c: h.replay13(c, ending="alert"),
    "tls13-silence-after-certificate": lambda c: h.replay13(c, ending="silence"),
    "tls13-request-then-forged-verify": lambda c: h.replay13(c, request_cert=True),
    "tls12-forged-key-exchange": h.replay12,
    "tls12-alert-after-certificate": lambda c: h.replay12(c, ending="alert"),
    "tls12-static-rsa-key-transport": lambda c: h.replay12(c, ending="rsa-key-transport"),
}


@pytest.mark.parametrize("kind", sorted(REPLAYS))
def test_replayed_certificate_never_passes_peer_cert(
    pki: MeshPKI, genuine: Issued, kind: str
) -> None:
    with serving(REPLAYS[kind](_der(genuine))) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, pki, timeout=1.0)
    assert r.verdict in (Verdict.FAIL, Verdict.ERROR), r
    assert r.evidence.get("possession") is None, r.evidence
    assert "chain_verified" not in r.evidence, r.evidence
    if "rsa-key-transport" in kind:  # we never offer a suite the server need not sign
        assert r.verdict is Verdict.ERROR and "wrong cipher" in r.reason, r
    elif "verify" in kind or "key-exchange" in kind:
        assert r.verdict is Verdict.FAIL and "does not hold the key" in r.reason, r
    elif "silence" not in kind:
        assert r.verdict is Verdict.ERROR and "before it proved it holds the key" in r.reason, r


def test_fake_alert_bytes_are_no_certificate(pki: MeshPKI) -> None:
    with serving(h.fake_alert) as srv:
        cert = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, pki)
        foreign = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki)
    assert cert.verdict is Verdict.ERROR, cert
    assert foreign.verdict is Verdict.ERROR and "before our certificate" in foreign.reason, foreign


@pytest.mark.parametrize("kind", sorted(REPLAYS))
def test_replayed_certificate_never_passes_foreign_client(
    pki: MeshPKI, genuine: Issued, kind: str
) -> None:
    """A liar that rejects everything must not look like a server rejecting us."""
    with serving(REPLAYS[kind](_der(genuine))) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki, timeout=1.0)
    assert r.verdict is Verdict.ERROR, r


@pytest.mark.parametrize("version", [V12, V13])
def test_key_holding_server_passes_peer_cert(pki: MeshPKI, genuine: Issued, version: int) -> None:
    """Control: the same certificate served by its key holder passes, with the proof named."""
    with serving(h.openssl_server(genuine, version=version, request_cert=True)) as srv:
        r = run_one(PeerCertCheck(), srv.endpoint, Expect.STRICT, pki)
    assert r.verdict is Verdict.PASS, r
    want = "CertificateVerify" if version == V13 else "handshake completed"
    assert want in r.evidence["possession"], r.evidence


# --- foreign-client: only a certificate alert after our certificate is a rejection -------------

ACCEPTING: list[tuple[int, bool, str]] = [
    # version, asks for a client certificate, what it does after the handshake
    *[(v, False, then) for v in (V12, V13) for then in ("serve", "rst", "fin")],
    *[
        (v, True, then)
        for v in (V12, V13)
        for then in ("serve", "fin", "close-notify", "rst", "banner", "fake-alert")
    ],
]


@pytest.mark.parametrize(
    ("version", "request_cert", "then"),
    ACCEPTING,
    ids=[
        f"{'1.2' if v == V12 else '1.3'}-{'request' if r else 'no-request'}-{t}"
        for v, r, t in ACCEPTING
    ],
)
def test_accepting_servers_never_pass_foreign_client(
    pki: MeshPKI, version: int, request_cert: bool, then: str
) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    server = h.openssl_server(issued, version=version, request_cert=request_cert, then=then)
    with serving(server) as srv:
        r = run_one(ForeignClientCheck(), srv.endpoint, Expect.STRICT, pki, timeout=1.0)
    assert r.verdict is Verdict.FAIL and r.observed == "accepted", r
    if not request_cert:
        assert "no CertificateRequest" in r.reason, r.reason
    elif version == V12:
        assert "completed a TLSv1.2 handshake" in r.reason, r.reason


# --- the pure judgement, on trails shaped like OpenSSL's (seen above on real servers) ------

HELLO = ["before SSL initialization", "SSLv3/TLS write client hello", "SSLv3/TLS read server hello"]
T13_SENT = [
    *HELLO,
    "TLSv1.3 read encrypted extensions",
    tls.ST_READ_CERT_REQUEST,
    tls.ST_READ_CERT,
    "TLSv1.3 read server certificate verify",
    "SSLv3/TLS read finished",
    "SSLv3/TLS write change cipher spec",
    "SSLv3/TLS write client certificate",
    tls.ST_WRITE_CERT_VERIFY,
    tls.ST_WRITE_FINISHED,
]
T12_SENT = [
    *HELLO,
    tls.ST_READ_CERT,
    "SSLv3/TLS read server key exchange",
    tls.ST_READ_CERT_REQUEST,
    "SSLv3/TLS read server done",
    "SSLv3/TLS write client certificate",
    tls.ST_WRITE_KEY_EXCHANGE,
    tls.ST_WRITE_CERT_VERIFY,
    "SSLv3/TLS write change cipher spec",
    tls.ST_WRITE_FINISHED,
]


def _hs(
    version: str, states: list[str], failure: str | None = None, alerts: tuple[str, ...] = ()
) -> tls.Handshake:
    return tls.Handshake(
        version=version,
        failure=failure,
        trail=tls.Trail(states=list(states), alerts_received=list(alerts)),
    )


def _after(kind: str, *, before: bool = False, alert: str | None = None) -> tls.After:
    return tls.After(kind, f"{kind} seen", alert, before_request=before)


JUDGED: dict[str, tuple[tls.Handshake, tls.After | None, str]] = {
    "1.3 certificate alert": (
        _hs("TLSv1.3", T13_SENT, alerts=("unknown ca",)),
        _after("alert", before=True, alert="unknown ca"),
        "rejected",
    ),
    "1.3 certificate alert after the request": (
        _hs("TLSv1.3", T13_SENT, alerts=("certificate required",)),
        _after("alert", alert="certificate required"),
        "error",
    ),
    "1.3 alert naming no certificate": (
        _hs("TLSv1.3", T13_SENT, alerts=("internal error",)),
        _after("alert", before=True, alert="internal error"),
        "error",
    ),
    "1.3 handshake failure alert": (
        _hs("TLSv1.3", T13_SENT, alerts=("handshake failure",)),
        _after("alert", before=True, alert="handshake failure"),
        "error",
    ),
    "1.3 answer": (_hs("TLSv1.3", T13_SENT), _after("data"), "accepted"),
    "1.3 banner": (_hs("TLSv1.3", T13_SENT), _after("data", before=True), "accepted"),
    "1.3 no ticket, RST after the request": (
        _hs("TLSv1.3", T13_SENT),
        _after("reset"),
        "accepted",
    ),
    "1.3 no ticket, FIN after the request": (_hs("TLSv1.3", T13_SENT), _after("eof"), "accepted"),
    "1.3 no ticket, close_notify": (
        _hs("TLSv1.3", T13_SENT),
        _after("close-notify", before=True),
        "accepted",
    ),
    "1.3 ticket then RST at once": (
        _hs("TLSv1.3", [*T13_SENT, tls.ST_READ_TICKET]),
        _after("reset", before=True),
        "accepted",
    ),
    "1.3 RST at once, no alert": (
        _hs("TLSv1.3", T13_SENT),
        _after("reset", before=True),
        "error",
    ),
    "1.3 FIN at once, no alert": (_hs("TLSv1.3", T13_SENT), _after("eof", before=True), "error"),
    "1.3 silence": (_hs("TLSv1.3", T13_SENT), _after("silent"), "error"),
    "1.3 fake alert bytes": (_hs("TLSv1.3", T13_SENT), _after("tls-error", before=True), "error"),
    "1.2 certificate alert in the handshake": (
        _hs("TLSv1.2", T12_SENT, "TLS alert: bad certificate", ("bad certificate",)),
        None,
        "rejected",
    ),
    "1.2 RST after our flight": (
        _hs("TLSv1.2", T12_SENT, "connection reset/closed by the server"),
        None,
        "error",
    ),
    "1.2 completed": (_hs("TLSv1.2", T12_SENT), None, "accepted"),
    "1.2 alert before our certificate": (
        _hs("TLSv1.2", HELLO, "TLS alert: unknown ca", ("unknown ca",)),
        None,
        "error",
    ),
    "1.3 no CertificateRequest": (
        _hs(
            "TLSv1.3",
            [
                s
                for s in T13_SENT
                if s not in (tls.ST_READ_CERT_REQUEST, tls.ST_WRITE_CERT_VERIFY)
                and "client certificate" not in s
            ],
        ),
        None,
        "accepted",
    ),
}


@pytest.mark.parametrize("name", sorted(JUDGED))
def test_judge_attempt(name: str) -> None:
    hs, after, outcome = JUDGED[name]
    a = judge_attempt("x", hs, after)
    assert a.outcome == outcome, a


_ALL_STATES = sorted({*T13_SENT, *T12_SENT, tls.ST_READ_TICKET})
_ALERTS = sorted({*tls.ALERT_NAMES.values()})


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from(["TLSv1.2", "TLSv1.3", None]),
    states=st.lists(st.sampled_from(_ALL_STATES), max_size=14),
    failure=st.sampled_from([None, "TLS alert: x", "connection reset/closed by the server"]),
    alerts=st.lists(st.sampled_from(_ALERTS), max_size=2),
    after=st.one_of(
        st.none(),
        st.builds(
            tls.After,
            kind=st.sampled_from(["alert", "data", "close-notify", "eof", "reset", "tls-error"]),
            detail=st.just("seen"),
            alert=st.one_of(st.none(), st.sampled_from(_ALERTS)),
            before_request=st.booleans(),
        ),
    ),
)
def test_a_rejection_always_rests_on_the_signature(
    version: str | None,
    states: list[str],
    failure: str | None,
    alerts: list[str],
    after: tls.After | None,
) -> None:
    """Whatever the trail: rejected only when our certificate was sent (so the
    server asked and proved its key) and a certificate alert came back."""
    hs = _hs(version or "", states, failure, tuple(alerts))
    hs.version = version
    a = judge_attempt("x", hs, after)
    if a.outcome == "rejected":
        assert hs.sent_client_cert and hs.possession is not None
        said = after.alert if (hs.completed and after is not None) else hs.server_alert
        assert said in REJECTING_ALERTS


# --- the contract: no rootCertFile is not exit 0 ----------------------------------------


@pytest.mark.parametrize("with_root", [True, False])
def test_check_command_without_root_cert_file_does_not_exit_0(
    pki: MeshPKI, tmp_path: Path, with_root: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.cli.main import main as cli_main
    from tests.tlsservers import tls_handler

    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(tls_handler(pki, issued)) as srv:
        doc = {
            "trustDomain": "cluster.local",
            "targets": [
                {
                    "name": "ns-a/echo",
                    "host": "echo.ns-a.svc.cluster.local",
                    "port": 8080,
                    "endpoints": [str(srv.endpoint)],
                    "identity": ECHO_ID,
                    "expect": "STRICT",
                }
            ],
        }
        if with_root:
            doc["rootCertFile"] = str(pki.root_file)
        (tmp_path / "t.json").write_text(json.dumps(doc))
        code = cli_main(["check", "-f", str(tmp_path / "t.json"), "--checks", "peer-cert"])
    out = capsys.readouterr().out
    assert code == (0 if with_root else 2), out
    if not with_root:
        assert "rootCertFile" in out, out
