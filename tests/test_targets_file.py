"""The targets file contract: valid files load, invalid ones are one line naming the field."""

from __future__ import annotations

import ipaddress
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.model import (
    MAX_MESSAGE_CHARS,
    Endpoint,
    Expect,
    Protocol,
    TargetsFile,
    TargetsFileError,
    load_targets,
    parse_targets_text,
)
from tests.hostile_yaml import billion_laughs
from tests.procs import mtlsprobe

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
    proc = mtlsprobe("check", "-f", str(p))
    assert proc.returncode == 64
    assert proc.stderr.count("\n") == 1 and "expect" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_check_is_usage_error(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD)
    proc = mtlsprobe("check", "-f", str(p), "--checks", "plaintext,nope")
    assert proc.returncode == 64 and "unknown check 'nope'" in proc.stderr


def test_check_does_not_import_kubernetes() -> None:
    code = (
        "import sys, jobs.cli.main\n"
        "try:\n    jobs.cli.main.main(['check', '--help'])\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'apscheduler')]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# ---- hostile and unusual files (issue 10 rule 10) -------------------------------------------


@pytest.mark.parametrize(
    ("mutation", "needle"),
    [
        # ports: integers only, ASCII digits only, no booleans
        (("port: 8080", "port: true"), ".port"),
        (("port: 8080", 'port: "8080"'), ".port"),
        (("port: 8080", "port: \uff18\uff10\uff18\uff10"), ".port"),
        (("port: 8080", "port: [8080]"), ".port"),
        (("port: 8080", "port: 0"), ".port"),
        # endpoints: IP literals only
        (('"127.0.10.2:8080"', '"echo.example:8080"'), "endpoints[0]"),
        (('"127.0.10.2:8080"', '"\uff11\uff12\uff17.0.0.1:8080"'), "endpoints[0]"),
        (('"127.0.10.2:8080"', '"127.0.10.2:\uff18\uff10"'), "endpoints[0]"),
        (('"127.0.10.2:8080"', '"127.0.10.2:\u0668\u0660"'), "endpoints[0]"),  # Arabic-Indic
        (('"127.0.10.2:8080"', '"127.1:8080"'), "endpoints[0]"),
        (('"127.0.10.2:8080"', '"010.0.0.1:8080"'), "endpoints[0]"),
        (('"127.0.10.2:8080"', '"0.0.0.0:8080"'), "endpoints[0]"),
        (('"127.0.10.2:8080"', '"[127.0.0.1]:8080"'), "endpoints[0]"),
        (('"[::1]:9000"', '"[fe80::1%eth0]:9000"'), "endpoints[1]"),
        (('"127.0.10.2:8080"', '"127.0.10.2:0080800"'), "endpoints[0]"),
        (('"127.0.10.2:8080"', "8080"), "endpoints[0]"),
        (
            ('endpoints: ["127.0.10.2:8080", "[::1]:9000"]', 'endpoints: "127.0.10.2:8080"'),
            ".endpoints",
        ),
        # hosts: DNS names (IDNA label and length limits) or IPv4
        (("echo.ns-a.svc.cluster.local", "a" * 64 + ".example"), ".host"),
        (("echo.ns-a.svc.cluster.local", ".".join(["a" * 63] * 4)), ".host"),
        (("echo.ns-a.svc.cluster.local", '"echo ns-a"'), ".host"),
        (("echo.ns-a.svc.cluster.local", "ech_o.example"), ".host"),
        (("echo.ns-a.svc.cluster.local", "-echo.example"), ".host"),
        (("echo.ns-a.svc.cluster.local", "\uff11\uff12\uff17.\uff10.\uff10.\uff11"), ".host"),
        (("echo.ns-a.svc.cluster.local", '"127.1"'), ".host"),
        (("echo.ns-a.svc.cluster.local", '"[::1]"'), ".host"),
        (("echo.ns-a.svc.cluster.local", "[echo]"), ".host"),
        (("echo.ns-a.svc.cluster.local", '"echo\\n.example"'), ".host"),
        (("echo.ns-a.svc.cluster.local", "xn--.example"), ".host"),
        # names
        (("name: ns-a/echo", "name: [ns-a/echo]"), "targets[0].name"),
        (("name: ns-a/echo", 'name: "ns-a/\\e[2Jecho"'), "targets[0].name"),
        (("name: ns-a/echo", 'name: "ns-a/\\u2028echo"'), "targets[0].name"),
        (("name: ns-a/echo", 'name: "ns-a/\\u202eecho"'), "targets[0].name"),
        (("name: ns-a/echo", "name: " + "n" * 600), "targets[0].name"),
        # trust domains (SPIFFE syntax) and identities in them
        (("trustDomain: cluster.local", "trustDomain: cluster.local:8080"), "trustDomain"),
        (("trustDomain: cluster.local", "trustDomain: spiffe://cluster.local"), "trustDomain"),
        (("trustDomain: cluster.local", "trustDomain: [cluster.local]"), "trustDomain"),
        (("trustDomain: cluster.local", 'trustDomain: ""'), "trustDomain"),
        (("trustDomain: cluster.local", "trustDomain: " + "a" * 256), "trustDomain"),
        (("trustDomain: cluster.local", "trustDomain: clüster.local"), "trustDomain"),
        (
            (
                "identity: spiffe://cluster.local/ns/ns-a/sa/echo",
                "identity: spiffe://other.td/ns/ns-a/sa/echo",
            ),
            "targets[0] (ns-a/echo).identity",
        ),
        (
            (
                "identity: spiffe://cluster.local/ns/mtlsprobe",
                "identity: spiffe://evil.td/ns/mtlsprobe",
            ),
            "source.identity",
        ),
        (("identity: spiffe://cluster.local/ns/ns-a/sa/echo", "identity: 42"), ".identity"),
        # URLs: http://HOST:PORT
        (("http://127.0.0.1:15001", "https://127.0.0.1:15001"), "source.sidecarProxy"),
        (("http://127.0.0.1:15001", "http://127.0.0.1"), "source.sidecarProxy"),
        (("http://127.0.0.1:15001", "http://127.0.0.1:15001/proxy"), "source.sidecarProxy"),
        (("http://127.0.0.1:15001", "http://user@127.0.0.1:15001"), "source.sidecarProxy"),
        (("http://127.0.0.1:15001", "http://127.0.0.1:1500x"), "source.sidecarProxy"),
        (("http://127.0.0.1:15001", "http://127.0.0.1:\uff11\uff15"), "source.sidecarProxy"),
        (("http://127.0.0.1:15001", "http://[127.0.0.1]:15001"), "source.sidecarProxy"),
        (("http://127.0.0.1:15001", "[http://127.0.0.1:15001]"), "source.sidecarProxy"),
        # enums and booleans of the wrong type
        (("expect: STRICT", "expect: [STRICT]"), ".expect"),
        (("protocol: http", "protocol: 1"), ".protocol"),
        (("echo: true", "echo: 1"), ".echo"),
        # YAML that is not a plain mapping
        (("    port: 8080\n", "    port: 8080\n    port: 8081\n"), "duplicate key 'port'"),
        (("trustDomain: cluster.local", "trustDomain: &td cluster.local\nx: *td"), "unknown key"),
    ],
)
def test_hostile_values_are_refused_at_load(
    tmp_path: Path, mutation: tuple[str, str], needle: str
) -> None:
    text = GOOD.replace(*mutation)
    assert text != GOOD
    with pytest.raises(TargetsFileError) as info:
        load_targets(write(tmp_path, text))
    msg = str(info.value)
    assert needle in msg, msg
    assert "\n" not in msg and len(msg) <= MAX_MESSAGE_CHARS
    assert msg.isprintable(), msg  # nothing raw reaches the terminal


@pytest.mark.parametrize(
    ("mutation", "check"),
    [
        (("echo.ns-a.svc.cluster.local", "bücher.example"), lambda tf: tf.targets[0].host),
        (
            ("echo.ns-a.svc.cluster.local", "echo.ns-a.svc.cluster.local."),
            lambda tf: tf.targets[0].host,
        ),
        (("echo.ns-a.svc.cluster.local", "10.96.0.10"), lambda tf: tf.targets[0].host),
        (("http://127.0.0.1:15001", "http://[::1]:15001/"), lambda tf: tf.source.sidecar_proxy),
        (("http://127.0.0.1:15001", "http://localhost:15001"), lambda tf: tf.source.sidecar_proxy),
        (("expect: STRICT", "expect: strict"), lambda tf: tf.targets[0].expect),
        (
            ("trustDomain: cluster.local", "trustDomain: cluster.local\nrootCertFile: null"),
            lambda tf: tf.trust_domain,
        ),
    ],
)
def test_unusual_but_valid_values_load(
    tmp_path: Path, mutation: tuple[str, str], check: Callable[[TargetsFile], object]
) -> None:
    text = GOOD.replace(*mutation)
    assert text != GOOD
    assert check(load_targets(write(tmp_path, text)))


def test_root_cert_file_must_be_regular(tmp_path: Path) -> None:
    text = GOOD.replace(
        "trustDomain: cluster.local", "trustDomain: cluster.local\nrootCertFile: /dev/zero"
    )
    with pytest.raises(TargetsFileError, match="rootCertFile: /dev/zero is not a regular file"):
        load_targets(write(tmp_path, text))
    text = GOOD.replace(
        "trustDomain: cluster.local", 'trustDomain: cluster.local\nrootCertFile: "a\\0b"'
    )
    with pytest.raises(TargetsFileError, match="rootCertFile"):
        load_targets(write(tmp_path, text))


def test_unknown_key_with_escape_is_named_escaped(tmp_path: Path) -> None:
    text = GOOD.replace("  - name: ns-a/echo", '  - name: ns-a/echo\n    "col\\e]0;pwned\\aour": 1')
    with pytest.raises(TargetsFileError) as info:
        load_targets(write(tmp_path, text))
    msg = str(info.value)
    assert "col\\x1b]0;pwned\\x07our" in msg and "unknown key" in msg and msg.isprintable()


def test_error_message_is_bounded_whatever_the_value(tmp_path: Path) -> None:
    text = GOOD.replace("expect: STRICT", "expect: " + "S" * 100_000)
    with pytest.raises(TargetsFileError) as info:
        load_targets(write(tmp_path, text))
    assert len(str(info.value)) < 400 and "..." in str(info.value)


def test_path_with_newline_stays_one_line(tmp_path: Path) -> None:
    d = tmp_path / "evil\n\x1b[31mdir"
    d.mkdir()
    p = d / "targets.yaml"
    p.write_text(GOOD.replace("expect: STRICT", "expect: MAYBE"))
    with pytest.raises(TargetsFileError) as info:
        load_targets(p)
    msg = str(info.value)
    assert msg.isprintable() and "evil\\x0a\\x1b[31mdir" in msg


def _cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli.main", *args], capture_output=True, text=True, timeout=120
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return proc, cpu


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (billion_laughs(), "alias bomb"),
        ("[" * 10_000 + "]" * 10_000, "nest"),
        ("trustDomain: a\ntrustDomain: b\n", "duplicate key"),
        ("trustDomain: cluster.local\x00\n", "NUL byte"),
    ],
    ids=["billion-laughs", "deep-10000", "duplicate-key", "nul"],
)
def test_cli_refuses_hostile_yaml_with_exit_64(tmp_path: Path, body: str, needle: str) -> None:
    p = write(tmp_path, body)
    proc, cpu = _cli("check", "-f", str(p))
    assert proc.returncode == 64, proc.stderr
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert cpu < 10, f"{cpu:.2f} s CPU, interpreter start included"


def test_cli_refuses_fifo_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "targets.yaml"
    os.mkfifo(fifo)
    proc, _ = _cli("check", "-f", str(fifo))
    assert proc.returncode == 64 and "not a regular file" in proc.stderr


# ---- property: any document loads to a valid TargetsFile or one bounded line -------------

_hostile_text = st.text(
    st.sampled_from(
        [
            *"ab:/.-_[]{}*&!\n\t ",
            *("\x00", "\x1b", "\u2028", "\u202e", "\ufeff", "\uff11", "\u0661", "\ud800"),
            *("é", "ß"),
        ]
    ),
    max_size=30,
)
_hostile_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | _hostile_text
    | st.sampled_from(
        [
            "127.0.0.1:80",
            "[::1]:80",
            "0.0.0.0:1",
            "1.2.3.4:65536",
            "x.example:80",
            "spiffe://cluster.local/ns/a/sa/b",
            "spiffe://other/ns/a/sa/b",
            "http://127.0.0.1:1",
            "STRICT",
            "strict",
            "NONE",
            "tcp",
            "http",
            "a" * 64 + ".b",
            "bücher.example",
        ]
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_hostile_text, inner, max_size=3),
    max_leaves=8,
)
_fields = ["name", "host", "port", "endpoints", "identity", "expect", "protocol", "echo"]
_top = ["trustDomain", "rootCertFile", "source", "targets"]


@st.composite
def _targets_docs(draw: st.DrawFn) -> str:
    doc: dict[str, Any] = yaml.safe_load(GOOD)
    target = doc["targets"][0]
    for key in draw(st.lists(st.sampled_from(_fields), max_size=3)):
        target[key] = draw(_hostile_value)
    for key in draw(st.lists(st.sampled_from(_top), max_size=1)):
        doc[key] = draw(_hostile_value)
    if draw(st.booleans()):
        doc[draw(_hostile_text)] = draw(_hostile_value)
    text = yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))
    if draw(st.booleans()):  # and some damage to the text itself
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(_hostile_text) + text[at:]
    return text


@settings(max_examples=300)
@given(text=_targets_docs())
def test_loader_returns_valid_file_or_one_bounded_line(text: str) -> None:
    start = time.process_time()
    try:
        tf = parse_targets_text(text, "prop.yaml")
    except TargetsFileError as exc:
        msg = str(exc)
        assert msg.startswith("prop.yaml: ")
        assert "\n" not in msg and len(msg) <= MAX_MESSAGE_CHARS and msg.isprintable()
    else:
        _assert_valid(tf)
    assert time.process_time() - start < 2.0


def _assert_valid(tf: TargetsFile) -> None:
    """What load time promises the checks: nothing left to crash on at run time."""
    for t in tf.targets:
        assert t.name.isprintable() and t.host.isprintable()
        assert type(t.port) is int and 0 < t.port < 65536
        for ep in t.endpoints:
            ipaddress.ip_address(ep.host)
            assert type(ep.port) is int and 0 < ep.port < 65536
        if t.identity is not None:
            assert t.identity.startswith(f"spiffe://{tf.trust_domain}/")
    for url in (tf.source.sidecar_proxy, tf.source.sidecar_admin):
        if url is not None:
            Endpoint.parse(url.split("://", 1)[-1].rstrip("/"))  # what meshcall does with it
