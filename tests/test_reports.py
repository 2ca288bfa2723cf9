"""Report formats and exit codes, through the real ``mtlsprobe check`` against real
sockets made here, plus the renderers on hand-made results for exact shapes."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

from junitparser import Error, Failure, JUnitXml, Skipped

from probe.report import render
from probe.results import CONTRACT_KEYS, Result, Verdict, exit_code
from tests.tlsservers import (
    nothing_listening,
    plaintext_http,
    read_request,
    reset_after_read,
    serving,
    tcp_echo,
)

ESC = "\x1b"


def write_targets(tmp: Path, entries: list[dict[str, str]]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    lines = [
        "trustDomain: cluster.local",
        "source:",
        "  identity: spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe",
        "targets:",
    ]
    for e in entries:
        lines += [
            f"  - name: {e['name']}",
            f"    host: {e.get('host', 'echo.ns-a.svc.cluster.local')}",
            "    port: 8080",
            f'    endpoints: ["{e["endpoint"]}"]',
            f"    expect: {e.get('expect', 'STRICT')}",
            f"    protocol: {e.get('protocol', 'http')}",
        ]
    p = tmp / "targets.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "NO_COLOR"}


def check(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli.main", "check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
    )


def mixed_targets(tmp: Path, strict: str, open_: str, tcp: str, dead: str) -> Path:
    """One of each verdict from plaintext (per endpoint) + xfcc-spoof (per target, and
    a skip: these targets do not reflect headers)."""
    return write_targets(
        tmp,
        [
            {"name": "ns-a/strict", "endpoint": strict},
            {"name": "ns-b/open", "endpoint": open_},
            {"name": "ns-c/tcp", "endpoint": tcp, "expect": "PERMISSIVE", "protocol": "tcp"},
            {"name": "ns-d/dead", "endpoint": dead},
        ],
    )


def test_formats_through_the_cli_agree_and_keep_the_contract(tmp_path: Path) -> None:
    with (
        serving(reset_after_read) as strict,
        serving(plaintext_http) as open_,
        serving(tcp_echo) as tcp,
    ):
        f = mixed_targets(
            tmp_path,
            str(strict.endpoint),
            str(open_.endpoint),
            str(tcp.endpoint),
            str(nothing_listening()),
        )
        out = {
            fmt: check(
                "-f", str(f), "--checks", "plaintext,xfcc-spoof", "-o", fmt, "--timeout", "2"
            )
            for fmt in ("json", "jsonl", "junit", "table")
        }
    assert {p.returncode for p in out.values()} == {1}, {k: p.stderr for k, p in out.items()}

    doc = json.loads(out["json"].stdout)
    assert list(doc) == ["results", "summary"]
    results = doc["results"]
    for r in results:
        keys = (
            list(CONTRACT_KEYS)
            if r["check"] == "plaintext"
            else [k for k in CONTRACT_KEYS if k != "endpoint"]
        )
        assert list(r) == keys, r  # exactly the contract's keys, in order
        assert r["verdict"] in ("pass", "fail", "error", "skip") and r["reason"]
    by = {(r["check"], r["target"]): r for r in results}
    assert by[("plaintext", "ns-a/strict")]["verdict"] == "pass"
    assert by[("plaintext", "ns-b/open")]["verdict"] == "fail"
    assert by[("plaintext", "ns-c/tcp")]["verdict"] == "pass"
    assert by[("plaintext", "ns-d/dead")]["verdict"] == "error"
    assert by[("xfcc-spoof", "ns-c/tcp")]["verdict"] == "skip"
    assert "endpoint" not in by[("xfcc-spoof", "ns-a/strict")]
    summary = doc["summary"]
    assert list(summary) == ["pass", "fail", "error", "skip"]
    assert summary == {v: sum(r["verdict"] == v for r in results) for v in summary}

    lines = out["jsonl"].stdout.splitlines()
    assert [json.loads(x) for x in lines] == results  # one result per line, same content

    xml = JUnitXml.fromstring(out["junit"].stdout)
    cases = [c for suite in xml for c in suite]
    assert len(cases) == len(results)
    kinds = [type(c.result[0]).__name__ if c.result else "pass" for c in cases]
    assert kinds.count("Failure") == xml.failures == summary["fail"]
    assert kinds.count("Error") == xml.errors == summary["error"]
    assert kinds.count("Skipped") == xml.skipped == summary["skip"]
    assert kinds.count("pass") == summary["pass"]
    assert xml.tests == len(results)

    table = out["table"].stdout
    assert ESC not in table  # a pipe, not a terminal: no colour
    assert table.splitlines()[0].split() == ["VERDICT", "CHECK", "TARGET", "ENDPOINT", "REASON"]
    assert len(table.splitlines()) == len(results) + 3
    assert table.rstrip().endswith(
        f"{len(results)} results: {summary['pass']} pass, {summary['fail']} fail, "
        f"{summary['error']} error, {summary['skip']} skip"
    )


def run_on_a_tty(args: list[str], env: dict[str, str]) -> str:
    """Run the CLI with stdout on a pseudo-terminal, as a person would."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli.main", "check", *args],
        stdout=slave,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        if proc.stderr:
            proc.stderr.close()
    return b"".join(chunks).decode()


def test_table_is_coloured_on_a_terminal_unless_no_color(tmp_path: Path) -> None:
    with serving(reset_after_read) as strict, serving(plaintext_http) as open_:
        f = write_targets(
            tmp_path,
            [
                {"name": "ns-a/strict", "endpoint": str(strict.endpoint)},
                {"name": "ns-b/open", "endpoint": str(open_.endpoint)},
            ],
        )
        args = ["-f", str(f), "--checks", "plaintext"]
        env = {**clean_env(), "TERM": "xterm"}
        coloured = run_on_a_tty(args, env)
        empty_no_color = run_on_a_tty(args, {**env, "NO_COLOR": ""})  # empty: not set
        plain = run_on_a_tty(args, {**env, "NO_COLOR": "1"})
        dumb = run_on_a_tty(args, {**env, "TERM": "dumb"})
    assert "\x1b[31;1mFAIL" in coloured and "\x1b[32mPASS" in coloured
    assert "\x1b[31;1mFAIL" in empty_no_color
    assert "FAIL" in plain and ESC not in plain
    assert "FAIL" in dumb and ESC not in dumb


def hostile_status_line(conn: socket.socket) -> None:
    conn.settimeout(5)
    if read_request(conn):
        conn.sendall(b"HTTP/1.1 200 \x1b[2J\x1b]0;owned\x07OK\x00\r\ncontent-length: 0\r\n\r\n")


def test_server_text_cannot_drive_the_terminal_or_break_junit(tmp_path: Path) -> None:
    with serving(hostile_status_line) as srv:
        f = write_targets(tmp_path, [{"name": "ns-a/evil", "endpoint": str(srv.endpoint)}])
        table = check("-f", str(f), "--checks", "plaintext")
        junit = check("-f", str(f), "--checks", "plaintext", "-o", "junit")
        js = check("-f", str(f), "--checks", "plaintext", "-o", "json")
    assert table.returncode == junit.returncode == js.returncode == 1
    assert ESC not in table.stdout and "\x07" not in table.stdout
    assert "\\x1b[2J" in table.stdout  # shown, not obeyed
    (case,) = [c for s in JUnitXml.fromstring(junit.stdout) for c in s]
    assert isinstance(case.result[0], Failure) and "\\x1b" in case.result[0].message
    (r,) = json.loads(js.stdout)["results"]
    assert "\x1b[2J" in r["reason"]  # JSON keeps the exact bytes (escaped on the wire)
    assert ESC not in js.stdout


def test_exit_codes_through_the_cli(tmp_path: Path) -> None:
    with serving(reset_after_read) as strict, serving(plaintext_http) as open_:
        ok = write_targets(tmp_path / "ok", [{"name": "a/x", "endpoint": str(strict.endpoint)}])
        fail = write_targets(tmp_path / "f", [{"name": "a/x", "endpoint": str(open_.endpoint)}])
        err = write_targets(tmp_path / "e", [{"name": "a/x", "endpoint": str(nothing_listening())}])
        both = write_targets(
            tmp_path / "b",
            [
                {"name": "a/x", "endpoint": str(open_.endpoint)},
                {"name": "a/y", "endpoint": str(nothing_listening())},
            ],
        )
        codes = {
            name: check("-f", str(p), "--checks", "plaintext", "-o", "json").returncode
            for name, p in (("ok", ok), ("fail", fail), ("err", err), ("both", both))
        }
    assert codes == {"ok": 0, "fail": 1, "err": 2, "both": 1}


def test_usage_errors_exit_64_with_one_line(tmp_path: Path) -> None:
    good = write_targets(tmp_path, [{"name": "a/x", "endpoint": "127.0.0.1:1"}])
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("expect: STRICT", "expect: MAYBE"))
    cases = [
        ("-f", str(tmp_path / "missing.yaml")),
        ("-f", str(bad)),
        ("-f", str(good), "--checks", "plaintext,nosuch"),
        ("-f", str(good), "--timeout", "-1"),
        ("-f", str(good), "-o", "xml"),
    ]
    for args in cases:
        proc = check(*args)
        assert proc.returncode == 64, (args, proc.stderr)
        assert proc.stdout == ""
        # One line says what is wrong (argparse prints its usage above it).
        assert proc.stderr.strip().splitlines()[-1].startswith("mtlsprobe check: error: ")
        assert "Traceback" not in proc.stderr
    assert "MAYBE" in check("-f", str(bad)).stderr


def test_out_file_takes_its_format_from_the_suffix(tmp_path: Path) -> None:
    with serving(reset_after_read) as strict:
        f = write_targets(tmp_path, [{"name": "a/x", "endpoint": str(strict.endpoint)}])
        proc = check("-f", str(f), "--checks", "plaintext", "--out", str(tmp_path / "r.xml"))
    assert proc.returncode == 0 and "PASS" in proc.stdout
    xml = JUnitXml.fromfile(str(tmp_path / "r.xml"))
    assert xml.tests == 1 and xml.failures == 0


SAMPLE = [
    Result(
        "plaintext",
        "ns/a",
        Verdict.PASS,
        "refused",
        endpoint="1.2.3.4:80",
        expected="refused",
        observed="refused",
    ),
    Result(
        "mesh",
        "ns/a",
        Verdict.FAIL,
        "wrong identity",
        expected="x",
        observed="y",
        evidence={"status": 200},
    ),
    Result(
        "peer-cert",
        "ns/b",
        Verdict.ERROR,
        "timed out",
        endpoint="1.2.3.5:80",
        evidence={"error": "timeout"},
    ),
    Result("xfcc-spoof", "ns/b", Verdict.SKIP, "not echo"),
]


def test_json_keys_are_exactly_the_contract() -> None:
    doc = json.loads(render(SAMPLE, "json"))
    assert doc["summary"] == {"pass": 1, "fail": 1, "error": 1, "skip": 1}
    assert list(doc["results"][0]) == list(CONTRACT_KEYS)
    assert list(doc["results"][1]) == [k for k in CONTRACT_KEYS if k != "endpoint"]
    assert doc["results"][1]["evidence"] == {"status": 200}
    assert [json.loads(x) for x in render(SAMPLE, "jsonl").splitlines()] == doc["results"]


def test_junit_maps_each_verdict() -> None:
    xml = JUnitXml.fromstring(render(SAMPLE, "junit"))
    cases = {case.classname: case for suite in xml for case in suite}
    assert cases["mtlsprobe.plaintext"].is_passed
    assert isinstance(cases["mtlsprobe.mesh"].result[0], Failure)
    (err,) = cases["mtlsprobe.peer-cert"].result
    assert isinstance(err, Error) and err.type == "timeout" and err.message == "timed out"
    assert isinstance(cases["mtlsprobe.xfcc-spoof"].result[0], Skipped)
    assert (xml.tests, xml.failures, xml.errors, xml.skipped) == (4, 1, 1, 1)


def test_exit_code_rules() -> None:
    assert exit_code(SAMPLE) == 1
    assert exit_code([SAMPLE[0], SAMPLE[2]]) == 2
    assert exit_code([SAMPLE[0], SAMPLE[3]]) == 0
    assert exit_code([]) == 0
