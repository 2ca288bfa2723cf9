"""The planner answers once per workload (jobs.plan.builder: ``_workload_key``,
``on_the_wire``; PeerAuthIndex.for_workload per winning policy): pods behind one Service
port that differ only in what those memos are keyed on must still get their own answers,
whatever order they come in. Planned from YAML and from the fake API server
(``plan_both``), which must agree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from jobs.plan.manifests import load_manifests
from jobs.plan.planner import build_plan
from probe.model import Expect
from tests import kubebuild as kb
from tests.plancase import REQ, Both, Obj

Plan = Callable[..., Both]


def pod(name: str, ip: str, labels: dict[str, str] | None = None, **kw: Any) -> Obj:
    return kb.pod(name, "shop", labels or {"app": "a"}, ip=ip, sa="a", **kw)


def objects(*pods: Obj) -> list[Obj]:
    return [
        kb.namespace("shop", {"istio-injection": "enabled"}),
        kb.peer_auth("default", "shop", "STRICT"),
        # Istio's workload level (policy_applier.go): only pods labelled tier=x.
        kb.peer_auth("x", "shop", "PERMISSIVE", selector={"tier": "x"}),
        kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
        *pods,
    ]


def per_pod(both: Both) -> dict[str, tuple[Expect, Expect]]:
    return {e.pod.name: (e.server_mode, e.expect) for e in both.live.edges}


def test_pods_of_one_workload_that_differ_get_their_own_answers(plan_both: Plan) -> None:
    excluded = {"traffic.sidecar.istio.io/excludeInboundPorts": "8080"}
    none_mode = {"sidecar.istio.io/interceptionMode": "NONE"}
    pods = [
        pod("a-0", "10.0.0.1"),
        pod("a-1", "10.0.0.2", annotations=excluded),  # run.go: -d 8080, not captured
        pod("a-2", "10.0.0.3", {"app": "a", "tier": "x"}),  # its own PeerAuthentication
        pod("a-3", "10.0.0.4", sidecar=False),  # no proxy: plaintext reaches the app
        pod("a-4", "10.0.0.5", annotations=none_mode),  # no istio-init, nothing redirected
        pod("a-5", "10.0.0.6"),  # like a-0 again, after the others
    ]
    got = per_pod(plan_both(objects(*pods), REQ))
    assert got == {
        "a-0": (Expect.STRICT, Expect.STRICT),
        "a-1": (Expect.STRICT, Expect.NONE),
        "a-2": (Expect.PERMISSIVE, Expect.PERMISSIVE),
        "a-3": (Expect.STRICT, Expect.NONE),
        "a-4": (Expect.STRICT, Expect.NONE),
        "a-5": (Expect.STRICT, Expect.STRICT),
    }


def test_the_same_pods_in_another_order_get_the_same_answers(tmp_path: Path) -> None:
    """The memo filled by the first pod of a workload never answers for a different one.
    From YAML only: the live path lists pods by name, so it cannot reorder them (and the
    two paths then order split targets differently, which ``plan_both`` refuses)."""
    excluded = {"traffic.sidecar.istio.io/excludeInboundPorts": "8080"}
    a0, a1 = pod("a-0", "10.0.0.1", annotations=excluded), pod("a-1", "10.0.0.2")
    want = {"a-0": (Expect.STRICT, Expect.NONE), "a-1": (Expect.STRICT, Expect.STRICT)}
    for i, order in enumerate(([a0, a1], [a1, a0])):
        f = tmp_path / f"m{i}.yaml"
        f.write_text(yaml.safe_dump_all(objects(*order)))
        plan = build_plan(load_manifests([f]), REQ)
        assert {e.pod.name: (e.server_mode, e.expect) for e in plan.edges} == want


def test_file_order_does_not_change_the_plan(plan_both: Plan) -> None:
    """Files may list pods (and everything else) in any order; the API server lists them
    by namespace, then name. The manifest snapshot takes the API's order, so the two paths
    split and number targets alike (``plan_both`` fails on any disagreement): here a-1
    comes first in the file, a-0 (another target: 8080 not captured) first by name."""
    excluded = {"traffic.sidecar.istio.io/excludeInboundPorts": "8080"}
    pods = [pod("a-1", "10.0.0.2"), pod("a-0", "10.0.0.1", annotations=excluded)]
    both = plan_both(objects(*pods), REQ)
    assert [e.pod.name for e in both.live.edges] == ["a-0", "a-1"]
