"""The mesh check on tcp ports, on real Envoy: a round trip through the probe's
sidecar passes; a DestinationRule DISABLE against a STRICT tcp server fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.lab.runner import running
from jobs.lab.scenarios import from_files
from probe.results import Verdict
from tests.meshlab import manifest, run

pytestmark = pytest.mark.envoy


def test_tcp_mesh_round_trip_and_disable_against_strict(tmp_path: Path) -> None:
    workloads = [("pg", 5432, "tcp-pg"), ("pg-plain", 5432, "tcp-pg")]
    path = manifest(tmp_path, workloads, ["pg-plain"], mode="STRICT")
    with running(from_files([path]), tmp_path / "lab") as lab:
        results = run(lab.targets, timeout=10)  # generous under load
    ok, broken = results["mesh data/pg"], results["mesh data/pg-plain"]
    assert ok.verdict is Verdict.PASS, ok
    assert "came back through the sidecar" in ok.reason
    assert broken.verdict is Verdict.FAIL, broken
