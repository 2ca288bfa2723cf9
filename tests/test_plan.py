"""The planner and ``mtlsprobe plan`` from YAML: targets, expectations, findings,
and a targets file that ``mtlsprobe check`` loads unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.cli.main import main as cli_main
from jobs.plan.manifests import expand_workload, load_manifests, snapshot_from_documents
from jobs.plan.objects import ClusterSnapshot, set_pod_ip
from jobs.plan.planner import Requirements, build_plan
from probe.model import Expect, Protocol, load_targets
from probe.results import Verdict
from probe.targetsyaml import targets_yaml
from tests.kubebuild import (
    dest_rule,
    endpoint_slice,
    namespace,
    peer_auth,
    pod,
    service,
    sport,
)
from tests.procs import mtlsprobe

SCENARIOS = Path(__file__).resolve().parent.parent / "jobs" / "lab" / "scenarios"


def _snap(*objs: dict[str, Any]) -> ClusterSnapshot:
    return snapshot_from_documents([("test", o) for o in objs], inject=False)


def _by_name(plan: Any) -> dict[str, Any]:
    return {t.name: t for t in plan.targets_file.targets}


def _with_ips(snap: ClusterSnapshot) -> ClusterSnapshot:
    for i, p in enumerate(snap.pods):
        set_pod_ip(p, f"127.0.10.{i + 2}")
    snap.loopback_pods = True  # as jobs/lab/build.py: the lab's pods live on 127/8
    return snap


# ---- the lab's scenarios through the planner -------------------------------------------------


def test_migration_scenario_expectations_and_strict_compliance() -> None:
    snap = _with_ips(load_manifests([SCENARIOS / "migration.yaml"]))
    plan = build_plan(snap, Requirements(strict=True))
    t = _by_name(plan)
    assert t["shop/checkout:80"].expect == Expect.STRICT
    # Service port 9091 -> targetPort 9090; portLevelMtls is keyed 9090.
    assert t["shop/checkout:9091"].expect == Expect.PERMISSIVE
    assert [e.port for e in t["shop/checkout:9091"].endpoints] == [9090]
    assert t["legacy/reports:8080"].expect == Expect.PERMISSIVE
    assert t["batch/importer:80"].expect == Expect.PERMISSIVE
    assert t["batch/importer:8081"].expect == Expect.DISABLE
    failed = {
        r.target for r in plan.findings if r.check == "require-strict" and r.verdict == "fail"
    }
    assert failed == {
        "shop/checkout:9091",
        "legacy/reports:8080",
        "batch/importer:80",
        "batch/importer:8081",
    }
    assert plan.exit_code() == 1


def test_broken_scenario_no_sidecar_and_destination_rule_contradiction() -> None:
    plan = build_plan(_with_ips(load_manifests([SCENARIOS / "broken.yaml"])))
    t = _by_name(plan)
    assert t["shop/invoices:80"].expect == Expect.NONE  # opted out of injection
    assert t["shop/cart:80"].expect == Expect.STRICT
    contradiction = [
        r for r in plan.findings if r.target == "shop/orders:80" and r.check == "policy"
    ]
    assert [r.verdict for r in contradiction] == [Verdict.FAIL]
    assert "503" in contradiction[0].reason
    edges = [e for e in plan.edges if e.target == "shop/orders:80"]
    assert edges and edges[0].dr_mode == "DISABLE" and not edges[0].client.mtls
    # No --require: compliance is not judged, so nothing else fails.
    assert {r.target for r in plan.findings if r.verdict == Verdict.FAIL} == {"shop/orders:80"}
    assert not [r for r in plan.findings if r.check.startswith("require-")]


def test_require_sidecar_fails_only_uninjected_workloads() -> None:
    plan = build_plan(_with_ips(load_manifests([SCENARIOS / "broken.yaml"])), ["sidecar"])
    req = {r.target: r.verdict for r in plan.findings if r.check == "require-sidecar"}
    assert req["shop/invoices:80"] == Verdict.FAIL
    assert {k for k, v in req.items() if v == Verdict.FAIL} == {"shop/invoices:80"}


def test_coverage_summary() -> None:
    plan = build_plan(_with_ips(load_manifests([SCENARIOS / "broken.yaml"])))
    (cov,) = [r for r in plan.findings if r.target == "mesh"]
    # 8 pods: broken's 7 and the plaintext control (mtlsprobe-echo-plain, no sidecar).
    assert cov.evidence["pods"] == 8 and cov.evidence["podsWithProxy"] == 6
    assert "75%" in cov.reason


# ---- manifests --------------------------------------------------------------------------------


def test_deployment_expansion_is_deterministic_and_has_no_ip() -> None:
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}},
                "spec": {
                    "serviceAccountName": "web",
                    "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}],
                },
            },
        },
    }
    pods = expand_workload(dep)
    assert [p["metadata"]["name"] for p in pods] == ["web-0", "web-1"]
    assert pods == expand_workload(dep)
    assert all("podIP" not in p["status"] for p in pods)
    assert pods[0]["metadata"]["labels"] == {"app": "web"}
    assert pods[0]["spec"]["serviceAccountName"] == "web"


def test_manifests_list_kind_default_namespace_and_bad_objects(tmp_path: Path) -> None:
    good = pod("a", "default", {"app": "a"}, ip="10.1.0.1", sidecar=False)
    del good["metadata"]["namespace"]
    doc = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            good,
            service("a", "default", {"app": "a"}, [sport(80, 8080)]),
            peer_auth("bad", "default", "STRICTEST"),
        ],
    }
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump(doc) + "---\n" + yaml.safe_dump({"kind": "Pod", "metadata": {}}))
    snap = load_manifests([tmp_path])
    assert [p["metadata"]["namespace"] for p in snap.pods] == ["default"]
    assert {str(p) for p in snap.problems} == {
        "PeerAuthentication default/bad: spec.mtls.mode 'STRICTEST' is not one of "
        "DISABLE, PERMISSIVE, STRICT, UNSET",
        "Pod: metadata.name missing",
    }
    plan = build_plan(snap)
    errors = [r for r in plan.findings if r.verdict == Verdict.ERROR]
    assert len(errors) == 2
    assert _by_name(plan)["default/a:80"].expect == Expect.NONE


def test_injection_is_applied_to_manifests_pods() -> None:
    docs = [
        namespace("shop", {"istio-injection": "enabled"}),
        pod("a", "shop", ip=None, sidecar=False),
        pod("b", "shop", {"sidecar.istio.io/inject": "false"}, ip=None, sidecar=False),
    ]
    snap = snapshot_from_documents([("t", d) for d in docs])
    marks = {
        p["metadata"]["name"]: p["metadata"]["labels"].get("security.istio.io/tlsMode")
        for p in snap.pods
    }
    assert marks == {"a": "istio", "b": None}


# ---- planner details ---------------------------------------------------------------------------


def test_endpointslices_win_over_selector_and_skip_unready() -> None:
    snap = _snap(
        pod("a-0", "shop", {"app": "a"}, ip="10.0.0.1", ports=[("http", 8080)]),
        pod("a-1", "shop", {"app": "a"}, ip="10.0.0.2", ports=[("http", 8080)]),
        pod("a-2", "shop", {"app": "a"}, ip="10.0.0.3", ports=[("http", 8080)]),
        service("a", "shop", {"app": "a"}, [sport(80, "http")]),
        endpoint_slice(
            "a-xyz",
            "shop",
            "a",
            [("10.0.0.1", "a-0", True), ("10.0.0.2", "a-1", False)],
            [("http", 8080)],
        ),
    )
    t = _by_name(build_plan(snap))["shop/a:80"]
    assert [str(e) for e in t.endpoints] == ["10.0.0.1:8080"]


def test_named_target_port_and_selector_fallback() -> None:
    snap = _snap(
        pod("a-0", "shop", {"app": "a"}, ip="10.0.0.1", ports=[("web", 8081)]),
        pod("a-1", "shop", {"app": "a"}, ip="10.0.0.2", ports=[("web", 8081)], ready=False),
        service("a", "shop", {"app": "a"}, [sport(80, "web")]),
    )
    t = _by_name(build_plan(snap))["shop/a:80"]
    assert [str(e) for e in t.endpoints] == ["10.0.0.1:8081"]


def test_pods_with_different_service_accounts_are_split() -> None:
    snap = _snap(
        pod("a-0", "shop", {"app": "a"}, ip="10.0.0.1", sa="one"),
        pod("a-1", "shop", {"app": "a"}, ip="10.0.0.2", sa="two"),
        service("a", "shop", {"app": "a"}, [sport(80, 8080)]),
    )
    plan = build_plan(snap)
    t = _by_name(plan)
    assert set(t) == {"shop/a:80@one/PERMISSIVE", "shop/a:80@two/PERMISSIVE"}
    assert t["shop/a:80@two/PERMISSIVE"].identity == "spiffe://cluster.local/ns/shop/sa/two"
    assert any("split" in r.reason for r in plan.findings)
    assert {e.target for e in plan.edges} == set(t)


def test_echo_protocol_identity_and_trust_domain() -> None:
    snap = _snap(
        pod("e", "shop", {"app.kubernetes.io/name": "mtlsprobe-echo"}, ip="10.0.0.9", sa="echo"),
        service(
            "echo",
            "shop",
            {"app.kubernetes.io/name": "mtlsprobe-echo"},
            [sport(80, 8080), sport(5432, 5432, name="tcp-db")],
        ),
    )
    snap.trust_domain = "example.org"
    t = _by_name(build_plan(snap))
    assert t["shop/echo:80"].echo and t["shop/echo:80"].protocol == Protocol.HTTP
    assert t["shop/echo:5432"].protocol == Protocol.TCP
    assert t["shop/echo:80"].identity == "spiffe://example.org/ns/shop/sa/echo"
    assert t["shop/echo:80"].host == "echo.shop.svc.cluster.local"


def test_edges_and_inbound_for_the_lab() -> None:
    snap = _snap(
        peer_auth("w", "shop", "STRICT", selector={"app": "a"}, ports={9090: "DISABLE"}),
        pod("a-0", "shop", {"app": "a"}, ip="10.0.0.1", ports=[("http", 8080), ("m", 9090)]),
        service("a", "shop", {"app": "a"}, [sport(80, 8080)]),
        dest_rule("d", "shop", "a", "ISTIO_MUTUAL"),
    )
    plan = build_plan(snap)
    (edge,) = plan.edges
    assert (edge.pod.key, edge.target_port, edge.server_mode, edge.dr_mode) == (
        "shop/a-0",
        8080,
        Expect.STRICT,
        "ISTIO_MUTUAL",
    )
    assert edge.client.mtls and edge.pod.has_sidecar and edge.pod.tls_mode_label == "istio"
    modes = {(i.pod.name, i.port): i.mode for i in plan.inbound}
    assert modes == {("a-0", 8080): Expect.STRICT, ("a-0", 9090): Expect.DISABLE}


def test_requirements_parse() -> None:
    assert Requirements.parse(["strict,sidecar"]) == Requirements(strict=True, sidecar=True)
    with pytest.raises(ValueError, match="unknown requirement 'mtls'"):
        Requirements.parse(["mtls"])


# ---- the CLI: -o yaml is a targets file -------------------------------------------------------


def _free_port() -> int:
    """A port where nothing listens, held for the session (tests.tlsservers)."""
    from tests.tlsservers import nothing_listening

    return nothing_listening().port


def test_plan_yaml_round_trips_through_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()  # nothing listens there: check must report error, not a usage error
    docs = [
        namespace("shop", {"istio-injection": "enabled"}),
        peer_auth("default", "shop", "STRICT"),
        pod("a-0", "shop", {"app": "a"}, ip="10.0.0.1", sa="a", ports=[("http", port)]),
        service("a", "shop", {"app": "a"}, [sport(80, "http")]),
    ]
    manifests = tmp_path / "m.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    assert cli_main(["plan", "--from-manifests", str(manifests), "-o", "yaml"]) == 0
    out = capsys.readouterr().out
    targets = tmp_path / "targets.yaml"
    targets.write_text(out)
    loaded = load_targets(targets)
    assert loaded == build_plan(load_manifests([manifests])).targets_file
    (t,) = loaded.targets
    assert (t.name, t.expect, [str(e) for e in t.endpoints]) == (
        "shop/a:80",
        Expect.STRICT,
        [f"10.0.0.1:{port}"],
    )
    # A plan never names a loopback address (tests/test_redteam_plan.py); check runs
    # against the same file pointed at this host, where nothing listens on ``port``.
    targets.write_text(out.replace(f"10.0.0.1:{port}", f"127.0.0.1:{port}"))
    proc = mtlsprobe(
        *("check", "-f", str(targets), "--checks", "plaintext", "-o", "json", "--timeout", "1")
    )
    assert proc.returncode == 2, proc.stderr  # nothing listening: error, never pass
    assert json.loads(proc.stdout)["results"][0]["verdict"] == "error"


def test_plan_json_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--from-manifests", str(SCENARIOS / "migration.yaml"), "-o", "json"]
    assert cli_main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"targets", "findings", "summary", "edges"} <= set(doc)
    assert doc["edges"][0]["serverMode"] in ("STRICT", "PERMISSIVE", "DISABLE")
    assert cli_main([*args, "--require", "strict"]) == 1
    capsys.readouterr()
    assert cli_main([*args, "--require", "bogus"]) == 64
    assert "unknown requirement" in capsys.readouterr().err
    assert cli_main(["plan", "--from-manifests", str(tmp_path / "missing.yaml")]) == 64
    assert "no such file" in capsys.readouterr().err


_ascii = st.text(alphabet=st.characters(codec="ascii"), max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(_ascii, min_size=0, max_size=4),
    port=st.integers(1, 65535),
    flag=st.booleans(),
)
def test_targets_yaml_writer_round_trips(names: list[str], port: int, flag: bool) -> None:
    doc = {
        "trustDomain": names[0] if names else "cluster.local",
        "source": {"identity": names[-1] if names else "x"},
        "targets": [
            {"name": n, "host": n, "port": port, "endpoints": names, "echo": flag} for n in names
        ],
    }
    assert yaml.safe_load(targets_yaml(doc)) == doc


def test_namespace_flags(capsys: pytest.CaptureFixture[str]) -> None:
    migration = str(SCENARIOS / "migration.yaml")
    assert cli_main(["plan", "--from-manifests", migration, "-n", "shop", "-o", "json"]) == 0
    names = {t["name"] for t in json.loads(capsys.readouterr().out)["targets"]["targets"]}
    assert names == {"shop/cart:80", "shop/checkout:80", "shop/checkout:9091"}
    assert cli_main(["plan", "--from-manifests", migration, "-n", "shop", "-A"]) == 64
    assert "-n cannot be combined" in capsys.readouterr().err


def test_ambient_pods_are_enforced_by_ztunnel() -> None:
    redirected = {"ambient.istio.io/redirection": "enabled"}
    snap = _snap(
        namespace("amb", {"istio.io/dataplane-mode": "ambient"}),
        peer_auth("default", "amb", "STRICT"),
        pod("in", "amb", {"app": "in"}, ip="10.0.0.1", sidecar=False, annotations=redirected),
        pod("out", "amb", {"app": "out"}, ip="10.0.0.2", sidecar=False),
        service("in", "amb", {"app": "in"}, [sport(80, 8080)]),
        service("out", "amb", {"app": "out"}, [sport(80, 8080)]),
    )
    plan = build_plan(snap)
    t = _by_name(plan)
    assert t["amb/in:80"].expect == Expect.STRICT
    assert t["amb/out:80"].expect == Expect.NONE
    (edge,) = [e for e in plan.edges if e.pod.name == "in"]
    assert edge.pod.ambient and edge.client.mtls
    assert any(r.target == "pod amb/out" and "not redirected" in r.reason for r in plan.findings)


def test_no_ready_endpoints_and_foreign_slice_endpoints() -> None:
    snap = _snap(
        peer_auth("default", "shop", "STRICT"),
        pod("a-0", "shop", {"app": "a"}, ip="10.0.0.1", ready=False),
        service("a", "shop", {"app": "a"}, [sport(80, 8080)]),
        service("ext", "shop", None, [sport(443, 443, name="https")]),
        {
            **endpoint_slice("ext-1", "shop", "ext", [], [("https", 443)]),
            "endpoints": [{"addresses": ["192.0.2.7"], "conditions": {"ready": True}}],
        },
    )
    plan = build_plan(snap, ["strict"])
    # Issue 17 rule 2: a port with nothing probed behind it is not a target at all,
    # and its compliance result is never pass.
    assert _by_name(plan) == {}
    reasons = " | ".join(r.reason for r in plan.findings)
    assert "no running, ready pod matches the selector" in reasons
    assert "no targetRef Pod" in reasons
    req = {r.target: r.verdict for r in plan.findings if r.check == "require-strict"}
    assert req == {"shop/a:80": Verdict.ERROR, "shop/ext:443": Verdict.FAIL}
