"""``mtlsprobe check --wait-for-sidecar / --quit-sidecar / --shard`` against real local
stand-ins for pilot-agent's 15021 readiness and 15020 quit endpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probe import shard
from probe.model import Endpoint, Expect, Target, TargetsFile
from tests.procs import mtlsprobe
from tests.sidecar_standin import Agent
from tests.tlsservers import nothing_listening

ROOT = Path(__file__).resolve().parent.parent


def _targets(tmp: Path, port: int) -> Path:
    path = tmp / "targets.yaml"
    path.write_text(
        "trustDomain: cluster.local\n"
        "targets:\n"
        f"- name: ns-a/a\n  host: a.ns-a.svc.cluster.local\n  port: 80\n"
        f'  endpoints: ["127.0.0.1:{port}"]\n  expect: STRICT\n'
    )
    return path


def _check(agent: Agent, targets: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["MTLSPROBE_SIDECAR_READY_URL"] = agent.url + "/healthz/ready"
    env["MTLSPROBE_SIDECAR_QUIT_URL"] = agent.url + "/quitquitquit"
    return mtlsprobe("check", "-f", str(targets), "-o", "jsonl", *extra, env=env, cwd=ROOT)


def _free_port() -> int:
    """A port where nothing listens, held for the session (tests.tlsservers)."""
    return nothing_listening().port


def test_waits_for_ready_then_probes_and_quits(agent: Agent, tmp_path: Path) -> None:
    agent.not_ready_polls = 2
    proc = _check(
        agent,
        _targets(tmp_path, _free_port()),
        "--checks",
        "plaintext",
        "--wait-for-sidecar",
        "60",
        "--quit-sidecar",
    )
    assert agent.ready_polls == 3  # it polled through the two 503s, stopped at the 200
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    # nothing listens on the endpoint: a real observation (error), not "not ready"
    assert [r["observed"] for r in rows] != ["sidecar-not-ready"]
    assert rows and rows[0]["check"] == "plaintext"
    assert agent.quits == ["POST"]


def test_never_ready_is_an_error_for_every_check_and_still_quits(
    agent: Agent, tmp_path: Path
) -> None:
    agent.ready_after = None
    t0 = time.monotonic()
    proc = _check(
        agent,
        _targets(tmp_path, _free_port()),
        "--checks",
        "plaintext,peer-cert",
        "--wait-for-sidecar",
        "0.8",
        "--quit-sidecar",
    )
    assert time.monotonic() - t0 < 30  # the 0.8 s wait, then the report: not a hang
    assert proc.returncode == 2, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {r["check"] for r in rows} == {"plaintext", "peer-cert"}
    assert all(r["verdict"] == "error" for r in rows)
    assert all("sidecar never became ready" in r["reason"] for r in rows)
    assert "HTTP 503" in rows[0]["reason"]
    assert agent.quits == ["POST"]


def test_no_quit_without_flag_and_quit_even_on_usage_error(agent: Agent, tmp_path: Path) -> None:
    targets = _targets(tmp_path, _free_port())
    _check(agent, targets, "--checks", "plaintext", "--wait-for-sidecar", "5")
    assert agent.quits == []  # native sidecar: nothing to stop
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: 3\n")
    proc = _check(agent, bad, "--quit-sidecar")
    assert proc.returncode == 64
    assert agent.quits == ["POST"]


def test_quit_endpoint_down_is_a_stderr_line_not_a_failure(tmp_path: Path) -> None:
    dead = Agent(url=f"http://127.0.0.1:{_free_port()}")
    proc = _check(dead, _targets(tmp_path, _free_port()), "--checks", "plaintext", "--quit-sidecar")
    assert proc.returncode == 2  # the plaintext error, nothing else
    assert "could not stop the sidecar" in proc.stderr


def _tf(n_targets: int, n_eps: int) -> TargetsFile:
    return TargetsFile(
        trust_domain="cluster.local",
        targets=tuple(
            Target(
                name=f"ns/t{i}",
                host=f"t{i}.ns.svc",
                port=80,
                expect=Expect.STRICT,
                endpoints=tuple(Endpoint(f"10.0.{i}.{j}", 8080) for j in range(n_eps)),
            )
            for i in range(n_targets)
        ),
    )


@pytest.mark.parametrize("by_endpoint", [True, False])
def test_shards_are_disjoint_and_cover_everything(by_endpoint: bool) -> None:
    tf = _tf(40, 5)
    seen: list[tuple[str, str]] = []
    for i in range(7):
        part = shard.select(tf, i, 7, by_endpoint=by_endpoint)
        seen += [(t.name, str(e)) for t in part.targets for e in t.endpoints]
        if not by_endpoint:  # whole targets: a target never splits over shards
            assert all(len(t.endpoints) == 5 for t in part.targets)
    assert sorted(seen) == sorted((t.name, str(e)) for t in tf.targets for e in t.endpoints)
    assert shard.select(tf, 3, 7, by_endpoint=by_endpoint) == shard.select(
        tf, 3, 7, by_endpoint=by_endpoint
    )


def test_shards_from_job_completion_index(agent: Agent, tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    lines = ["trustDomain: cluster.local", "targets:"]
    for i in range(12):
        lines += [
            f"- name: ns/t{i}",
            f"  host: t{i}.ns.svc",
            "  port: 80",
            f'  endpoints: ["127.0.0.1:{_free_port()}"]',
            "  expect: NONE",
        ]
    path.write_text("\n".join(lines) + "\n")
    got: list[str] = []
    for idx in range(3):
        env_proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "jobs.cli.main",
                "check",
                "-f",
                str(path),
                "-o",
                "jsonl",
                "--checks",
                "plaintext",
                "--shards",
                "3",
                "--timeout",
                "1",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "JOB_COMPLETION_INDEX": str(idx)},
            cwd=ROOT,
            timeout=60,
        )
        got += [json.loads(line)["target"] for line in env_proc.stdout.splitlines()]
    assert sorted(got) == sorted(f"ns/t{i}" for i in range(12))
    bad = subprocess.run(
        [sys.executable, "-m", "jobs.cli.main", "check", "-f", str(path), "--shards", "3"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "JOB_COMPLETION_INDEX"},
        cwd=ROOT,
        timeout=60,
    )
    assert bad.returncode == 64 and "JOB_COMPLETION_INDEX" in bad.stderr
