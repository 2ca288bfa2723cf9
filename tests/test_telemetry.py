"""Traces and metrics reach a real OTLP/HTTP receiver; SIGTERM flushes; an
unreachable collector costs bounded time and never changes the exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.otlp_receiver import otlp_receiver
from tests.tlsservers import (
    black_hole,
    nothing_listening,
    plaintext_http,
    reset_after_read,
    serving,
)


def targets(tmp: Path, endpoints: dict[str, str]) -> Path:
    lines = [
        "trustDomain: cluster.local",
        "source:",
        "  identity: spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe",
        "targets:",
    ]
    for name, ep in endpoints.items():
        lines += [
            f"  - name: {name}",
            "    host: echo.ns-a.svc.cluster.local",
            "    port: 8080",
            f'    endpoints: ["{ep}"]',
            "    expect: STRICT",
        ]
    p = tmp / "targets.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def check(
    path: Path, endpoint: str | None, *extra: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env["OTEL_EXPORTER_OTLP_TIMEOUT"] = "2"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.cli",
            "check",
            "-f",
            str(path),
            "--checks",
            "plaintext",
            "-o",
            "json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_one_trace_one_span_per_result(tmp_path: Path) -> None:
    with (
        serving(reset_after_read) as strict,
        serving(plaintext_http) as open_,
        otlp_receiver() as (url, got),
    ):
        strict_port = strict.endpoint.port
        p = targets(
            tmp_path, {"ns-a/strict": str(strict.endpoint), "ns-b/open": str(open_.endpoint)}
        )
        proc = check(p, url)
    assert proc.returncode == 1, proc.stderr  # the open one fails STRICT
    names = sorted(s.name for s in got.spans)
    assert names == ["mtlsprobe.check plaintext", "mtlsprobe.check plaintext", "mtlsprobe.run"]
    assert len({s.trace_id for s in got.spans}) == 1
    root = next(s for s in got.spans if s.name == "mtlsprobe.run")
    children = [s for s in got.spans if s.name != "mtlsprobe.run"]
    assert all(c.parent_span_id == root.span_id for c in children)
    by_target = {got.span_attrs(c)["mtlsprobe.target"]: got.span_attrs(c) for c in children}
    assert by_target["ns-a/strict"]["test.case.result.status"] == "pass"
    assert by_target["ns-b/open"]["test.case.result.status"] == "fail"
    assert by_target["ns-b/open"]["k8s.namespace.name"] == "ns-b"
    assert by_target["ns-a/strict"]["server.port"] == strict_port
    assert by_target["ns-a/strict"]["mtlsprobe.source.spiffe_id"].endswith("/sa/mtlsprobe")
    points = got.metric_points("mtlsprobe.checks")
    assert sum(p.as_int for p in points) == 2


def test_unreachable_collector_is_bounded(tmp_path: Path) -> None:
    with serving(reset_after_read) as strict:
        p = targets(tmp_path, {"ns-a/strict": str(strict.endpoint)})
        t0 = time.monotonic()
        proc = check(p, f"http://{nothing_listening()}")
        elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 15, elapsed
    assert "Traceback" not in proc.stderr


def test_black_hole_collector_is_bounded(tmp_path: Path) -> None:
    with serving(reset_after_read) as strict, serving(black_hole) as hole:
        p = targets(tmp_path, {"ns-a/strict": str(strict.endpoint)})
        t0 = time.monotonic()
        proc = check(p, f"http://{hole.endpoint}")
        elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 15, elapsed


def test_sigterm_reports_and_flushes(tmp_path: Path) -> None:
    with (
        serving(black_hole) as hole,
        serving(reset_after_read) as strict,
        otlp_receiver() as (url, got),
    ):
        p = targets(
            tmp_path, {"ns-a/strict": str(strict.endpoint), "ns-a/hole": str(hole.endpoint)}
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = url
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobs.cli",
                "check",
                "-f",
                str(p),
                "--checks",
                "plaintext",
                "-o",
                "jsonl",
                "--timeout",
                "30",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err  # the interrupted check is an error, never a pass
    lines = out.strip().splitlines()
    assert len(lines) == 2 and '"interrupted"' in out
    assert len(got.spans) == 3
