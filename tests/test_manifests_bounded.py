"""``--from-manifests`` and ``lab -f`` on hostile YAML (issue 17 rule 6): alias bombs and
deep nesting exit 64 with one line; replicas cannot multiply a small file into
gigabytes; system namespaces stay out unless asked, as on the live API path."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.plan.manifests import (
    MAX_COPIED_NODES,
    MAX_REPLICAS,
    ManifestError,
    load_manifests,
    snapshot_from_documents,
)
from jobs.plan.planner import build_plan
from tests import kubebuild as kb
from tests.fakekube import FakeKube
from tests.hostile_yaml import billion_laughs


def _cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli.main", *args], capture_output=True, text=True, timeout=120
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


HOSTILE = {
    "billion-laughs": (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  "
        + billion_laughs().replace("\n", "\n  "),
        "alias bomb",
    ),
    "deep-10000": ("[" * 10_000 + "]" * 10_000, "nest"),
    "duplicate-key": ("apiVersion: v1\nkind: Pod\nkind: Service\n", "duplicate key 'kind'"),
    "recursive": ("apiVersion: v1\nkind: Pod\nmetadata: &m {name: a, x: *m}\n", "contains it"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("command", ["plan", "lab"])
def test_hostile_manifests_exit_64_with_one_line(tmp_path: Path, case: str, command: str) -> None:
    body, needle = HOSTILE[case]
    good = tmp_path / "ok.yaml"
    good.write_text(yaml.safe_dump(kb.namespace("shop")))
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    if command == "plan":
        args = ["--from-manifests", str(good), str(bad)]
    else:
        args = ["-f", str(good), "-f", str(bad)]
    proc, cpu = _cli(command, *args)
    assert proc.returncode == 64, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr
    assert cpu < 10, f"{cpu:.2f} s CPU, interpreter start included"


def test_fifo_among_manifests_is_refused(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ManifestError, match="not a regular file"):
        load_manifests([fifo])
    good = tmp_path / "d"
    good.mkdir()
    (good / "ns.yaml").write_text(yaml.safe_dump(kb.namespace("shop")))
    os.mkfifo(good / "skipped.yaml")  # inside a directory: not a file, not read
    assert [n["metadata"]["name"] for n in load_manifests([good]).namespaces] == ["shop"]


def _deployment(name: str, replicas: object, template_extra: dict[str, Any] | None = None) -> str:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app"}]}
    spec.update(template_extra or {})
    return yaml.safe_dump(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "replicas": replicas,
                "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
            },
        }
    )


def test_a_300_byte_deployment_cannot_allocate_gigabytes(tmp_path: Path) -> None:
    p = tmp_path / "d.yaml"
    p.write_text(_deployment("web", 10**12))
    assert len(p.read_bytes()) < 300
    start = time.process_time()
    snap = load_manifests([p])
    assert time.process_time() - start < 2.0
    assert len(snap.pods) == MAX_REPLICAS
    (problem,) = snap.problems
    assert "spec.replicas 1000000000000: planned 100 pods" in problem.message
    assert problem.name == "web"


def test_large_templates_share_one_copy_budget(tmp_path: Path) -> None:
    """Replicas of a big template are capped by the nodes they copy, across workloads."""
    env = [{"name": f"V{i}", "value": "x"} for i in range(10_000)]  # ~30,000 nodes
    p = tmp_path / "d.yaml"
    p.write_text(
        "---\n".join(
            _deployment(f"w{i}", 100, {"initContainers": [{"name": "i", "env": env}]})
            for i in range(3)
        )
    )
    start = time.process_time()
    snap = load_manifests([p])
    assert time.process_time() - start < 30.0
    per_pod = 30_000
    assert len(snap.pods) <= MAX_COPIED_NODES // per_pod + 3
    assert len(snap.problems) >= 2
    assert all("copied nodes" in pr.message for pr in snap.problems[1:])


def test_null_replicas_default_to_one() -> None:
    (doc,) = yaml.safe_load_all(_deployment("web", None))
    snap = snapshot_from_documents([("t", doc)])
    assert [x["metadata"]["name"] for x in snap.pods] == ["web-0"] and snap.problems == []


def test_replicas_within_the_cap_are_planned_in_full(tmp_path: Path) -> None:
    p = tmp_path / "d.yaml"
    p.write_text(_deployment("web", 3))
    snap = load_manifests([p])
    assert [x["metadata"]["name"] for x in snap.pods] == ["web-0", "web-1", "web-2"]
    assert snap.problems == []


@pytest.mark.parametrize("bad", [True, -1, "3", [3], 2.5])
def test_replicas_that_are_not_counts_are_problems(bad: object) -> None:
    (doc,) = yaml.safe_load_all(_deployment("web", bad))
    snap = snapshot_from_documents([("t", doc)])
    assert snap.pods == [] and "is not a count" in snap.problems[0].message


# ---- system namespaces: --from-manifests agrees with the live API path ---------------------


def _objects() -> list[dict[str, Any]]:
    return [
        kb.namespace("istio-system"),
        kb.namespace("kube-system"),
        kb.namespace("shop", {"istio-injection": "enabled"}),
        kb.peer_auth("default", "istio-system", "STRICT"),
        kb.pod("coredns", "kube-system", {"k8s-app": "dns"}, ip="10.0.9.1", sidecar=False),
        kb.service("dns", "kube-system", {"k8s-app": "dns"}, [kb.sport(53, 53, name="dns")]),
        kb.pod("istiod", "istio-system", {"app": "istiod"}, ip="10.0.9.2", sidecar=False),
        kb.service("istiod", "istio-system", {"app": "istiod"}, [kb.sport(15012, 15012)]),
        kb.pod("cart-0", "shop", {"app": "cart"}, ip="10.0.1.1", sa="cart"),
        kb.service("cart", "shop", {"app": "cart"}, [kb.sport(80, 8080)]),
    ]


@pytest.fixture
def kube(fake_kube: FakeKube) -> FakeKube:
    fake_kube.add_all(_objects())
    return fake_kube


def _plan_names(*args: str) -> set[str]:
    proc, _ = _cli("plan", "-o", "yaml", *args)
    assert proc.returncode in (0, 2), proc.stderr
    doc = yaml.safe_load(proc.stdout)
    return {t["name"] for t in doc["targets"]}


@pytest.mark.parametrize("include_system", [False, True])
def test_system_namespaces_as_on_the_live_path(
    kube: FakeKube, tmp_path: Path, include_system: bool
) -> None:
    manifests = tmp_path / "cluster.yaml"
    manifests.write_text(yaml.safe_dump_all(_objects()))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kube.kubeconfig()))
    extra = ["--include-system"] if include_system else []
    from_files = _plan_names("--from-manifests", str(manifests), *extra)
    live = _plan_names("--kubeconfig", str(kubeconfig), *extra)
    assert from_files == live
    system = {"kube-system/dns:53", "istio-system/istiod:15012"}
    assert "shop/cart:80" in from_files
    assert (system <= from_files) is include_system
    assert not (system & from_files) or include_system


def test_named_namespaces_still_win(tmp_path: Path) -> None:
    manifests = tmp_path / "cluster.yaml"
    manifests.write_text(yaml.safe_dump_all(_objects()))
    assert _plan_names("--from-manifests", str(manifests), "-n", "kube-system") == {
        "kube-system/dns:53"
    }


def test_load_time_is_linear_enough(tmp_path: Path) -> None:
    """2,000 pods load well within a CPU-second budget through the C parser."""
    pods = [
        kb.pod(f"p{i}", f"ns-{i % 20}", {"app": "a"}, ip=f"10.1.{i // 250}.{i % 250}")
        for i in range(2_000)
    ]
    p = tmp_path / "pods.yaml"
    p.write_text(yaml.safe_dump_all(pods))
    start = time.process_time()
    snap = load_manifests([p])
    assert len(snap.pods) == 2_000
    assert time.process_time() - start < 10.0
    assert build_plan(snap) is not None


@pytest.mark.parametrize("mesh", ["[" * 2_000 + "]" * 2_000, billion_laughs()])
def test_hostile_mesh_config_is_a_finding_not_a_crash(tmp_path: Path, mesh: str) -> None:
    """The ``istio`` ConfigMap's ``mesh`` key is YAML inside YAML: bounded the same way."""
    cm = kb.configmap("istio", "istio-system", {"mesh": mesh})
    p = tmp_path / "cm.yaml"
    p.write_text(yaml.safe_dump(cm))
    proc, _ = _cli("plan", "--from-manifests", str(p), "-o", "yaml")
    assert proc.returncode == 2, proc.stderr
    assert "key 'mesh' is not valid YAML" in proc.stdout
