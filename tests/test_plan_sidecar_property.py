"""Property tests for jobs/plan/policy/sidecar.py: whatever a Sidecar holds, reading it
never raises, and the plan never claims mTLS through the probe's sidecar for a service the
Sidecar keeps out of its scope."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.plan.policy.client import ClientTls, ClientView, Outcome
from jobs.plan.policy.sidecar import EgressScope, Hidden, SidecarIndex, parse_sidecar
from probe.model import Expect

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70_000), st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)
hosts = st.one_of(
    st.sampled_from(["*/*", "./*", "~/*", "shop/*", "*/a.shop.svc.cluster.local", "shop/a", "/"]),
    st.text(max_size=20),
    json_scalars,
)
listener = st.fixed_dictionaries(
    {},
    optional={
        "hosts": st.one_of(st.lists(hosts, max_size=5), json_values),
        "port": st.one_of(
            st.none(), st.fixed_dictionaries({"number": st.integers(-1, 70_000)}), json_values
        ),
        "captureMode": st.sampled_from(["DEFAULT", "NONE", "IPTABLES"]),
        "bind": st.sampled_from(["", "127.0.0.1"]),
    },
)
spec = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "egress": st.one_of(st.lists(listener, max_size=4), json_values),
            "outboundTrafficPolicy": st.one_of(
                st.fixed_dictionaries(
                    {}, optional={"mode": st.sampled_from(["REGISTRY_ONLY", "ALLOW_ANY", "x"])}
                ),
                json_values,
            ),
            "workloadSelector": st.one_of(
                st.fixed_dictionaries(
                    {"labels": st.dictionaries(st.text(max_size=5), json_scalars)}
                ),
                json_values,
            ),
        },
    ),
)


def _sidecar(ns: str, body: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "s", "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": body,
    }


@settings(max_examples=400, deadline=None)
@given(
    body=spec, ns=st.sampled_from(["mtlsprobe", "istio-system", "shop"]), port=st.integers(1, 65535)
)
def test_any_sidecar_is_read_without_raising(body: Any, ns: str, port: int) -> None:
    parsed = parse_sidecar(_sidecar(ns, body))
    assert len(parsed.problems) <= 20
    index = SidecarIndex([_sidecar(ns, body)], "istio-system", "mtlsprobe")
    for _who, scope in index.scopes:
        assert scope.sees("shop", "a.shop.svc.cluster.local", port) in (True, False, None)
    h = index.hide("shop/a:80", "shop", "a.shop.svc.cluster.local", port)
    if h is not None:
        for mode in Expect:
            v = index.view("shop/a:80", h, "a.shop.svc.cluster.local", port, mode, True)
            assert isinstance(v, ClientView)
            assert not v.mtls  # never claims mTLS through a sidecar that cannot reach it
            assert v.outcome != Outcome.OK or v.tls == ClientTls.PLAINTEXT
    for finding in index.findings():
        assert finding[1] in ("fail", "error", "skip") and len(finding[2]) < 4_000


@given(body=spec)
@settings(max_examples=200, deadline=None)
def test_a_sidecar_in_another_namespace_never_matters(body: Any) -> None:
    index = SidecarIndex([_sidecar("shop", body)], "istio-system", "mtlsprobe")
    assert all(isinstance(s, EgressScope) and s.sidecar is None for _w, s in index.scopes)
    assert index.hide("shop/a:80", "shop", "a.shop.svc.cluster.local", 80) is None
    assert not index.findings()


def test_a_left_out_host_is_hidden_for_certain() -> None:
    """``./*`` in the probe's namespace: shop's service is known to be out of scope."""
    index = SidecarIndex(
        [_sidecar("mtlsprobe", {"egress": [{"hosts": ["./*"]}]})], "istio-system", "mtlsprobe"
    )
    h = index.hide("shop/a:80", "shop", "a.shop.svc.cluster.local", 80)
    assert isinstance(h, Hidden) and h.known
