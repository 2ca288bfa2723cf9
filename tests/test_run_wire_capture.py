"""The node agent's windows overlap (``wire-capture --repeat --overlap``), so a session of
calls shorter than the overlap lies whole inside one report: what ``run --checks wire``
needs to judge from a single window. For real: a capture on ``lo`` of a network namespace
made here (root), a marked plaintext exchange sent while two windows are open, and the
reports read back with ``probe.wire.record.windows`` (the reader run uses)."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.cli import main as cli
from probe.wire.markers import new_marker
from probe.wire.netns import in_netns
from probe.wire.record import windows

ROOT = Path(__file__).resolve().parent.parent


def test_overlap_needs_repeat_and_must_be_shorter_than_a_window(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["wire-capture", "-i", "lo", "--overlap", "5"]) == 64
    assert "--overlap: only with --repeat" in capsys.readouterr().err
    code = cli.main(["wire-capture", "-i", "lo", "--seconds", "10", "--overlap", "10", "--repeat"])
    assert code == 64
    assert "must be shorter than --seconds" in capsys.readouterr().err


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("SKIPPED LOUDLY: needs root and iproute2 (a network namespace, AF_PACKET)")
    name = "mptw" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)


@pytest.mark.timeout(60)
def test_windows_overlap_and_both_see_a_session_inside_the_overlap(netns: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.cli.main",
            "wire-capture",
            "-i",
            "lo",
            "--netns",
            netns,
            "--seconds",
            "3",
            "--overlap",
            "1.5",
            "--repeat",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    marker = new_marker()
    try:
        assert proc.stderr is not None
        assert "capturing on lo" in proc.stderr.readline()  # window 1
        assert "capturing on lo" in proc.stderr.readline()  # window 2 opened: overlap
        listener = in_netns(netns, lambda: socket.create_server(("127.0.0.1", 0)))
        with listener:
            port = listener.getsockname()[1]
            client = in_netns(netns, lambda: socket.create_connection(("127.0.0.1", port), 5))
            with client:
                conn, _ = listener.accept()
                with conn:
                    client.sendall(f"GET /?{marker} HTTP/1.1\r\n\r\n".encode())
                    assert conn.recv(4096)
        assert proc.stderr.readline()  # window 3 opened: windows 1 and 2 are reported soon
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
    reports, problems = windows(out.splitlines(), "agent")
    assert not problems and len(reports) >= 3, (problems, len(reports))
    for a, b in itertools.pairwise(reports):
        assert b.summary.started < a.summary.ended, "windows must overlap"
    saw = [r for r in reports if any(s.marker == marker for s in r.markers)]
    assert len(saw) >= 2, [len(r.markers) for r in reports]  # inside both open windows
