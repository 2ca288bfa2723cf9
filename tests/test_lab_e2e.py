"""Every built-in scenario end to end: YAML → planner → real Envoy sidecars → the
real checks → the verdicts each scenario must produce; the CLI's exit codes and
output formats; and that nothing is left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.lab.runner import LabRun, run_scenario
from jobs.lab.scenarios import builtin
from jobs.lab.supervisor import pid_alive
from probe.checks import DEFAULT_CHECKS, REGISTRY
from probe.checks.base import Settings
from probe.results import Verdict
from tests.procs import all_gone, kill_groups

pytestmark = pytest.mark.envoy

MTLSPROBE = [sys.executable, "-m", "jobs.cli.main"]


def _run(name: str, tmp: Path, require: list[str] | None = None) -> LabRun:
    scenario = builtin(name)
    run = run_scenario(
        scenario,
        tmp,
        require=list(scenario.require) if require is None else require,
        checks=list(REGISTRY),
        settings=Settings(timeout=5.0, concurrency=16),
    )
    assert run.pids and not any(pid_alive(p) for p in run.pids), "lab left processes running"
    return run


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> LabRun:
    return _run("healthy", tmp_path_factory.mktemp("healthy"))


@pytest.fixture(scope="module")
def migration(tmp_path_factory: pytest.TempPathFactory) -> LabRun:
    return _run("migration", tmp_path_factory.mktemp("migration"))


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> LabRun:
    return _run("broken", tmp_path_factory.mktemp("broken"))


def _verdicts(run: LabRun, verdict: Verdict) -> set[tuple[str, str]]:
    return {(r.check, r.target) for r in run.results if r.verdict is verdict}


def _by(run: LabRun, check: str, target: str) -> list[Verdict]:
    return [r.verdict for r in run.results if r.check == check and r.target == target]


# --- healthy ----------------------------------------------------------------------------------


def test_healthy_everything_passes(healthy: LabRun) -> None:
    assert healthy.mismatches == []
    assert _verdicts(healthy, Verdict.FAIL) == set()
    assert _verdicts(healthy, Verdict.ERROR) == set()
    checks = {r.check for r in healthy.results if r.verdict is Verdict.PASS}
    assert set(DEFAULT_CHECKS) <= checks  # authz: no AuthorizationPolicy in this scenario


def test_healthy_probes_every_endpoint_including_replicas_and_tcp(healthy: LabRun) -> None:
    plaintext = [r for r in healthy.results if r.check == "plaintext"]
    assert len(plaintext) == 6  # web, stock, 2 x ledger http, 2 x ledger tcp
    assert {r.verdict for r in plaintext} == {Verdict.PASS}
    assert all("refused" in (r.observed or "") for r in plaintext)
    # Service port 80 -> targetPort 9090: the endpoint is the pod's target port.
    stock = next(r for r in plaintext if r.target == "inventory/stock:80")
    assert stock.endpoint is not None and stock.endpoint.endswith(":9090")


def test_healthy_mesh_proves_both_identities(healthy: LabRun) -> None:
    mesh = next(r for r in healthy.results if r.check == "mesh" and r.target == "frontend/web:80")
    assert mesh.verdict is Verdict.PASS
    trusted = str(mesh.evidence.get("xfcc_trusted"))
    assert "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe" in trusted
    assert "spiffe://cluster.local/ns/frontend/sa/web" in trusted


def test_healthy_tcp_port_skips_http_only_checks(healthy: LabRun) -> None:
    assert _by(healthy, "mesh", "payments/ledger:5432") == [Verdict.PASS]  # CONNECT round trip
    assert _by(healthy, "xfcc-spoof", "payments/ledger:5432") == [Verdict.SKIP]
    assert _by(healthy, "peer-cert", "payments/ledger:5432") == [Verdict.PASS, Verdict.PASS]


# --- migration --------------------------------------------------------------------------------


def test_migration_enforcement_passes_compliance_fails_exactly_non_strict(
    migration: LabRun,
) -> None:
    assert migration.mismatches == []
    assert _verdicts(migration, Verdict.FAIL) == {
        ("require-strict", "shop/checkout:9091"),
        ("require-strict", "legacy/reports:8080"),
        ("require-strict", "batch/importer:80"),
        ("require-strict", "batch/importer:8081"),
    }
    assert _verdicts(migration, Verdict.ERROR) == set()
    assert _by(migration, "require-strict", "shop/checkout:80") == [Verdict.PASS]
    assert _by(migration, "require-strict", "shop/cart:80") == [Verdict.PASS]


def test_migration_port_level_exceptions_keyed_by_target_port(migration: LabRun) -> None:
    plain = {r.target: r for r in migration.results if r.check == "plaintext"}
    # checkout: 8080 STRICT refuses; the metrics port (Service 9091 -> target 9090) is PERMISSIVE.
    assert plain["shop/checkout:80"].observed == "refused"
    assert plain["shop/checkout:9091"].observed == "accepted"
    assert plain["shop/checkout:9091"].verdict is Verdict.PASS
    # importer 8081 is DISABLE: plaintext accepted, no certificate served, mesh call plaintext.
    assert plain["batch/importer:8081"].observed == "accepted"
    assert _by(migration, "peer-cert", "batch/importer:8081") == [Verdict.SKIP]
    assert _by(migration, "mesh", "batch/importer:8081") == [Verdict.PASS]


def test_migration_without_requirements_passes(tmp_path: Path) -> None:
    run = _run("migration", tmp_path, require=[])
    assert _verdicts(run, Verdict.FAIL) == set() and _verdicts(run, Verdict.ERROR) == set()
    assert not any(r.check.startswith("require-") for r in run.results)


# --- broken -----------------------------------------------------------------------------------


def test_broken_every_failure_is_caught_exactly(broken: LabRun) -> None:
    assert broken.mismatches == []
    assert _verdicts(broken, Verdict.FAIL) == {
        ("plaintext", "legacy/reports:8080"),  # stale STRICT expectation, PERMISSIVE mesh
        ("require-strict", "legacy/reports:8080"),
        ("require-sidecar", "shop/invoices:80"),  # never injected
        ("require-strict", "shop/invoices:80"),
        ("policy", "shop/orders:80"),  # DestinationRule DISABLE vs STRICT
        ("mesh", "shop/orders:80"),
        ("require-strict", "shop/orders:80"),  # STRICT on paper, but mesh calls fail
        ("xfcc-spoof", "shop/api:80"),  # forged XFCC reaches the app
        ("peer-cert", "shop/inventory:80"),  # expired certificate
        ("mesh", "shop/inventory:80"),
        ("peer-cert", "shop/catalog:80"),  # another service account's identity
        ("mesh", "shop/catalog:80"),
    }
    assert _verdicts(broken, Verdict.ERROR) == {
        ("xfcc-spoof", "shop/orders:80"),
        ("xfcc-spoof", "shop/inventory:80"),
        ("xfcc-spoof", "shop/catalog:80"),
    }


def test_broken_reasons_carry_the_evidence(broken: LabRun) -> None:
    def reason(check: str, target: str) -> str:
        return next(r.reason for r in broken.results if r.check == check and r.target == target)

    # The sidecar's own words (Envoy's reset reasons) reach the report.
    assert "connection termination" in reason("mesh", "shop/orders:80")
    assert "remote connection failure" in reason("mesh", "shop/catalog:80")
    assert "expired" in reason("peer-cert", "shop/inventory:80")
    assert "spiffe://cluster.local/ns/shop/sa/cart" in reason("peer-cert", "shop/catalog:80")
    stale = next(
        r for r in broken.results if r.check == "plaintext" and r.target.startswith("legacy")
    )
    assert stale.expected == "refused" and stale.observed == "accepted"


def test_broken_healthy_control_passes(broken: LabRun) -> None:
    cart = [r for r in broken.results if r.target == "shop/cart:80"]
    assert cart and {r.verdict for r in cart} == {Verdict.PASS}


def test_targets_file_is_the_check_contract(broken: LabRun) -> None:
    from probe.model import Expect, load_targets

    tf = load_targets(broken.targets_path)
    by_name = {t.name: t for t in tf.targets}
    assert by_name["legacy/reports:8080"].expect is Expect.STRICT  # the stale claim
    assert by_name["shop/invoices:80"].expect is Expect.NONE
    assert tf.root_cert_file is not None and tf.source.sidecar_admin is not None


# --- the CLI ----------------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [*MTLSPROBE, "lab", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_cli_demo_exits_0_and_explains_the_failures() -> None:
    proc = _cli()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "Scenario 1/3: healthy" in out and "Scenario 2/3: broken" in out
    assert "Scenario 3/3: blinded" in out and "Every verdict is what 'blinded' expects." in out
    assert "Every verdict is what 'healthy' expects." in out
    assert "What the checks found in 'broken', target by target:" in out
    assert "shop/api:80" in out.split("target by target:")[1]


def test_cli_single_scenario_exit_code_is_the_products() -> None:
    proc = _cli("broken", "-o", "json", "--checks", "plaintext,peer-cert")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"results", "summary"}
    assert {r["check"] for r in doc["results"]} >= {"plaintext", "peer-cert", "policy"}
    assert "== Scenario" in proc.stderr  # the narrative stays off stdout


def test_cli_user_file_runs_with_product_exit_code(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text(
        """
apiVersion: v1
kind: Namespace
metadata: {name: team, labels: {istio-injection: enabled}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: team}
spec: {mtls: {mode: STRICT}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: team}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      serviceAccountName: api
      containers: [{name: api, image: x, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: team}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""
    )
    proc = _cli("-f", str(f), "-o", "jsonl")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    mesh = [r for r in rows if r["check"] == "mesh"]
    assert [r["verdict"] for r in mesh] == ["pass"]


def test_cli_bad_input_is_exit_64(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    bad_annotation = tmp_path / "ann.yaml"
    bad_annotation.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: n, annotations: "
        "{lab.mtlsprobe.dev/cert: stale}}\nspec: {containers: [{name: c, image: x}]}\n"
    )
    for args in (
        ("-f", str(bad)),
        ("-f", str(bad_annotation)),
        ("nope",),
        ("--require", "everything"),
        ("--workloads", "0"),
    ):
        proc = _cli(*args)
        assert proc.returncode == 64, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr


def _pids(workdir: Path) -> list[int]:
    return [int(line.split()[0]) for line in (workdir / "pids").read_text().splitlines()]


def _pids_once_written(workdir: Path, timeout: float) -> list[int]:
    """The lab's PID file as soon as it lists a process (it is rewritten, truncated
    first, as processes start: an early read can find it empty)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            pids = _pids(workdir)
        except (OSError, ValueError, IndexError):
            pids = []
        if pids:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"{workdir / 'pids'} never listed a process")


def test_cli_keep_then_down(tmp_path: Path) -> None:
    proc = _cli("healthy", "--keep", "--workdir", str(tmp_path), "--checks", "self")
    pids: list[int] = []
    try:
        assert proc.returncode == 0, proc.stderr
        assert f"mtlsprobe check -f {tmp_path / 'targets.yaml'}" in proc.stdout
        assert f"mtlsprobe lab --down {tmp_path}" in proc.stdout
        pids = _pids(tmp_path)
        assert pids and all(pid_alive(p) for p in pids)
        check = subprocess.run(
            [*MTLSPROBE, "check", "-f", str(tmp_path / "targets.yaml"), "--checks", "mesh"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        down = _cli("--down", str(tmp_path))
        assert down.returncode == 0
        assert not any(pid_alive(p) for p in pids)
    finally:
        kill_groups(pids)


def _sigint_default() -> None:
    """A shell's background jobs (CI runners among them) inherit SIGINT ignored, and
    Python then never raises KeyboardInterrupt: give the lab what a terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_interrupted_leaves_nothing_running(tmp_path: Path, sig: signal.Signals) -> None:
    child = subprocess.Popen(
        [*MTLSPROBE, "lab", "healthy", "--workdir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_sigint_default,  # noqa: PLW1509 (only sets a signal disposition)
    )
    pids: list[int] = []
    try:
        pids = _pids_once_written(tmp_path, 60)
        child.send_signal(sig)
        child.wait(timeout=60)
        assert child.returncode != 0
        assert all_gone(pids)
    finally:
        if child.poll() is None:
            child.kill()
        kill_groups(pids)


def test_user_manifest_bare_pod_statefulset_tcp_and_dr(tmp_path: Path) -> None:
    """A bare Pod (no status in YAML) is started and probed; a tcp-only mesh still has a
    sidecar certificate for `self`; ISTIO_MUTUAL to a pod without a sidecar fails on
    the wire exactly where the policy engine says it will."""
    from jobs.lab.scenarios import from_files

    run = run_scenario(
        from_files([Path(__file__).with_name("lab_user_manifest.yaml")]),
        tmp_path,
        require=[],
        checks=list(REGISTRY),
        settings=Settings(timeout=5.0, concurrency=8),
    )
    assert not any(pid_alive(p) for p in run.pids)
    assert _verdicts(run, Verdict.FAIL) == {
        ("policy", "team/legacy:80"),
        ("mesh", "team/legacy:80"),
    }
    assert _verdicts(run, Verdict.ERROR) == set()
    assert _by(run, "plaintext", "team/legacy:80") == [Verdict.PASS]
    assert _by(run, "plaintext", "team/db:5432") == [Verdict.PASS, Verdict.PASS]
    assert _by(run, "self", "source") == [Verdict.PASS]


# --- negative controls ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blinded(tmp_path_factory: pytest.TempPathFactory) -> LabRun:
    return _run("blinded", tmp_path_factory.mktemp("blinded"))


def test_healthy_controls_pass_first(healthy: LabRun) -> None:
    controls = [r for r in healthy.results if r.check == "control"]
    assert {(r.target, r.evidence["kind"], r.verdict) for r in controls} == {
        ("mtlsprobe/mtlsprobe-echo-plain:80", "plaintext", Verdict.PASS),
        ("frontend/web:80", "mesh", Verdict.PASS),
    }
    first_probe = next(i for i, r in enumerate(healthy.results) if r.check != "policy")
    assert healthy.results[first_probe].check == "control"
    # The product's own control is not a target (no plaintext/compliance rows for it).
    assert not [r for r in healthy.results if r.check != "control" and "echo-plain" in r.target]


def test_broken_controls_pass_so_its_failures_are_real(broken: LabRun) -> None:
    controls = [r for r in broken.results if r.check == "control"]
    assert len(controls) == 2 and {r.verdict for r in controls} == {Verdict.PASS}


def test_blinded_probe_turns_every_strict_refusal_into_an_error(blinded: LabRun) -> None:
    assert blinded.mismatches == []
    (control,) = [r for r in blinded.results if r.check == "control" and r.endpoint]
    assert control.verdict is Verdict.ERROR and control.observed == "refused"
    plaintext = [r for r in blinded.results if r.check == "plaintext"]
    assert len(plaintext) == 2
    for r in plaintext:
        assert r.verdict is Verdict.ERROR, r
        assert r.reason.startswith(
            "plaintext detector blind: control mtlsprobe/mtlsprobe-echo-plain:80 was not "
            "accepted: it was reset (TCP RST)"
        ), r.reason
        assert r.reason.endswith("a NetworkPolicy or CNI may be resetting the probe's traffic")
        # Real Envoy did refuse: only the blind control keeps it from being a pass.
        assert r.observed == "refused" and r.evidence["verdict_if_not_blind"] == "pass"
    # Detectors of positive evidence are not affected.
    assert _by(blinded, "peer-cert", "shop/cart:80") == [Verdict.PASS]
    assert _by(blinded, "mesh", "shop/cart:80") == [Verdict.PASS]
    assert _by(blinded, "control", "shop/cart:80") == [Verdict.PASS]  # the mesh control
