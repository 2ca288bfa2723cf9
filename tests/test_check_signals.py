"""SIGTERM reaches ``mtlsprobe check`` at any stage and the run still ends within a
bound with a report (the Job deadline or pod deletion must not lose the results)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.procs import reaped, sigterm
from tests.sidecar_standin import http_server
from tests.tlsservers import reset_after_read, serving


@contextmanager
def never_ready() -> Iterator[tuple[str, list[str]]]:
    """A pilot-agent stand-in whose readiness endpoint answers 503 forever."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()

    with http_server(Handler) as url:
        yield url + "/healthz/ready", hits


def test_sigterm_while_waiting_for_the_sidecar_ends_the_wait(tmp_path: Path) -> None:
    with serving(reset_after_read) as strict, never_ready() as (ready_url, hits):
        f = tmp_path / "t.yaml"
        f.write_text(
            "trustDomain: cluster.local\ntargets:\n"
            f'  - {{name: a/x, host: x, port: 80, endpoints: ["{strict.endpoint}"],'
            " expect: STRICT}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "jobs.cli.main", "check", "-f", str(f)),
                *("--checks", "plaintext", "-o", "jsonl"),
                *("--wait-for-sidecar", "120", "--sidecar-ready-url", ready_url),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        with reaped(proc):
            end = time.monotonic() + 60
            while not hits:  # the probe is polling the sidecar's readiness
                assert time.monotonic() < end and proc.poll() is None, "never polled"
                time.sleep(0.02)
            out, err, took = sigterm(proc)
    assert took < 30, took  # not the 120 s budget
    assert proc.returncode == 2, err
    (r,) = [json.loads(x) for x in out.splitlines()]
    assert r["verdict"] == "error" and r["reason"].startswith("stopped while waiting")
