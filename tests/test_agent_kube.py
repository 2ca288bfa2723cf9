"""The agent against a fake Kubernetes API server (tests/fakekube.py) driven by the
real client: discovery each round, API outage → error results and not ready,
recovery → ready, sharding over the agent pods, and the API calls it makes (RBAC)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.agent.sharding import ShardUnit, select_shard
from tests.agenthelp import get, running_agent, wait_for
from tests.fakekube import FakeKube
from tests.tlsservers import Server, nothing_listening, plaintext_http, serving

AGENT_NS = "mtlsprobe"
AGENT_LABELS = {"app.kubernetes.io/name": "mtlsprobe", "app.kubernetes.io/component": "agent-plain"}


def pod(name: str, ns: str, ip: str, port: int, labels: dict[str, str], ready: bool = True) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "app", "ports": [{"containerPort": port}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def service(name: str, ns: str, port: int, selector: dict[str, str]) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": 8080, "targetPort": port, "protocol": "TCP"}],
        },
    }


def namespace(name: str) -> Any:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[FakeKube, Server, Path]]:
    """ns-a/web (no sidecar) on a real plaintext server; a kubeconfig pointing at the fake."""
    with FakeKube() as kube, serving(plaintext_http) as web:
        kube.add_all(
            [
                namespace("ns-a"),
                namespace(AGENT_NS),
                pod("web-1", "ns-a", "127.0.0.1", web.endpoint.port, {"app": "web"}),
                service("web", "ns-a", web.endpoint.port, {"app": "web"}),
            ]
        )
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        yield kube, web, cfg


def plaintext_results(body: str) -> list[dict[str, Any]]:
    return [r for r in json.loads(body)["results"] if r["check"] == "plaintext"]


def test_discovery_each_round_outage_and_recovery(
    cluster: tuple[FakeKube, Server, Path],
) -> None:
    kube, web, cfg = cluster
    with running_agent(
        "--kind",
        "plain",
        "--kubeconfig",
        str(cfg),
        "-n",
        "ns-a",
        "--interval",
        "0.2",
        "--jitter",
        "0",
        "--failure-threshold",
        "2",
    ) as built:
        wait_for(lambda: get(built, "/readyz")[0] == 200, what="ready")
        res = plaintext_results(get(built, "/results")[1])
        assert [(r["target"], r["endpoint"], r["verdict"]) for r in res] == [
            ("ns-a/web:8080", str(web.endpoint), "pass")
        ]
        # The API server breaks: every request answers 500.
        kube.fail("/api", 500, "etcdserver: request timed out")
        wait_for(lambda: get(built, "/readyz")[0] == 503, what="not ready")
        doc = json.loads(get(built, "/results")[1])
        assert [r["check"] for r in doc["results"]] == ["discovery"]
        assert doc["results"][0]["verdict"] == "error"
        assert "500" in doc["results"][0]["reason"]
        assert doc["summary"] == {"pass": 0, "fail": 0, "error": 1, "skip": 0}
        assert "consecutive failed rounds" in get(built, "/readyz")[1]
        # It recovers by itself on the next round.
        kube._faults.clear()  # no public "unfail" in the fake server; this is its fault list
        wait_for(lambda: get(built, "/readyz")[0] == 200, what="ready again")
        assert plaintext_results(get(built, "/results")[1])[0]["verdict"] == "pass"


def test_api_server_down_at_start_is_not_fatal(tmp_path: Path) -> None:
    """A DaemonSet agent starting while the API server is away must not crash-loop:
    it reports the outage as errors (recovery: the test above)."""
    dead = nothing_listening()
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://{dead}"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    with running_agent(
        "--kind",
        "plain",
        "--kubeconfig",
        str(cfg),
        "--interval",
        "0.2",
        "--jitter",
        "0",
        "--failure-threshold",
        "2",
    ) as built:
        wait_for(lambda: built.agent.state.consecutive_failures >= 2, what="2 failed rounds")
        assert get(built, "/readyz")[0] == 503
        result = json.loads(get(built, "/results")[1])["results"][0]
        assert result["check"] == "discovery" and result["verdict"] == "error"
        assert "Traceback" not in result["reason"] and len(result["reason"]) < 400


def agent_pod(name: str, ready: bool) -> Any:
    return pod(name, AGENT_NS, "10.0.0.1", 9090, AGENT_LABELS, ready=ready)


def test_shards_over_ready_agent_pods_and_records_its_api_calls(
    cluster: tuple[FakeKube, Server, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    kube, _, cfg = cluster
    servers = [Server(plaintext_http) for _ in range(8)]
    try:
        for i, s in enumerate(servers):
            kube.add(pod(f"api-{i}", "ns-a", "127.0.0.1", s.endpoint.port, {"app": f"api-{i}"}))
            kube.add(service(f"api-{i}", "ns-a", s.endpoint.port, {"app": f"api-{i}"}))
        kube.add_all(
            [
                agent_pod("agent-a", ready=True),
                agent_pod("agent-b", ready=True),
                agent_pod("agent-c", ready=False),  # not ready: gets no share
            ]
        )
        monkeypatch.setenv("POD_NAMESPACE", AGENT_NS)
        probed: list[set[str]] = []
        for me in ("agent-a", "agent-b"):
            monkeypatch.setenv("POD_NAME", me)  # the downward API, as in the DaemonSet
            with running_agent(
                "--kind", "plain", "--kubeconfig", str(cfg), "-n", "ns-a", "--interval", "30"
            ) as built:
                state = built.agent.state
                wait_for(lambda: state.last is not None, what="a round")
                last = state.last
                assert last is not None
                assert last.agents == ("agent-a", "agent-b")
                assert last.total == 9
                got = {r["endpoint"] for r in plaintext_results(get(built, "/results")[1])}
                # Exactly its rendezvous share of what it discovered (which share is
                # which depends on the ports, so no size is assumed).
                assert last.targets is not None
                share = select_shard(last.targets, last.agents, me, ShardUnit.ENDPOINT)
                assert got == {str(e) for t in share.targets.targets for e in t.endpoints}
                assert last.assigned == len(got)
                probed.append(got)
    finally:
        for s in servers:
            s.close()
    assert not probed[0] & probed[1]
    assert len(probed[0] | probed[1]) == 9

    # The API calls the agent made: this is the RBAC it needs (all GET, none of Secrets).
    assert {c.method for c in kube.calls} == {"GET"}
    paths = {c.path for c in kube.calls}
    assert not any("secrets" in p for p in paths)
    assert f"/api/v1/namespaces/{AGENT_NS}/pods" in paths  # peers: list pods, own namespace
    label_queries = {
        c.query.get("labelSelector") for c in kube.calls if c.path.endswith(f"{AGENT_NS}/pods")
    }
    assert label_queries == {
        "app.kubernetes.io/name=mtlsprobe,app.kubernetes.io/component=agent-plain"
    }
    # Pinned: a new call here needs a matching rule in the agent's RBAC (k8s/).
    assert paths == {
        "/api/v1/namespaces/istio-system/configmaps/istio",
        "/api/v1/namespaces/istio-system/configmaps/istio-ca-root-cert",
        f"/api/v1/namespaces/{AGENT_NS}/pods",
        "/api/v1/namespaces/ns-a",
        "/api/v1/namespaces/ns-a/pods",
        "/api/v1/namespaces/ns-a/services",
        "/apis/discovery.k8s.io/v1/namespaces/ns-a/endpointslices",
        "/apis/networking.istio.io/v1/destinationrules",
        "/apis/networking.istio.io/v1/sidecars",  # the probe's egress scope (Sidecar resources)
        "/apis/security.istio.io/v1/peerauthentications",
        # AuthorizationPolicies (authz cases); not served by this fake: both versions tried
        "/apis/security.istio.io/v1/authorizationpolicies",
        "/apis/security.istio.io/v1beta1/authorizationpolicies",
    }
