"""The mesh root comes only from istiod's namespace (jobs/plan/meshroot.py).

istiod's namespace controller copies ``istio-ca-root-cert`` into every namespace
(pilot/pkg/serviceregistry/kube/controller/namespacecontroller.go); a tenant can write
the copy in their own namespace. A root planted there must never become the root the
chain checks (peer-cert, self) trust - on the ``--from-manifests`` path and on the live
path (the fake API server) alike - and a root found only there is a finding."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.cli.main import build_parser
from jobs.cli.main import main as cli_main
from jobs.plan.discovery import Options, discover
from jobs.plan.manifests import load_manifests
from jobs.plan.meshroot import pick_root_cert
from jobs.plan.objects import ClusterSnapshot
from tests import kubebuild as kb
from tests.fakekube import FakeKube
from tests.istiocase import manifests_yaml

TRUSTED = "-----BEGIN CERTIFICATE-----\nTRUSTED\n-----END CERTIFICATE-----\n"
PLANTED = "-----BEGIN CERTIFICATE-----\nTENANT-CA\n-----END CERTIFICATE-----\n"


def _root(ns: str, pem: str) -> dict[str, Any]:
    return kb.configmap("istio-ca-root-cert", ns, {"root-cert.pem": pem})


def _cluster(*extra: dict[str, Any], istio_ns: str = "istio-system") -> list[dict[str, Any]]:
    return [
        kb.namespace(istio_ns),
        kb.namespace("shop"),
        kb.namespace("evil"),
        kb.pod("app", "shop", {"app": "app"}, ip="10.0.5.1", sa="app"),
        kb.service("app", "shop", {"app": "app"}, [kb.sport(80, 8080)]),
        *extra,
    ]


def _both(
    objs: list[dict[str, Any]], tmp_path: Path, istio_ns: str = "istio-system"
) -> tuple[ClusterSnapshot, ClusterSnapshot, list[tuple[str, str]]]:
    """(snapshot from manifests, snapshot from the fake API server, configmaps read live)."""
    path = tmp_path / "objects.yaml"
    path.write_text(manifests_yaml(objs))
    files = load_manifests([path], inject=False, istio_namespace=istio_ns)
    with FakeKube() as kube:
        kube.add_all(objs)
        api = kube.api_client()
        try:
            live = discover(api, Options(istio_namespace=istio_ns))
        finally:
            api.close()
        reads = [
            (c.path.split("/")[4], c.path.rsplit("/", 1)[1])
            for c in kube.calls
            if "/configmaps" in c.path
        ]
    return files, live, reads


def _notes(snap: ClusterSnapshot) -> str:
    return "\n".join(snap.notes)


def test_a_root_planted_in_a_tenant_namespace_is_never_used(tmp_path: Path) -> None:
    """No root in istio-system, one in a tenant namespace: no root at all, and it is said."""
    files, live, reads = _both(_cluster(_root("evil", PLANTED)), tmp_path)
    assert files.root_cert_pem is None and live.root_cert_pem is None
    assert (
        "ConfigMap istio-ca-root-cert in evil holds a root while istio-system has none: "
        "not used" in _notes(files)
    )
    assert "istio-system/istio-ca-root-cert (key root-cert.pem) not found" in _notes(live)
    # The live path does not even read a tenant's copy (nor the old fallback's).
    assert {ns for ns, _ in reads} == {"istio-system"}


def test_a_tenant_root_next_to_the_trusted_one_loses(tmp_path: Path) -> None:
    """Whatever the order of the objects, the trusted copy wins and the other is named."""
    for order in (
        (_root("evil", PLANTED), _root("istio-system", TRUSTED)),
        (_root("istio-system", TRUSTED), _root("evil", PLANTED)),
    ):
        files, live, _ = _both(_cluster(*order), tmp_path)
        assert files.root_cert_pem == TRUSTED and live.root_cert_pem == TRUSTED
        assert "in evil holds a root other than istio-system's: not used" in _notes(files)


def test_copies_equal_to_the_trusted_root_are_silent(tmp_path: Path) -> None:
    """What istiod writes everywhere is not a finding."""
    files, live, _ = _both(
        _cluster(_root("istio-system", TRUSTED), _root("shop", TRUSTED)), tmp_path
    )
    assert files.root_cert_pem == TRUSTED == live.root_cert_pem
    assert "istio-ca-root-cert" not in _notes(files) + _notes(live)


def test_the_mesh_root_namespace_is_not_a_root_source(tmp_path: Path) -> None:
    """rootNamespace is set by the mesh config and often writable by policy authors: a
    root found only there is not used either."""
    mesh = kb.configmap("istio", "istio-system", {"mesh": "rootNamespace: istio-config\n"})
    objs = _cluster(mesh, kb.namespace("istio-config"), _root("istio-config", PLANTED))
    files, live, reads = _both(objs, tmp_path)
    assert files.root_namespace == live.root_namespace == "istio-config"
    assert files.root_cert_pem is None and live.root_cert_pem is None
    assert "istio-config" not in {ns for ns, _ in reads}


def test_the_named_control_plane_namespace_is_the_trusted_one(tmp_path: Path) -> None:
    objs = _cluster(
        _root("istio-control", TRUSTED), _root("istio-system", PLANTED), istio_ns="istio-control"
    )
    files, live, reads = _both(objs, tmp_path, istio_ns="istio-control")
    assert files.root_cert_pem == TRUSTED == live.root_cert_pem
    assert {ns for ns, _ in reads} == {"istio-control"}


@pytest.mark.parametrize("live", [False, True])
def test_cli_root_cert_file_never_writes_a_planted_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], live: bool
) -> None:
    """End to end: `plan --root-cert-file` refuses when the only root is a tenant's, and
    writes the trusted one when --istio-namespace names where istiod runs."""
    objs = _cluster(_root("evil", PLANTED), _root("istio-control", TRUSTED))
    out = tmp_path / "root.pem"
    with FakeKube() as kube:
        kube.add_all(objs)
        if live:
            cfg = tmp_path / "kubeconfig"
            cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
            source = ["--kubeconfig", str(cfg)]
        else:
            manifest = tmp_path / "m.yaml"
            manifest.write_text(manifests_yaml(objs))
            source = ["--from-manifests", str(manifest)]
        args = ["plan", *source, "-o", "yaml", "--root-cert-file", str(out)]
        assert cli_main(args) == 64
        assert "no mesh root found" in capsys.readouterr().err
        assert not out.exists()
        assert cli_main([*args, "--istio-namespace", "istio-control"]) == 0
        assert out.read_text() == TRUSTED
        doc = yaml.safe_load(capsys.readouterr().out)
        assert doc["rootCertFile"] == str(out.resolve())


def test_a_note_about_many_tenant_roots_is_bounded() -> None:
    roots = [(f"t{i:04d}", PLANTED) for i in range(5000)]
    trusted, notes = pick_root_cert([*roots, ("istio-system", TRUSTED)], "istio-system")
    assert trusted == TRUSTED
    assert len(notes) == 1 and "and 4995 more" in notes[0] and len(notes[0]) < 400


# ---- --istio-namespace / --revision: one definition for plan, run and agent -----------------


def _flag_actions(command: str) -> dict[str, tuple[object, ...]]:
    parser = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices[command]
    return {
        opt: (a.dest, a.default, a.help, a.metavar, a.type)
        for a in p._actions
        for opt in a.option_strings
        if opt in ("--istio-namespace", "--revision")
    }


def test_run_and_agent_take_the_control_plane_flags_as_plan_does() -> None:
    plan = _flag_actions("plan")
    assert set(plan) == {"--istio-namespace", "--revision"}
    assert _flag_actions("run") == plan == _flag_actions("agent")


@pytest.mark.parametrize("command", [["plan", "--from-manifests", "x.yaml"], ["run"]])
def test_a_bad_control_plane_name_is_one_line(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    assert cli_main([*command, "--istio-namespace", "Istio_System"]) == 64
    err = capsys.readouterr().err
    assert "--istio-namespace 'Istio_System': not a Kubernetes name" in err
    assert err.count("\n") == 1


def test_the_agent_plans_from_the_named_control_plane(tmp_path: Path) -> None:
    from jobs.agent.discovery import discovery_source
    from jobs.cli.agent import options
    from probe.cliargs import UsageError

    objs = _cluster(
        kb.configmap("istio-canary", "istio-control", {"mesh": "trustDomain: canary.org\n"}),
        _root("istio-control", TRUSTED),
        _root("evil", PLANTED),
        istio_ns="istio-control",
    )
    with FakeKube() as kube:
        kube.add_all(objs)
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        argv = [
            "agent",
            "--kind",
            "plain",
            "--kubeconfig",
            str(cfg),
            "--istio-namespace",
            "istio-control",
        ]
        args = build_parser(argv).parse_args([*argv, "--revision", "canary"])
        config = options(args).discovery
        assert config is not None
        tf = discovery_source(config).load()
        assert tf.trust_domain == "canary.org"
        assert tf.root_cert_file is not None
        assert Path(tf.root_cert_file).read_text() == TRUSTED
        Path(tf.root_cert_file).unlink()
        bad = build_parser(argv).parse_args([*argv, "--revision", "../x"])
        with pytest.raises(UsageError, match=re.escape("--revision '../x': not a Kubernetes name")):
            options(bad)
