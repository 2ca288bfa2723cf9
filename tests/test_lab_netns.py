"""``mtlsprobe lab --netns``: pods as network namespaces, sidecars behind Istio's capture
rules, the probes run as in a pod. Root only: skipped loudly otherwise.

Every test names its lab objects with its own prefix and checks afterwards that no
namespace, link, hosts directory, host iptables rule or process of it is left, also
after the lab process is SIGKILLed and ``lab --down`` cleans up.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from jobs.lab.netns.lab import NetnsRun, run_scenario_netns
from jobs.lab.netns.net import NetState, leftovers, list_netns
from jobs.lab.runner import run_scenario
from jobs.lab.scenarios import builtin
from jobs.lab.supervisor import LabError, pid_alive
from probe.checks import REGISTRY
from probe.results import Verdict
from tests.netnscase import AS_NOBODY, SETTINGS, WHY_NOT, HostSnapshot

MTLSPROBE = [sys.executable, "-m", "jobs.cli.main"]


needs_root = pytest.mark.skipif(WHY_NOT is not None, reason=f"SKIPPED LOUDLY: {WHY_NOT}")
pytestmark = pytest.mark.envoy


def _netns(name: str, workdir: Path, prefix: str, **kw: object) -> NetnsRun:
    scenario = builtin(name)
    return run_scenario_netns(
        scenario,
        workdir,
        require=list(scenario.require),
        checks=list(REGISTRY),
        settings=SETTINGS,
        prefix=prefix,
        **kw,  # type: ignore[arg-type]
    )


def _verdicts(results: object) -> collections.Counter[tuple[object, ...]]:
    """(check, target, authz source and request, verdict) counts: endpoints are pod IPs
    and differ between labs."""
    assert isinstance(results, list)
    return collections.Counter(
        (r.check, r.target, r.source, r.request, r.verdict.value) for r in results
    )


def test_refused_without_root_in_one_line() -> None:
    argv = [*MTLSPROBE, "lab", "healthy", "--netns"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("SKIPPED LOUDLY: setpriv missing, cannot drop root for this test")
        argv = [*AS_NOBODY, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 64, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--netns needs root" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@needs_root
def test_healthy_mesh_calls_go_through_capture(tmp_path: Path, prefix: str) -> None:
    # A native sidecar (no --quit-sidecar) stays up, so its Envoy's stats can be read.
    run = _netns("healthy", tmp_path / "w", prefix, native_sidecar=True)
    assert run.pids and not any(pid_alive(p) for p in run.pids), "processes left running"
    assert run.mismatches == []
    assert all(r.verdict in (Verdict.PASS, Verdict.SKIP) for r in run.results), [
        (r.check, r.target, r.reason) for r in run.results if r.verdict is not Verdict.PASS
    ]
    mesh = [r for r in run.results if r.check == "mesh"]
    assert mesh and all(r.verdict is Verdict.PASS for r in mesh)
    # The probe had no proxy setting: what it was given is the in-pod contract.
    doc = yaml.safe_load((tmp_path / "w" / "targets.yaml").read_text())
    assert "sidecarProxy" not in doc.get("source", {})
    assert "sidecarAdmin" not in doc.get("source", {})
    # Every service port was reached through the probe sidecar's outbound clusters:
    # the kernel redirected the connections (iptables counters) and Envoy counted them.
    ports = {(t["host"], t["port"]) for t in doc["targets"]}
    assert run.captured >= len(ports)
    for host, port in ports:
        key = f"cluster.outbound|{port}||{host}.upstream_cx_total"
        assert run.sidecar_stats.get(key, 0) >= 1, (key, sorted(run.sidecar_stats)[:20])
    # Envoy handed each connection from virtualOutbound (15001, use_original_dst) to the
    # listener of its original destination port, as in a pod; 15001 itself counts none.
    for _, port in ports:
        handed = [
            v
            for k, v in run.sidecar_stats.items()
            if k.startswith("listener.") and k.endswith(f"_{port}.downstream_cx_total")
        ]
        assert sum(handed) >= 1, port
    # The tcp service went straight through capture: no CONNECT tunnel was asked for.
    tcp = [r for r in mesh if r.evidence.get("transport")]
    assert tcp and all(r.evidence.get("connect_status") is None for r in tcp)


@needs_root
@pytest.mark.parametrize("name", ["broken", "authz"])
def test_same_verdicts_as_the_loopback_lab(tmp_path: Path, prefix: str, name: str) -> None:
    """``broken``: every failure kind; ``authz``: RBAC on the inbound chains and one
    more probe pod per identity the policies name, each with its own sidecar."""
    scenario = builtin(name)
    netns = _netns(name, tmp_path / "ns", prefix)
    loop = run_scenario(
        scenario,
        tmp_path / "lo",
        require=list(scenario.require),
        checks=list(REGISTRY),
        settings=SETTINGS,
    )
    assert netns.mismatches == [] and loop.mismatches == []
    assert _verdicts(netns.results) == _verdicts(loop.results)
    if name == "broken":
        assert any(r.verdict is Verdict.FAIL for r in netns.results)
    else:
        authz = [r for r in netns.results if r.check == "authz"]
        assert len({r.source for r in authz}) >= 2 and any(r.verdict is Verdict.PASS for r in authz)
    # The classic sidecar stopped when the probe asked (--quit-sidecar), and said so.
    assert netns.sidecar_quit
    log = (tmp_path / "ns" / "probe-sidecar.log").read_text()
    assert "could not stop the sidecar" not in log


@needs_root
def test_cli_exit_codes_and_nothing_left(tmp_path: Path, prefix: str) -> None:
    healthy = subprocess.run(
        [*MTLSPROBE, "lab", "healthy", "--netns", "-o", "jsonl"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert healthy.returncode == 0, healthy.stderr
    broken = subprocess.run(
        [*MTLSPROBE, "lab", "broken", "--netns", "-o", "jsonl"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert broken.returncode == 1, broken.stderr
    fails = [json.loads(ln) for ln in broken.stdout.splitlines() if '"fail"' in ln]
    assert fails and all(d["verdict"] == "fail" for d in fails)


@needs_root
def test_sigkill_then_down_removes_everything(tmp_path: Path, prefix: str) -> None:
    workdir = tmp_path / "w"
    code = (
        "import sys, time; from pathlib import Path\n"
        "from jobs.lab.netns.lab import NetnsLab\n"
        "from jobs.lab.netns.net import PodAddresses\n"
        "from jobs.lab.build import build_lab\n"
        "from jobs.lab.scenarios import builtin\n"
        "b = build_lab(builtin('healthy'), PodAddresses(), [])\n"
        f"lab = NetnsLab(b.mesh, Path({str(workdir)!r}), prefix={prefix!r})\n"
        "lab.start(); print('up', flush=True); time.sleep(600)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "up", child.stderr.read() if child.stderr else ""
        assert [n for n in list_netns() if n.startswith(prefix)]
        pids = [int(ln.split()[0]) for ln in (workdir / "pids").read_text().splitlines()]
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        # Namespaces, links and hosts files outlive the process; its children do not.
        assert leftovers(prefix)
        end = time.monotonic() + 10
        while time.monotonic() < end and any(pid_alive(p) for p in pids):
            time.sleep(0.05)
        assert not any(pid_alive(p) for p in pids), "PDEATHSIG did not stop the lab's children"
        down = subprocess.run(
            [*MTLSPROBE, "lab", "--down", str(workdir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert down.returncode == 0, down.stderr
        assert leftovers(prefix) == []
        assert not (workdir / "netns.json").exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


@needs_root
def test_without_capture_or_sidecar_mesh_checks_are_errors_never_passes(
    tmp_path: Path, prefix: str
) -> None:
    """The liars: a probe pod whose capture rules are gone (its Envoy still up and
    ready) and one with no sidecar at all. A mesh call then reaches nothing, and
    every mesh verdict must be an error naming why, never a pass."""
    from jobs.lab.build import build_lab
    from jobs.lab.netns.lab import NetnsLab
    from jobs.lab.netns.net import PodAddresses, netns_argv
    from jobs.lab.netns.net import run as run_cmd
    from jobs.lab.runner import write_targets
    from probe.model import Source

    built = build_lab(builtin("healthy"), PodAddresses(), [])
    with NetnsLab(built.mesh, tmp_path / "lab", prefix=prefix) as lab:
        uncaptured = lab.add_probe_pod(sidecar=True)
        run_cmd(netns_argv(uncaptured.netns, ["iptables", "-t", "nat", "-F"]))
        bare = lab.add_probe_pod(sidecar=False)
        targets = tmp_path / "t.yaml"
        source = Source(identity=built.mesh.probe_identity)
        write_targets(replace(built.targets, source=source, root_cert_file=None), targets)
        path = lab.publish(targets, "liar-targets.yaml")
        for pod in (uncaptured, bare):
            proc = lab.exec_in(
                pod,
                [*MTLSPROBE, "check", "-f", str(path), "--checks", "mesh", "-o", "jsonl"],
                {},
                120,
            )
            docs = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
            mesh = [d for d in docs if d["check"] == "mesh"]
            assert mesh, proc.stdout + proc.stderr
            assert all(d["verdict"] == "error" for d in mesh), [
                (d["target"], d["verdict"], d["reason"]) for d in mesh
            ]
            assert proc.returncode == 2, proc.stderr


@needs_root
def test_cli_sigterm_mid_run_tears_everything_down(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    before = HostSnapshot("")  # the prefix is the CLI's own: known once it is up
    child = subprocess.Popen(
        [*MTLSPROBE, "lab", "healthy", "--netns", "--workdir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prefix = ""
    try:
        # Signal as soon as the first pod namespace exists: the lab is then still bringing
        # the mesh up, with probing still to come, whatever the load. (Waiting for "Mesh up"
        # let a loaded CI run finish the whole lab before the signal landed.)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            try:
                state = NetState.load(workdir)
            except LabError:  # caught mid-write
                state = None
            if state is not None and [n for n in list_netns() if n.startswith(state.prefix)]:
                prefix = state.prefix
                break
            time.sleep(0.01)
        assert prefix, "the lab never created a pod namespace"
        child.send_signal(signal.SIGTERM)
        child.wait(60)
        assert child.returncode != 0
        assert leftovers(prefix) == []
        assert not (workdir / "netns.json").exists()
        before.prefix = prefix
        before.assert_clean()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if prefix and leftovers(prefix):
            subprocess.run([*MTLSPROBE, "lab", "--down", str(workdir)], timeout=60, check=False)
