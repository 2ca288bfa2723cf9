"""peer-cert judges each distinct chain once per run (and second): a cache that must
never let one endpoint's verdict stand for another's, nor let a liar ride on a chain
judged earlier. Real TLS servers on 127.0.0.1, one run through the real engine with
one worker, so the order of the checks (the genuine chain first) is the plan's."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import serialization

from probe import svid
from probe.checks import peer_cert
from probe.checks.base import RunContext, Settings
from probe.checks.peer_cert import PeerCertCheck
from probe.engine import run_checks
from probe.model import Endpoint, Expect, Source, TargetsFile
from probe.pki import Issued
from probe.results import Result, Verdict
from probe.svid import SvidJudgement
from tests import hostile_tls as h
from tests.runone import ECHO_ID, SRC, TD, echo_target
from tests.tlsservers import MeshPKI, serving, tls_handler

OTHER_ID = "spiffe://cluster.local/ns/ns-b/sa/other"


@pytest.fixture
def judged(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str | None]]:
    """A fixed clock (every check in the same second) and the expected identity of
    every judgement actually made (a cache hit makes none)."""
    calls: list[str | None] = []
    real = svid.judge_svid
    now = dt.datetime.now(dt.UTC)

    def counting(*args: object, **kwargs: object) -> SvidJudgement:
        calls.append(kwargs["expected_identity"])  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(peer_cert, "judge_svid", counting)
    monkeypatch.setattr(peer_cert, "_clock", lambda: now)
    yield calls


def _run(pki: MeshPKI, listed: list[tuple[str, Endpoint, str]]) -> dict[str, Result]:
    """One run of peer-cert over targets named, served and expecting as ``listed``."""
    targets = tuple(
        replace(echo_target(name=name, endpoints=(ep,), identity=identity), expect=Expect.STRICT)
        for name, ep, identity in listed
    )
    tf = TargetsFile(TD, targets, Source(identity=SRC), root_cert_file=pki.root_file)
    ctx = RunContext(tf, Settings(timeout=2.0, concurrency=1))
    try:
        results = run_checks([PeerCertCheck()], ctx)
    finally:
        ctx.close()
    return {r.target: r for r in results}


@pytest.fixture(scope="module")
def genuine(pki: MeshPKI) -> Issued:
    return pki.ca.issue_workload(ECHO_ID, key_type="ec")


@pytest.fixture(scope="module")
def other(pki: MeshPKI) -> Issued:
    return pki.ca.issue_workload(OTHER_ID, key_type="ec")


def test_different_chains_and_expectations_are_judged_separately(
    pki: MeshPKI, genuine: Issued, other: Issued, judged: list[str | None]
) -> None:
    with (
        serving(tls_handler(pki, genuine, require_client=False)) as a,
        serving(tls_handler(pki, other, require_client=False)) as b,
    ):
        r = _run(
            pki,
            [
                ("a", a.endpoint, ECHO_ID),  # the genuine chain, expected: pass
                ("b", b.endpoint, ECHO_ID),  # another chain, same expectation: fail
                ("c", a.endpoint, OTHER_ID),  # the first chain, another expectation: fail
                ("d", a.endpoint, ECHO_ID),  # the first chain and expectation again: a hit
            ],
        )
    assert r["a"].verdict is Verdict.PASS, r["a"].reason
    assert r["b"].verdict is Verdict.FAIL and f"identity is {OTHER_ID}" in r["b"].reason
    assert r["c"].verdict is Verdict.FAIL and f"expected {OTHER_ID}" in r["c"].reason
    assert r["d"].verdict is Verdict.PASS, r["d"].reason
    assert r["d"].evidence["spiffe_id"] == ECHO_ID
    assert judged == [ECHO_ID, ECHO_ID, OTHER_ID]  # d was not judged again


def test_a_liar_serving_the_judged_chain_without_its_key_still_fails(
    pki: MeshPKI, genuine: Issued, judged: list[str | None]
) -> None:
    der = [genuine.cert.public_bytes(serialization.Encoding.DER)]
    with (
        serving(tls_handler(pki, genuine, require_client=False)) as real,
        serving(h.replay13(der)) as liar13,
        serving(h.replay12(der)) as liar12,
    ):
        r = _run(
            pki,
            [
                ("real", real.endpoint, ECHO_ID),
                ("liar13", liar13.endpoint, ECHO_ID),
                ("liar12", liar12.endpoint, ECHO_ID),
            ],
        )
    assert r["real"].verdict is Verdict.PASS, r["real"].reason
    for name in ("liar13", "liar12"):
        assert r[name].verdict is Verdict.FAIL, r[name]
        assert "does not hold the key" in r[name].reason, r[name].reason
        assert r[name].evidence.get("possession") is None
        assert "chain_verified" not in r[name].evidence
    assert judged == [ECHO_ID]  # the liars never reached the judgement, cached or not


def test_a_new_second_judges_the_chain_again(
    pki: MeshPKI, genuine: Issued, monkeypatch: pytest.MonkeyPatch, judged: list[str | None]
) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ticks = iter([start, start + dt.timedelta(milliseconds=999), start + dt.timedelta(seconds=1)])
    monkeypatch.setattr(peer_cert, "_clock", lambda: next(ticks))
    with serving(tls_handler(pki, genuine, require_client=False)) as a:
        r = _run(pki, [(n, a.endpoint, ECHO_ID) for n in ("t0", "t0b", "t1")])
    assert all(x.verdict is Verdict.PASS for x in r.values()), r
    assert judged == [ECHO_ID, ECHO_ID]  # t0b shared t0's second; t1 did not
