"""``mtlsprobe run`` carries the plan's negative controls to the probe Jobs (through the
targets ConfigMap) and reports their results, against the fake API server with the
simulated Job controller and kubelet of tests/runcase.py."""

from __future__ import annotations

import pytest

from tests import kubebuild as kb
from tests.runcase import PLAIN, Env, probe_results, run
from tests.tlsservers import nothing_listening

pytestmark = pytest.mark.timeout(120)

CONTROL = {"app": "ctl", "app.kubernetes.io/component": "mtlsprobe-control"}


def _add_control(env: Env, port: int) -> None:
    env.kube.add(kb.service("ctl", "ns-a", {"app": "ctl"}, [kb.sport(80, port)]))
    env.kube.add(
        kb.pod("ctl-0", "ns-a", CONTROL, ip="127.0.0.1", sidecar=False, ports=[("http", port)])
    )


def test_control_reaches_the_probe_pod_and_the_report(
    env: Env,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _add_control(env, env.echo_port)  # plaintext reaches the echo server: accepted
    code, doc, err = run(env, capsys, "--checks", PLAIN, "--deadline", "30")
    assert doc is not None, err
    results = probe_results(doc)
    controls = [r for r in results if r["check"] == "control"]
    assert [(r["target"], r["verdict"]) for r in controls] == [("ns-a/ctl:80", "pass")], results
    assert controls[0]["evidence"]["kind"] == "plaintext"
    assert not [r for r in results if r["target"] == "ns-a/ctl:80" and r["check"] != "control"]
    assert code == 0, results


def test_a_blind_control_is_an_error_in_the_run(
    env: Env,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _add_control(env, nothing_listening().port)
    code, doc, err = run(env, capsys, "--checks", "plaintext", "--deadline", "30")
    assert doc is not None, err
    (control,) = [r for r in probe_results(doc) if r["check"] == "control"]
    assert control["verdict"] == "error"
    assert control["reason"].startswith("plaintext detector blind: control ns-a/ctl:80")
    assert code == 2
