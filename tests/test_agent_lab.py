"""Two agents (plain and sidecar) against the lab's real Envoy mesh for several rounds;
mid-run one workload's sidecar is swapped for one whose inbound is PERMISSIVE while
policy (the targets file) still says STRICT - the regression config readers miss.
The next round's /results and /metrics show it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobs.agent.main import Assembled
from jobs.lab.addresses import WORKLOAD_ADMIN_BASE
from jobs.lab.envoy_config import workload_bootstrap
from jobs.lab.runner import running
from jobs.lab.runtime import Lab, envoy_path
from jobs.lab.scenarios import builtin
from jobs.lab.spec import InboundPort, PodSpec, ServerMode
from tests.agenthelp import get, running_agent, wait_for

pytestmark = pytest.mark.envoy

VICTIM = "frontend/web:"  # the target (service port); its pods are the Deployment's


def swap_to_permissive(lab: Lab, namespace: str, prefix: str) -> None:
    """Restart the (single) workload Envoy with the inbound of the pods named
    ``prefix*`` in ``namespace`` PERMISSIVE."""

    def victim(p: PodSpec) -> bool:
        return p.namespace == namespace and p.name.startswith(prefix) and p.sidecar

    pods = tuple(
        replace(p, ports=tuple(InboundPort(i.port, i.http, ServerMode.PERMISSIVE) for i in p.ports))
        if victim(p)
        else p
        for p in lab.mesh.pods
    )
    assert any(victim(p) for p in pods), (namespace, prefix)
    assert lab.certs is not None and lab.envoys == 1
    ip = lab.slot.control_ip
    boot = workload_bootstrap(
        [p for p in pods if p.sidecar],
        lab.certs,
        lab.mesh.trust_domain,
        (ip, WORKLOAD_ADMIN_BASE),
        "sidecars-0",
    )
    old = next(p for p in lab.envoy_procs if p.name == "sidecars-0")
    os.killpg(old.pid, signal.SIGTERM)
    try:
        old.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(old.pid, signal.SIGKILL)
        old.popen.wait(timeout=5)
    lab.supervisor.procs.remove(old)
    path = lab.workdir / "sidecars-0-permissive.json"
    path.write_text(json.dumps(boot), encoding="utf-8")
    new = lab.supervisor.start(
        "sidecars-0-permissive",
        [
            envoy_path(),
            "-c",
            str(path),
            "--concurrency",
            "1",
            "--base-id",
            str(lab.slot.base_id(0)),
            "--disable-hot-restart",
            "--log-level",
            "warning",
        ],
    )
    lab.supervisor.wait_http_ready(
        new, f"http://{ip}:{WORKLOAD_ADMIN_BASE}/ready", time.monotonic() + 30
    )


def verdicts(built: Assembled, target_prefix: str) -> dict[str, set[str]]:
    doc = json.loads(get(built, "/results")[1])
    out: dict[str, set[str]] = {}
    for r in doc["results"]:
        if r["target"].startswith(target_prefix):
            out.setdefault(r["check"], set()).add(r["verdict"])
    return out


def counter(built: Assembled, check: str, verdict: str, ns: str) -> float:
    text = get(built, "/metrics")[1]
    for fam in text_string_to_metric_families(text):
        if fam.name == "mtlsprobe_checks":
            for s in fam.samples:
                if s.name.endswith("_total") and s.labels == {
                    "mtlsprobe_check": check,
                    "mtlsprobe_verdict": verdict,
                    "k8s_namespace_name": ns,
                }:
                    return float(s.value)
    return 0.0


def test_agents_catch_a_sidecar_flipped_to_permissive(tmp_path: Path) -> None:
    scenario = builtin("healthy")
    with running(scenario, tmp_path / "lab", envoys=1, ready_timeout=60) as up:
        lab, tf = up.lab, up.targets_path
        common = ["--targets", str(tf), "--interval", "0.5", "--jitter", "0", "--timeout", "5"]
        with (
            running_agent("--kind", "plain", *common) as plain,
            running_agent("--kind", "sidecar", *common) as side,
        ):
            wait_for(
                lambda: plain.agent.state.rounds[0] >= 2 and side.agent.state.rounds[0] >= 2,
                timeout=60,
                what="two rounds of each agent",
            )
            # Healthy: nothing fails, and the victim's plaintext probe is refused.
            for built in (plain, side):
                doc = json.loads(get(built, "/results")[1])
                assert doc["summary"]["fail"] == 0 and doc["summary"]["error"] == 0, doc
            assert verdicts(plain, VICTIM)["plaintext"] == {"pass"}
            assert counter(plain, "plaintext", "fail", "frontend") == 0
            assert get(plain, "/readyz")[0] == get(side, "/readyz")[0] == 200

            swap_to_permissive(lab, "frontend", "web")
            flipped_at = time.time()
            wait_for(
                lambda: (last := plain.agent.state.last) is not None and last.started > flipped_at,
                timeout=30,
                what="a plain round started after the flip",
            )
            # The very next round shows the regression, in /results and /metrics.
            assert verdicts(plain, VICTIM)["plaintext"] == {"fail"}
            reasons = [
                r["reason"]
                for r in json.loads(get(plain, "/results")[1])["results"]
                if r["check"] == "plaintext" and r["target"].startswith(VICTIM)
            ]
            assert all("accepted plaintext" in r for r in reasons), reasons
            assert counter(plain, "plaintext", "fail", "frontend") >= 1
            # Other workloads are unaffected; the agents stay ready (a fail is a finding,
            # not an agent failure).
            doc = json.loads(get(plain, "/results")[1])
            others = [
                r
                for r in doc["results"]
                if r["verdict"] == "fail" and not r["target"].startswith(VICTIM)
            ]
            assert others == []
            assert get(plain, "/readyz")[0] == 200
            # The sidecar agent keeps working against the swapped sidecar (PERMISSIVE
            # still accepts mTLS, so its mesh checks pass).
            n = side.agent.state.rounds[0]
            wait_for(lambda: side.agent.state.rounds[0] >= n + 2, timeout=30, what="more rounds")
            assert verdicts(side, VICTIM).get("mesh") == {"pass"}
