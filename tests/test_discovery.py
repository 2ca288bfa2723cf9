"""Discovery against a real HTTP server speaking the Kubernetes API (tests/fakekube.py),
driven by the real ``kubernetes`` client."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.cli.main import main as cli_main
from jobs.plan.discovery import DiscoveryError, Options, Reader, discover, slim_pod
from jobs.plan.planner import build_plan
from probe.model import Expect, load_targets
from tests import kubebuild as kb
from tests.fakekube import FakeKube, Resource
from tests.tlsservers import nothing_listening

ROOT_PEM = kb.FAKE_ROOT_PEM


@pytest.fixture
def kube(fake_kube: FakeKube) -> FakeKube:
    fake_kube.add_all(kb.small_mesh())
    return fake_kube


def _kubeconfig(kube: FakeKube, tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kube.kubeconfig()))
    return str(path)


def test_discovers_every_namespace_with_pagination(kube: FakeKube) -> None:
    snap = discover(kube.api_client(), Options(page_size=2))
    assert snap.trust_domain == "example.org"
    assert snap.root_cert_pem == ROOT_PEM
    assert snap.target_namespaces == {"shop", "legacy"}
    assert sorted(p["metadata"]["name"] for p in snap.pods) == ["cart-0", "cart-1", "cart-2", "rep"]
    assert len(snap.peerauthentications) == 2  # istio-system's is read though not a target
    pod_calls = [c for c in kube.calls if c.path == "/api/v1/pods"]
    assert [c.query.get("limit") for c in pod_calls] == ["2", "2", "2"]
    assert "continue" not in pod_calls[0].query and "continue" in pod_calls[1].query
    assert kube.paths().count("/apis/security.istio.io/v1/peerauthentications") == 1

    plan = build_plan(snap)
    t = {x.name: x for x in plan.targets_file.targets}
    assert t["shop/cart:80"].expect == Expect.STRICT
    assert t["shop/cart:80"].identity == "spiffe://example.org/ns/shop/sa/cart"
    assert len(t["shop/cart:80"].endpoints) == 3
    assert t["legacy/rep:8080"].expect == Expect.NONE
    assert "kube-system/dns:53" not in t


def test_named_namespaces_are_read_one_by_one(kube: FakeKube) -> None:
    snap = discover(kube.api_client(), Options(namespaces=("shop",)))
    assert snap.target_namespaces == {"shop"}
    paths = kube.paths()
    assert "/api/v1/namespaces/shop" in paths
    assert "/api/v1/namespaces/shop/pods" in paths
    assert "/api/v1/pods" not in paths and "/api/v1/namespaces" not in paths
    assert "/apis/security.istio.io/v1/peerauthentications" in paths  # mesh-wide policy


def test_policy_namespaces_narrow_the_policy_lists(kube: FakeKube) -> None:
    opts = Options(namespaces=("shop",), policy_namespaces=("istio-system", "shop"))
    snap = discover(kube.api_client(), opts)
    paths = kube.paths()
    assert "/apis/security.istio.io/v1/namespaces/istio-system/peerauthentications" in paths
    assert "/apis/security.istio.io/v1/namespaces/shop/peerauthentications" in paths
    assert "/apis/security.istio.io/v1/peerauthentications" not in paths
    assert {p["metadata"]["name"] for p in snap.peerauthentications} == {"default"}
    assert build_plan(snap).targets_file.targets[0].expect == Expect.STRICT  # the mesh policy


def test_namespace_label_selector_and_include_system(kube: FakeKube) -> None:
    snap = discover(kube.api_client(), Options(namespace_selector="istio-injection=enabled"))
    assert snap.target_namespaces == {"shop"}
    assert {"labelSelector": "istio-injection=enabled", "limit": "500"} in [
        c.query for c in kube.calls if c.path == "/api/v1/namespaces"
    ]
    every = discover(kube.api_client(), Options(include_system=True))
    assert every.target_namespaces == {"shop", "legacy", "kube-system", "istio-system"}


def test_flags_override_the_mesh_config(kube: FakeKube) -> None:
    snap = discover(kube.api_client(), Options(trust_domain="td.test", root_namespace="legacy"))
    assert (snap.trust_domain, snap.root_namespace) == ("td.test", "legacy")


def test_older_istio_api_versions_are_used() -> None:
    with FakeKube(istio=False) as kube:
        kube.serve(
            Resource("security.istio.io", ("v1beta1",), "peerauthentications", "PeerAuthentication")
        )
        kube.serve(
            Resource("networking.istio.io", ("v1alpha3",), "destinationrules", "DestinationRule")
        )
        kube.add_all([kb.namespace("shop"), kb.peer_auth("p", "shop", "STRICT", version="v1beta1")])
        kube.add(
            {
                **kb.dest_rule("d", "shop", "x", "DISABLE"),
                "apiVersion": "networking.istio.io/v1alpha3",
            }
        )
        snap = discover(kube.api_client())
        assert (
            snap.istio_apis
            and len(snap.peerauthentications) == 1
            and len(snap.destinationrules) == 1
        )
        paths = kube.paths()
        assert paths.index("/apis/security.istio.io/v1/peerauthentications") < paths.index(
            "/apis/security.istio.io/v1beta1/peerauthentications"
        )
        assert "/apis/networking.istio.io/v1beta1/destinationrules" in paths


def test_no_istio_plans_permissive_with_a_finding() -> None:
    with FakeKube(istio=False) as kube:
        kube.add_all(
            [
                kb.namespace("shop"),
                kb.pod("a", "shop", {"app": "a"}, ip="10.0.0.1"),
                kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
            ]
        )
        snap = discover(kube.api_client())
        assert not snap.istio_apis
        plan = build_plan(snap)
        (t,) = plan.targets_file.targets
        assert t.expect == Expect.PERMISSIVE
        assert any("no Istio APIs found" in r.reason for r in plan.findings)
        from jobs.cli.plan import render_yaml

        assert "# SKIP policy cluster: no Istio APIs found" in render_yaml(plan)


def test_malformed_object_is_reported_and_skipped(kube: FakeKube) -> None:
    bad = kb.pod("broken", "shop", {"app": "cart"})
    bad["spec"]["containers"] = "not-a-list"
    kube.add(bad)
    snap = discover(kube.api_client())
    assert [str(p) for p in snap.problems] == ["Pod shop/broken: spec.containers is not a list"]
    plan = build_plan(snap)
    assert any(r.verdict == "error" and r.target == "Pod shop/broken" for r in plan.findings)


@pytest.mark.parametrize(
    ("plural", "group", "expect"),
    [
        (
            "pods",
            "",
            "system:serviceaccount:mtlsprobe:mtlsprobe may not list pods in API group '' "
            "at the cluster scope",
        ),
        (
            "peerauthentications",
            "security.istio.io",
            "may not list peerauthentications in API group 'security.istio.io'",
        ),
    ],
)
def test_forbidden_is_one_line_naming_the_permission(
    kube: FakeKube, plural: str, group: str, expect: str
) -> None:
    kube.forbid("list", plural, group)
    with pytest.raises(DiscoveryError) as err:
        discover(kube.api_client())
    msg = str(err.value)
    assert expect in msg and "\n" not in msg


def test_forbidden_optional_configmap_is_a_note(kube: FakeKube) -> None:
    kube.forbid("get", "configmaps")
    snap = discover(kube.api_client())
    assert snap.trust_domain == "cluster.local"
    assert any("may not get configmaps" in n for n in snap.notes)


def test_server_error_is_one_line(kube: FakeKube) -> None:
    kube.fail("/api/v1/services", 500)
    with pytest.raises(DiscoveryError, match=r"HTTP 500: Internal error occurred: etcdserver"):
        discover(kube.api_client())


def test_slow_server_is_bounded_by_the_timeout(kube: FakeKube) -> None:
    kube.delay = 60.0  # each answer; the wait ends early when the fake stops
    start = time.monotonic()
    with pytest.raises(DiscoveryError, match="no answer within the request timeout"):
        discover(kube.api_client(), Options(timeout=0.5))
    assert time.monotonic() - start < 30  # the 0.5 s timeout, not the 60 s answer


def test_generated_models_give_the_same_snapshot(kube: FakeKube) -> None:
    raw = build_plan(discover(kube.api_client(), Options(raw=True))).targets_file
    models = build_plan(discover(kube.api_client(), Options(raw=False))).targets_file
    assert raw == models


def test_reader_follows_continue_tokens(kube: FakeKube) -> None:
    r = Reader(kube.api_client(), Options(page_size=1))
    names = [p["metadata"]["name"] for p in r.pages("pods", "/api/v1/pods")]
    assert len(names) == 5 and len(set(names)) == 5
    tokens = [c.query.get("continue") for c in kube.calls if c.path == "/api/v1/pods"]
    assert tokens[0] is None and len(set(tokens[1:])) == 4


# ---- the CLI against the fake server -----------------------------------------------------


def test_cli_plan_yaml_from_the_cluster(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _kubeconfig(kube, tmp_path)
    root = tmp_path / "root.pem"
    code = cli_main(["plan", "--kubeconfig", cfg, "-o", "yaml", "--root-cert-file", str(root)])
    assert code == 0
    f = tmp_path / "targets.yaml"
    f.write_text(capsys.readouterr().out)
    tf = load_targets(f)
    assert tf.trust_domain == "example.org" and tf.root_cert_file == root.resolve()
    assert root.read_text() == ROOT_PEM
    assert {t.name for t in tf.targets} == {"shop/cart:80", "legacy/rep:8080"}


def test_cli_require_sidecar_fails(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _kubeconfig(kube, tmp_path)
    assert cli_main(["plan", "--kubeconfig", cfg, "--require", "sidecar"]) == 1
    assert "require-sidecar" in capsys.readouterr().out


def test_cli_unreachable_api_exits_64_naming_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = nothing_listening().port  # held bound: refused, and no one else takes it
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    assert cli_main(["plan", "--kubeconfig", str(cfg), "--request-timeout", "2"]) == 64
    err = capsys.readouterr().err.strip()
    assert f"cannot reach the Kubernetes API at http://127.0.0.1:{port}" in err
    assert "connection refused" in err and "\n" not in err


def test_cli_forbidden_exits_64(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kube.forbid("list", "services")
    assert cli_main(["plan", "--kubeconfig", _kubeconfig(kube, tmp_path)]) == 64
    err = capsys.readouterr().err
    assert "may not list services in API group ''" in err and err.count("\n") == 1


def test_encode_once_serves_the_same_lists(kube: FakeKube) -> None:
    plain = discover(kube.api_client(), Options(page_size=2))
    kube.encode_once = True
    cached = discover(kube.api_client(), Options(page_size=2))
    assert (cached.pods, cached.services, cached.peerauthentications) == (
        plain.pods,
        plain.services,
        plain.peerauthentications,
    )


def test_expired_continue_token_continues_with_the_servers_token(kube: FakeKube) -> None:
    kube.expire_next_continue = True
    snap = discover(kube.api_client(), Options(page_size=2))
    assert sorted(p["metadata"]["name"] for p in snap.pods) == ["cart-0", "cart-1", "cart-2", "rep"]
    assert not kube.expire_next_continue  # the 410 was served


def test_expired_list_without_a_fresh_token_is_one_line(kube: FakeKube) -> None:
    kube.fail("/api/v1/namespaces", 410)
    with pytest.raises(DiscoveryError, match=r"answered HTTP 410"):
        discover(kube.api_client())


def _fat(pod: dict[str, Any]) -> dict[str, Any]:
    """What a real API server adds to a pod and the plan never reads."""
    fat = copy.deepcopy(pod)
    fat["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    fat["spec"]["volumes"] = [{"name": "token", "projected": {"sources": []}}]
    fat["spec"]["nodeName"] = "node-1"
    for c in fat["spec"]["containers"]:
        c["env"] = [{"name": "X", "value": "y" * 200}]
        c["volumeMounts"] = [{"name": "token", "mountPath": "/var/run"}]
    fat["spec"]["initContainers"] = [
        {"name": "istio-init", "image": "proxyv2", "args": ["-p", "15001"]}
    ]
    fat["status"]["containerStatuses"] = [{"name": "app", "ready": True}]
    fat["status"]["qosClass"] = "Burstable"
    return fat


def test_slim_pod_keeps_what_the_plan_reads() -> None:
    pod = _fat(kb.pod("cart-0", "shop", {"app": "cart"}, ip="10.0.1.1", sa="cart"))
    slim = slim_pod(pod)
    assert "managedFields" not in slim["metadata"]
    assert {k: v for k, v in pod["metadata"].items() if k != "managedFields"} == slim["metadata"]
    assert set(slim["spec"]) == {"serviceAccountName", "containers", "initContainers"}
    assert slim["spec"]["containers"][0] == {
        "name": "app",
        "image": "app",
        "ports": pod["spec"]["containers"][0]["ports"],
    }
    assert slim["spec"]["initContainers"] == [{"name": "istio-init", "image": "proxyv2"}]
    assert set(slim["status"]) == {"phase", "conditions", "podIP", "podIPs"}
    # Malformed parts stay as they are, so admission still names them.
    bad = {"metadata": "x", "spec": {"containers": "not-a-list"}, "status": [1]}
    assert slim_pod(bad) == bad


def test_fat_pods_plan_as_slim_ones(kube: FakeKube) -> None:
    """The fields dropped at the boundary change nothing in the plan."""
    before = build_plan(discover(kube.api_client()))
    for i in range(3):
        kube.add(
            _fat(kb.pod(f"cart-{i}", "shop", {"app": "cart"}, ip=f"10.0.1.{i + 1}", sa="cart"))
        )
    after = build_plan(discover(kube.api_client()))
    assert after.targets_file == before.targets_file
    assert [r.to_dict() for r in after.findings] == [r.to_dict() for r in before.findings]
