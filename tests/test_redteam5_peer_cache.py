"""Red-team round 5 on peer-cert's chain cache (one judgement per chain, expectation
and second). Round 4's tests/test_peer_cert_cache.py covers a liar serving a judged
chain without its key (TLS 1.2 and 1.3), another identity on the same chain and a new
second. Here: a chain judged valid one second and expired the next (the certificate
expires between two checks of one run), and TLS 1.2 / 1.3 servers sharing one chain
next to a key-less TLS 1.3 replay of it, all in one run. Real TLS servers.

Wrong pass before round 5: the cache judged at the start of the current second, so a
leaf checked up to a second after its notAfter passed (``min_remaining`` 0). It now
judges at the middle of the second: alike for every instant in it."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from dataclasses import replace

from cryptography.hazmat.primitives import serialization

from probe.checks import peer_cert
from probe.checks.base import RunContext, Settings
from probe.checks.peer_cert import PeerCertCheck
from probe.engine import run_checks
from probe.model import Endpoint, Expect, Source, TargetsFile
from probe.results import Result, Verdict
from tests import hostile_tls as h
from tests.runone import ECHO_ID, SRC, TD, echo_target
from tests.tlsservers import MeshPKI, serving, tls_handler


def _run(pki: MeshPKI, listed: list[tuple[str, Endpoint]], settings: Settings) -> dict[str, Result]:
    targets = tuple(
        replace(echo_target(name=name, endpoints=(ep,), identity=ECHO_ID), expect=Expect.STRICT)
        for name, ep in listed
    )
    tf = TargetsFile(TD, targets, Source(identity=SRC), root_cert_file=pki.root_file)
    ctx = RunContext(tf, settings)
    try:
        results = run_checks([PeerCertCheck()], ctx)
    finally:
        ctx.close()
    return {r.target: r for r in results}


def test_a_chain_expiring_between_two_checks_is_judged_expired(
    pki: MeshPKI, monkeypatch: object
) -> None:
    end = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=30)
    issued = pki.ca.issue(
        [ECHO_ID], key_type="ec", not_before=end - dt.timedelta(hours=1), not_after=end
    )
    ticks: Iterator[dt.datetime] = iter(
        [end - dt.timedelta(milliseconds=600), end + dt.timedelta(milliseconds=400)]
    )
    monkeypatch.setattr(peer_cert, "_clock", lambda: next(ticks))  # type: ignore[attr-defined]
    settings = Settings(timeout=2.0, concurrency=1, min_remaining=dt.timedelta(0))
    with serving(tls_handler(pki, issued, require_client=False)) as a:
        r = _run(pki, [("before", a.endpoint), ("after", a.endpoint)], settings)
    assert r["before"].verdict is Verdict.PASS, r["before"].reason
    assert r["after"].verdict is Verdict.FAIL, r["after"].reason
    assert "expired" in r["after"].reason


def test_tls12_and_tls13_servers_sharing_a_chain_and_a_keyless_replay(pki: MeshPKI) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    der = [issued.cert.public_bytes(serialization.Encoding.DER)]
    v12, v13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    settings = Settings(timeout=2.0, concurrency=1)
    with (
        serving(tls_handler(pki, issued, require_client=False, version=v13)) as s13,
        serving(tls_handler(pki, issued, require_client=False, version=v12)) as s12,
        serving(h.replay13(der)) as liar,
    ):
        r = _run(
            pki, [("s13", s13.endpoint), ("s12", s12.endpoint), ("liar", liar.endpoint)], settings
        )
    assert r["s13"].verdict is Verdict.PASS and r["s13"].evidence["tls_version"] == "TLSv1.3"
    assert r["s12"].verdict is Verdict.PASS and r["s12"].evidence["tls_version"] == "TLSv1.2"
    assert r["liar"].verdict is Verdict.FAIL, r["liar"].reason
