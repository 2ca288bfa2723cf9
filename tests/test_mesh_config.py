"""Mesh config and ordering as Istio reads them (issue 17, rule 5).

Istio sources (istio/istio master, read 2026-11):
- pilot/pkg/bootstrap/mesh.go ``getMeshConfigMapName`` / ``getConfigurationSources``:
  istiod reads MeshConfig from the ``mesh`` key of ConfigMap ``istio`` (``istio-<rev>``)
  in its own namespace, nowhere else.
- pkg/config/mesh/mesh.go ``DefaultMeshConfig``: trustDomain cluster.local, rootNamespace
  istio-system, enableAutoMtls true, defaultDestinationRuleExportTo ["*"].
- pilot/pkg/model/config.go ``configCompareByCreationTime`` (PeerAuthentication order in
  authentication.go ``addPeerAuthentication``): creationTimestamp, then name, then
  namespace; k8s.io/apimachinery metav1.Time: RFC 3339, whole seconds on the wire.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from jobs.plan.manifests import snapshot_from_documents
from jobs.plan.objects import (
    ZERO_TIME,
    ClusterSnapshot,
    created_at,
    mesh_configmap_name,
    parse_time,
    pick_mesh_config,
    read_mesh_config,
)
from jobs.plan.planner import build_plan
from jobs.plan.policy import PeerAuthIndex
from probe.model import Expect
from tests import kubebuild as kb
from tests.istiocase import manifests_yaml, plan_both, targets, verdicts

JAN1 = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())


# ---- creationTimestamp ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("2025-01-01T00:00:00Z", (JAN1, 0)),
        ("2025-01-01T02:00:00+02:00", (JAN1, 0)),
        ("2024-12-31T19:00:00-05:00", (JAN1, 0)),
        ("2025-01-01T00:00:00.123456789Z", (JAN1, 123456789)),
        ("2025-01-01T00:00:00.5+00:00", (JAN1, 500000000)),
        # PyYAML's datetime for unquoted timestamps; naive ones are UTC
        (datetime(2025, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), (JAN1, 0)),
        (datetime(2025, 1, 1), (JAN1, 0)),
        (datetime(2025, 1, 1, 0, 0, 0, 250000), (JAN1, 250000000)),
        # what metav1.Time.UnmarshalJSON rejects
        ("2025-01-01", None),
        (date(2025, 1, 1), None),
        ("2025-01-01 00:00:00Z", None),
        ("2025-01-01T00:00:00", None),
        ("2025-01-01t00:00:00z", None),
        ("2025-02-30T00:00:00Z", None),
        ("2025-01-01T00:00:00+25:00", None),
        ("yesterday", None),
        ("", None),
        (1735689600, None),
    ],
)
def test_timestamps_parse_as_kubernetes_reads_them(raw: object, want: object) -> None:
    assert parse_time(raw) == want


def test_missing_timestamp_orders_first_like_gos_zero_time() -> None:
    assert created_at({"metadata": {}}) == ZERO_TIME
    assert created_at({"metadata": {"creationTimestamp": "1970-01-01T00:00:00Z"}}) > ZERO_TIME


def test_fractions_tie_as_istio_sees_them() -> None:
    """The API server keeps whole seconds, so Istio sees these two as a tie (broken by
    name): a manifest must not order them differently from the live cluster."""
    a = {"metadata": {"creationTimestamp": "2025-01-01T00:00:00.9Z"}}
    b = {"metadata": {"creationTimestamp": "2025-01-01T00:00:00.1Z"}}
    assert created_at(a) == created_at(b) == JAN1


def _ns_pa(name: str, mode: str, created: str, ns: str = "shop") -> dict[str, Any]:
    return kb.peer_auth(name, ns, mode, created=created)


@pytest.mark.parametrize(
    ("desc", "policies", "want"),
    [
        (
            "oldest by time, not by text: +02:00 is earlier than the Z one",
            [
                _ns_pa("a", "PERMISSIVE", "2025-01-01T00:00:00Z"),
                _ns_pa("b", "STRICT", "2025-01-01T01:00:00+02:00"),
            ],
            Expect.STRICT,
        ),
        (
            "equal times: name decides",
            [
                _ns_pa("b", "STRICT", "2025-01-01T00:00:00Z"),
                _ns_pa("a", "DISABLE", "2025-01-01T00:00:00Z"),
            ],
            Expect.DISABLE,
        ),
        (
            "equal once truncated to seconds: name decides",
            [
                _ns_pa("a", "PERMISSIVE", "2025-01-01T00:00:00.9Z"),
                _ns_pa("b", "STRICT", "2025-01-01T00:00:00.1Z"),
            ],
            Expect.PERMISSIVE,
        ),
        (
            "no timestamp is the oldest",
            [
                _ns_pa("a", "PERMISSIVE", "2025-01-01T00:00:00Z"),
                {**_ns_pa("z", "STRICT", ""), "metadata": {"name": "z", "namespace": "shop"}},
            ],
            Expect.STRICT,
        ),
    ],
)
def test_peer_authentication_order(desc: str, policies: list[dict[str, Any]], want: Expect) -> None:
    index = PeerAuthIndex(policies, "istio-system")
    assert index.effective("shop", {}, 8080).mode == want, desc


def test_unparsable_timestamp_is_refused_with_a_finding() -> None:
    """metav1.Time.UnmarshalJSON fails on it, so the API server rejects the object: it is
    left out, and the plan says so as an error (fail closed), naming it."""
    docs = [
        kb.namespace("shop"),
        _ns_pa("bad", "PERMISSIVE", "yesterday"),
        _ns_pa("dated", "PERMISSIVE", "2025-01-01"),
    ]
    snap = snapshot_from_documents([("t", d) for d in docs], inject=False)
    assert snap.peerauthentications == []
    plan = build_plan(snap)
    errors = {r.target: r.reason for r in plan.findings if r.verdict.value == "error"}
    assert set(errors) == {"PeerAuthentication shop/bad", "PeerAuthentication shop/dated"}
    assert "'yesterday' is not an RFC 3339 time" in errors["PeerAuthentication shop/bad"]


# ---- which ConfigMap is the mesh config ----------------------------------------------------------


def test_mesh_configmap_names() -> None:
    assert mesh_configmap_name(None) == "istio"
    assert mesh_configmap_name("default") == "istio"
    assert mesh_configmap_name("canary") == "istio-canary"


def _mesh(ns: str, text: str, name: str = "istio") -> dict[str, Any]:
    return kb.configmap(name, ns, {"mesh": text})


def test_only_the_control_plane_configmap_is_read() -> None:
    snap = ClusterSnapshot()
    pick_mesh_config(
        snap,
        [
            _mesh("tenant", "trustDomain: evil.org\nrootNamespace: tenant\n"),
            _mesh("istio-system", "trustDomain: example.org\nrootNamespace: mesh-root\n"),
            _mesh("istio-system", "trustDomain: canary.org\n", name="istio-canary"),
        ],
    )
    assert (snap.trust_domain, snap.root_namespace) == ("example.org", "mesh-root")
    assert snap.mesh_config == "istio-system/istio"
    assert any("tenant/istio is not the mesh config" in n for n in snap.notes)


def test_a_revisions_configmap_for_that_revision() -> None:
    snap = ClusterSnapshot()
    pick_mesh_config(
        snap,
        [
            _mesh("istio-system", "trustDomain: example.org\n"),
            _mesh("istio-system", "trustDomain: canary.org\n", name="istio-canary"),
        ],
        revision="canary",
    )
    assert snap.trust_domain == "canary.org"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("trustDomain: Example.ORG/x\n", "trustDomain"),
        ("rootNamespace: Not_A_Namespace\n", "rootNamespace"),
        ("enableAutoMtls: sometimes\n", "enableAutoMtls"),
        ("defaultDestinationRuleExportTo: '*'\n", "defaultDestinationRuleExportTo"),
        ("[1, 2]\n", "not a YAML mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_mesh_values_are_reported_and_defaults_kept(text: str, problem: str) -> None:
    settings, problems = read_mesh_config(text)
    assert len(problems) == 1 and problem in problems[0]
    assert settings.trust_domain is None and settings.root_namespace is None


def test_mesh_settings_read() -> None:
    settings, problems = read_mesh_config(
        "trustDomain: example.org\nrootNamespace: mesh-root\nenableAutoMtls: false\n"
        "defaultDestinationRuleExportTo: ['.']\n"
    )
    assert problems == []
    assert settings.enable_auto_mtls is False
    assert settings.default_dr_export_to == (".",)


# ---- the same objects through --from-manifests and the live API ----------------------------------


def _cluster() -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [
        kb.namespace("istio-system"),
        kb.namespace("mesh-root"),
        kb.namespace("tenant"),
        kb.namespace("shop"),
        kb.namespace("ties"),
        kb.namespace("offsets"),
        kb.namespace("mtlsprobe"),
        _mesh("istio-system", "trustDomain: example.org\nrootNamespace: mesh-root\n"),
        # a tenant's attempt: if it were read, the root would be "tenant" (PERMISSIVE) and
        # identities would name evil.org
        _mesh("tenant", "trustDomain: evil.org\nrootNamespace: tenant\n"),
        kb.peer_auth("default", "tenant", "PERMISSIVE"),
        kb.peer_auth("default", "mesh-root", "STRICT"),
        # istio-system is not the root here: its policy is a namespace policy of its own
        kb.peer_auth("default", "istio-system", "DISABLE"),
        # two namespace policies created in the same second: name decides (a wins)
        kb.peer_auth("b-strict", "ties", "STRICT", created="2025-01-01T00:00:00Z"),
        kb.peer_auth("a-permissive", "ties", "PERMISSIVE", created="2025-01-01T00:00:00Z"),
        # the +02:00 one is an hour older although its text sorts later
        kb.peer_auth("z-strict", "offsets", "STRICT", created="2025-01-01T01:00:00+02:00"),
        kb.peer_auth("a-permissive", "offsets", "PERMISSIVE", created="2025-01-01T00:00:00Z"),
    ]
    for i, ns in enumerate(("shop", "ties", "offsets")):
        objs.append(kb.pod("app", ns, {"app": "app"}, ip=f"10.0.4.{i + 1}", sa="app"))
        objs.append(kb.service("app", ns, {"app": "app"}, [kb.sport(80, 8080)]))
    return objs


@pytest.mark.parametrize("unquote", [False, True], ids=["quoted", "yaml-timestamps"])
def test_manifests_and_live_api_read_mesh_config_and_order_alike(
    tmp_path: Path, unquote: bool
) -> None:
    files, live = plan_both(_cluster(), tmp_path, unquote_timestamps=unquote)
    for plan in (files, live):
        assert plan.targets_file.trust_domain == "example.org"
        want = {
            "shop/app:80": ("STRICT", ("10.0.4.1:8080",), "spiffe://example.org/ns/shop/sa/app"),
            "ties/app:80": (
                "PERMISSIVE",
                ("10.0.4.2:8080",),
                "spiffe://example.org/ns/ties/sa/app",
            ),
            "offsets/app:80": (
                "STRICT",
                ("10.0.4.3:8080",),
                "spiffe://example.org/ns/offsets/sa/app",
            ),
        }
        for prefix in ("shop/", "ties/", "offsets/"):
            assert targets(plan, prefix) == {k: v for k, v in want.items() if k.startswith(prefix)}
        strict = verdicts(plan, "require-strict", "")
        assert strict["shop/app:80"] == "pass"
        assert strict["ties/app:80"] == "fail"
        shadowed = {r.target for r in plan.findings if "at the same level wins" in r.reason}
        assert {"PeerAuthentication ties/b-strict", "PeerAuthentication offsets/a-permissive"} <= (
            shadowed
        )


def test_manifest_with_unquoted_naive_timestamps(tmp_path: Path) -> None:
    """YAML ``2025-01-01 00:00:00`` (no zone) is a PyYAML datetime without tzinfo: UTC."""
    objs = [
        kb.namespace("shop"),
        kb.peer_auth("z", "shop", "STRICT", created="2024-12-31T23:00:00Z"),
        kb.peer_auth("a", "shop", "PERMISSIVE", created="2025-01-01T00:00:00Z"),
    ]
    text = (
        manifests_yaml(objs)
        .replace("'2024-12-31T23:00:00Z'", "2024-12-31 23:00:00")
        .replace("'2025-01-01T00:00:00Z'", "2025-01-01 00:00:00")
    )
    path = tmp_path / "m.yaml"
    path.write_text(text)
    from jobs.plan.manifests import load_manifests

    snap = load_manifests([path], inject=False)
    assert len(snap.peerauthentications) == 2
    assert isinstance(snap.peerauthentications[0]["metadata"]["creationTimestamp"], datetime)
    assert (
        PeerAuthIndex(snap.peerauthentications, "istio-system").effective("shop", {}, 80).mode
        == Expect.STRICT
    )


# ---- the CLI: --istio-namespace / --revision on both paths ------------------------------------


def _revision_cluster() -> list[dict[str, Any]]:
    return [
        kb.namespace("istio-control"),
        kb.namespace("shop"),
        _mesh("istio-control", "trustDomain: stable.org\n"),
        _mesh("istio-control", "trustDomain: canary.org\n", name="istio-canary"),
        kb.pod("app", "shop", {"app": "app"}, ip="10.0.5.1", sa="app"),
        kb.service("app", "shop", {"app": "app"}, [kb.sport(80, 8080)]),
    ]


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ([], "cluster.local"),  # nothing in istio-system: Istio's default
        (["--istio-namespace", "istio-control"], "stable.org"),
        (["--istio-namespace", "istio-control", "--revision", "canary"], "canary.org"),
    ],
)
def test_cli_reads_the_mesh_config_of_the_named_control_plane(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], want: str
) -> None:
    import yaml

    from jobs.cli.main import main as cli_main
    from tests.fakekube import FakeKube

    objs = _revision_cluster()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(manifests_yaml(objs))
    got = []
    assert cli_main(["plan", "--from-manifests", str(manifest), "-o", "yaml", *flags]) == 0
    got.append(yaml.safe_load(capsys.readouterr().out)["trustDomain"])
    with FakeKube() as kube:
        kube.add_all(objs)
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        assert cli_main(["plan", "--kubeconfig", str(cfg), "-o", "yaml", *flags]) == 0
        got.append(yaml.safe_load(capsys.readouterr().out)["trustDomain"])
    assert got == [want, want]


def test_cli_rejects_a_revision_that_is_not_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.cli.main import main as cli_main

    assert cli_main(["plan", "--from-manifests", "x.yaml", "--revision", "../evil"]) == 64
    err = capsys.readouterr().err
    assert "--revision '../evil': not a Kubernetes name" in err and err.count("\n") == 1


def test_hostile_mesh_yaml_is_one_problem_not_a_crash() -> None:
    """The ``mesh`` key is YAML inside YAML: deep nesting and oversize are reported."""
    for text in ("a: " + "[" * 100_000, "trustDomain: x\n" + "#" * (2 << 20)):
        settings, problems = read_mesh_config(text)
        assert settings == read_mesh_config("")[0] and len(problems) == 1


def test_a_duplicated_mesh_configmap_reads_the_last() -> None:
    snap = ClusterSnapshot()
    pick_mesh_config(
        snap,
        [
            _mesh("istio-system", "trustDomain: first.org\n"),
            _mesh("istio-system", "trustDomain: last.org\n"),
        ],
    )
    assert snap.trust_domain == "last.org"
    assert any("more than once" in n for n in snap.notes)
