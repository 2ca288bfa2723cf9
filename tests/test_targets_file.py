"""The targets file contract: valid files load, invalid ones are one line naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from probe.model import Endpoint, Expect, Protocol, TargetsFileError, load_targets

GOOD = """
trustDomain: cluster.local
source:
  identity: spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe
  sidecarProxy: http://127.0.0.1:15001
targets:
  - name: ns-a/echo
    host: echo.ns-a.svc.cluster.local
    port: 8080
    endpoints: ["127.0.10.2:8080", "[::1]:9000"]
    identity: spiffe://cluster.local/ns/ns-a/sa/echo
    expect: STRICT
    protocol: http
    echo: true
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "targets.yaml"
    p.write_text(text)
    return p


def test_good_file_loads(tmp_path: Path) -> None:
    tf = load_targets(write(tmp_path, GOOD))
    assert tf.trust_domain == "cluster.local"
    (t,) = tf.targets
    assert t.expect is Expect.STRICT and t.protocol is Protocol.HTTP and t.echo
    assert t.endpoints == (Endpoint("127.0.10.2", 8080), Endpoint("::1", 9000))
    assert str(t.endpoints[1]) == "[::1]:9000"
    assert tf.source.sidecar_proxy == "http://127.0.0.1:15001"


@pytest.mark.parametrize(
    ("mutation", "needle"),
    [
        (("expect: STRICT", "expect: MAYBE"), "targets[0] (ns-a/echo).expect"),
        (('"127.0.10.2:8080"', '"127.0.10.2"'), "targets[0] (ns-a/echo).endpoints[0]"),
        (
            ("identity: spiffe://cluster.local/ns/ns-a/sa/echo", "identity: https://x/y"),
            ".identity",
        ),
        (("    host: echo.ns-a.svc.cluster.local\n", ""), "targets[0] (ns-a/echo).host"),
        (("port: 8080", "port: 99999"), ".port"),
        (("protocol: http", "protocol: udp"), ".protocol"),
        (("trustDomain: cluster.local", "trustDomain: Cluster.Local"), "trustDomain"),
        (("echo: true", "echo: maybe"), ".echo"),
        (("  - name: ns-a/echo", "  - name: ns-a/echo\n    colour: blue"), "colour"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, mutation: tuple[str, str], needle: str) -> None:
    text = GOOD.replace(*mutation)
    assert text != GOOD
    with pytest.raises(TargetsFileError) as info:
        load_targets(write(tmp_path, text))
    msg = str(info.value)
    assert needle in msg and str(tmp_path) in msg and "\n" not in msg


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(TargetsFileError, match=r"invalid YAML at line \d+"):
        load_targets(write(tmp_path, "targets: [\n  - {name: a\n"))


def test_cli_exit_64_one_line(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD.replace("expect: STRICT", "expect: MAYBE"))
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "check", "-f", str(p)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 64
    assert proc.stderr.count("\n") == 1 and "expect" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_check_is_usage_error(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "check", "-f", str(p), "--checks", "plaintext,nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 64 and "unknown check 'nope'" in proc.stderr


def test_check_does_not_import_kubernetes() -> None:
    code = (
        "import sys, jobs.cli\n"
        "try:\n    jobs.cli.main(['check', '--help'])\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'apscheduler')]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
