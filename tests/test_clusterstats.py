"""The probe's sidecar as witness: counters around one call prove TLS, prove
plaintext, or prove nothing, and nothing else turns into TLS."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.clusterstats import (
    Counters,
    Transport,
    cluster_name,
    judge_transport,
    parse_counters,
    stats_params,
)

C = cluster_name("web.data.svc.cluster.local", 8080)
ZERO = Counters(cx_total=0, cx_active=0, connect_fail=0, rq_total=0, handshake=0, ssl_error=0)


def after(before: Counters, **delta: int) -> Counters:
    return replace(before, **{k: getattr(before, k) + v for k, v in delta.items()})


def test_istio_cluster_name_and_filter() -> None:
    assert C == "outbound|8080||web.data.svc.cluster.local"
    rx = stats_params(C)["filter"]
    assert re.fullmatch(rx, f"cluster.{C}.ssl.handshake")
    assert re.fullmatch(rx, f"cluster.{C}.upstream_cx_total")
    assert not re.fullmatch(rx, f"cluster.{C}.ssl.handshake_x")
    assert not re.fullmatch(rx, "cluster.outbound|8080||webXdata.svc.cluster.local.ssl.handshake")


def test_parse_counters_from_envoy_json() -> None:
    names = {
        "upstream_cx_total": 3,
        "upstream_cx_active": 1,
        "upstream_cx_connect_fail": 0,
        "upstream_rq_total": 7,
        "ssl.handshake": 3,
        "ssl.connection_error": 0,
    }
    doc = {"stats": [{"name": f"cluster.{C}.{k}", "value": v} for k, v in names.items()]}
    assert parse_counters(doc, C) == Counters(3, 1, 0, 7, 3, 0)
    doc["stats"].pop()
    assert parse_counters(doc, C) is None  # a missing counter: not recorded
    junks: list[object] = [None, [], {"stats": "x"}, {"stats": [1, {"name": 3}]}]
    for junk in junks:
        assert parse_counters(junk, C) is None


@pytest.mark.parametrize(
    ("before", "delta", "tcp", "transport", "words"),
    [
        # fresh connections
        (ZERO, {"cx_total": 1, "rq_total": 1, "handshake": 1}, False, Transport.TLS, "new conn"),
        (ZERO, {"cx_total": 1, "rq_total": 1}, False, Transport.PLAINTEXT, "plaintext"),
        (ZERO, {"cx_total": 1, "handshake": 1}, True, Transport.TLS, "new conn"),
        (ZERO, {"cx_total": 1}, True, Transport.PLAINTEXT, "plaintext"),
        (ZERO, {"cx_total": 2, "connect_fail": 1, "handshake": 1}, True, Transport.TLS, "new"),
        # a TLS and a plaintext connection in the same window: which carried it?
        (ZERO, {"cx_total": 2, "rq_total": 1, "handshake": 1}, False, Transport.UNKNOWN, "cannot"),
        # attribution
        (ZERO, {"cx_total": 1, "rq_total": 2, "handshake": 1}, False, Transport.UNKNOWN, "not 1"),
        (ZERO, {}, False, Transport.UNKNOWN, "did not go through"),
        (ZERO, {"cx_total": 2, "handshake": 2}, True, Transport.UNKNOWN, "other traffic"),
        # reuse: only the cluster's whole history can speak
        (
            Counters(5, 1, 1, 9, 3, 1),
            {"rq_total": 1},
            False,
            Transport.TLS,
            "every connection",
        ),
        (Counters(2, 1, 0, 9, 0, 0), {"rq_total": 1}, False, Transport.PLAINTEXT, "never"),
        (Counters(3, 1, 0, 9, 2, 0), {"rq_total": 1}, False, Transport.UNKNOWN, "both"),
        # a pooled connection exists, and a new TLS one opens: ours may be the old one
        (
            Counters(3, 1, 0, 9, 2, 0),
            {"rq_total": 1, "cx_total": 1, "handshake": 1},
            False,
            Transport.UNKNOWN,
            "both",
        ),
        (Counters(3, 1, 0, 9, 3, 0), {"rq_total": -1}, False, Transport.UNKNOWN, "backwards"),
    ],
)
def test_judge_transport(
    before: Counters, delta: dict[str, int], tcp: bool, transport: Transport, words: str
) -> None:
    seen = judge_transport(C, before, after(before, **delta), tcp)
    assert seen.transport is transport, seen
    assert words in seen.how
    assert seen.evidence["cluster"] == C


counts = st.integers(min_value=0, max_value=5)


@settings(max_examples=500, deadline=None)
@given(
    before=st.builds(Counters, counts, counts, counts, counts, counts, counts),
    d=st.fixed_dictionaries(
        {k: counts for k in ("cx_total", "connect_fail", "rq_total", "handshake", "ssl_error")}
    ),
    tcp=st.booleans(),
)
def test_property_tls_needs_a_handshake_and_our_call(
    before: Counters, d: dict[str, int], tcp: bool
) -> None:
    aft = after(before, **d)
    seen = judge_transport(C, before, aft, tcp)
    if seen.transport is Transport.TLS:
        # never TLS without any handshake, or without exactly our call in the window
        assert aft.handshake >= 1
        assert (d["cx_total"] - d["connect_fail"] if tcp else d["rq_total"]) == 1
        # and never while a plaintext connection could have carried it
        fresh = (tcp or before.cx_active == 0) and d["cx_total"] - d["connect_fail"] >= 1
        if fresh:
            assert d["handshake"] == d["cx_total"] - d["connect_fail"]
        else:
            assert aft.cx_total == aft.handshake + aft.ssl_error + aft.connect_fail
    if seen.transport is Transport.PLAINTEXT:
        assert d["handshake"] == 0


def test_the_labs_probe_sidecar_names_clusters_like_istio() -> None:
    from jobs.lab.envoy_config import outbound_cluster_name
    from jobs.lab.spec import Upstream

    up = Upstream("web.data.svc.cluster.local", 8080, True, (), ())
    assert outbound_cluster_name(up) == C
