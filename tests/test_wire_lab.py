"""The ``wire`` check in ``mtlsprobe lab --netns``: a real capture on the sidecar probe
pod's veth while its calls go through real Envoy behind Istio's capture rules.

- healthy: ``pass`` for every HTTP and tcp target (TLS records, marker never seen);
- tls-off: a DestinationRule sends plaintext to a PERMISSIVE server; the call succeeds
  and only the capture shows it: ``fail`` quoting the marker;
- a capture pointed at a pod the calls never cross: ``error`` for all, never ``pass``;
- without --netns (and without root) the lab skips ``wire`` and says why.

Root only for the first three (skipped loudly otherwise); every lab has its own object
prefix and the ``prefix`` fixture removes whatever a failed test left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli.lab import WIRE_SKIP, _default_checks
from jobs.lab.netns.lab import NetnsRun, asked, run_scenario_netns
from jobs.lab.scenarios import builtin
from probe.checks import REGISTRY
from probe.model import Protocol
from probe.results import Result, Verdict
from tests.netnscase import AS_NOBODY, SETTINGS, WHY_NOT

MTLSPROBE = [sys.executable, "-m", "jobs.cli.main"]
needs_root = pytest.mark.skipif(WHY_NOT is not None, reason=f"SKIPPED LOUDLY: {WHY_NOT}")
pytestmark = pytest.mark.envoy


def _run(
    name: str, workdir: Path, prefix: str, checks: list[str], *, wire_blind: bool = False
) -> NetnsRun:
    scenario = builtin(name)
    return run_scenario_netns(
        scenario,
        workdir,
        require=list(scenario.require),
        checks=checks,
        settings=SETTINGS,
        prefix=prefix,
        wire_blind=wire_blind,
    )


def _wire(run: NetnsRun) -> dict[str, Result]:
    got = [r for r in run.results if r.check == "wire"]
    assert len(got) == len({r.target for r in got})
    return {r.target: r for r in got}


def _protocols(run: NetnsRun) -> dict[str, Protocol]:
    return {t.name: t.protocol for t in run.build.targets.targets}


@needs_root
def test_healthy_mesh_every_http_and_tcp_edge_passes(tmp_path: Path, prefix: str) -> None:
    run = _run("healthy", tmp_path / "w", prefix, [*REGISTRY, "wire"])
    assert run.mismatches == []
    wire = _wire(run)
    protocols = _protocols(run)
    assert set(wire) == set(protocols)  # every target, none left out
    assert {Protocol.HTTP, Protocol.TCP} <= set(protocols.values())
    for name, r in wire.items():
        assert r.verdict is Verdict.PASS, (name, r.reason)
        assert "TLS on the wire" in r.reason and r.evidence["interface"] == "eth0"
    # The control's plaintext was seen: the capture is not blind.
    assert all(
        r.evidence.get("control") == "mtlsprobe/mtlsprobe-echo-plain:80" for r in wire.values()
    )


@needs_root
def test_destination_rule_disable_shows_the_marker_in_cleartext(
    tmp_path: Path,
    prefix: str,
) -> None:
    scenario = builtin("tls-off")
    checks = _default_checks(scenario)
    assert "wire" in checks  # the scenario expects wire verdicts: it runs without --checks
    run = _run("tls-off", tmp_path / "w", prefix, checks)
    assert run.mismatches == []
    wire = _wire(run)
    bad = wire.pop("legacy/reports:8080")
    assert bad.verdict is Verdict.FAIL
    marker = bad.evidence["marker"]
    assert marker.startswith("mtlsprobe-wire-") and f"marker {marker} in cleartext" in bad.reason
    assert bad.evidence["sighting"]["marker"] == marker
    # The call itself worked: nothing but the capture would have noticed.
    assert bad.evidence["call"].get("status") == 200
    protocols = _protocols(run)
    assert {protocols[n] for n in wire} == {Protocol.HTTP, Protocol.TCP}
    assert all(r.verdict is Verdict.PASS for r in wire.values()), wire


@needs_root
@pytest.mark.parametrize("name", ["healthy", "tls-off"])
def test_blinded_capture_is_error_for_all_never_pass(
    tmp_path: Path,
    prefix: str,
    name: str,
) -> None:
    """The capture on the plain probe pod's veth, which the calls never cross: it sees
    neither the control nor the calls (tls-off: not even the plaintext one)."""
    run = _run(name, tmp_path / "w", prefix, ["wire"], wire_blind=True)
    wire = _wire(run)
    assert wire and set(wire) == set(_protocols(run))
    for r in wire.values():
        assert r.verdict is Verdict.ERROR, (r.target, r.verdict, r.reason)
        assert "the capture is blind" in r.reason
        assert r.evidence["error"] == "capture-blind"


def test_scenario_expectations_of_wire_are_owed_only_when_it_runs() -> None:
    scenario = builtin("tls-off")
    assert any(e.check == "wire" for e in scenario.expect)
    assert not any(e.check == "wire" for e in asked(scenario, list(REGISTRY)).expect)
    assert asked(scenario, ["wire"]).expect == scenario.expect
    # The default demo's scenarios do not run wire, so their time and exit code stay.
    for name in ("healthy", "broken", "blinded"):
        assert _default_checks(builtin(name)) == list(REGISTRY)


@pytest.mark.parametrize("as_root", [True, False])
def test_without_netns_the_lab_skips_wire_and_says_why(tmp_path: Path, as_root: bool) -> None:
    argv = [*MTLSPROBE, "lab", "tls-off", "--checks", "wire", "-o", "jsonl"]
    if not as_root and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("SKIPPED LOUDLY: setpriv missing, cannot drop root for this test")
        argv = [*AS_NOBODY, *argv]
    elif as_root and os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: not root")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    wire = [d for d in lines if d.get("check") == "wire"]
    assert len(wire) == 3
    for d in wire:
        assert d["verdict"] == "skip" and d["reason"].startswith(WIRE_SKIP)
        assert ("not root" in d["reason"]) is (not as_root)
