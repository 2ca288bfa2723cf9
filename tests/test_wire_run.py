"""``run --checks wire`` without the capture agent: nothing deployed for it, one ``skip``
per target naming the command that installs the overlay."""

from __future__ import annotations

import pytest

from tests.runcase import Env, run

pytestmark = pytest.mark.timeout(120)


def test_run_wire_alone_deploys_nothing_and_skips(
    env: Env,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, doc, _err = run(env, capsys, "--checks", "wire", "--deadline", "20")
    wire = [r for r in doc["results"] if r["check"] == "wire"]
    assert wire and all(r["verdict"] == "skip" for r in wire)
    assert all("kubectl apply -k k8s/overlays/wire" in r["reason"] for r in wire)
    assert not any(o.startswith("jobs/") for o in env.kube.run_objects())
    writes = [c for c in env.kube.calls if c.method in ("POST", "PUT", "PATCH", "DELETE")]
    assert not writes, writes
    assert code == 0
