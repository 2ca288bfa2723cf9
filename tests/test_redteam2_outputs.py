"""Red-team round 2 for the reports, end to end: the real CLI, a targets file whose names
the loader accepts at its limits (512 characters, combining marks, astral and RTL
letters, XML metacharacters), and a real server answering a status line full of control
bytes. Every format must be strict UTF-8 with no control bytes; junit must parse
(stdlib XML and junitparser). Held in round 2: this pins it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from junitparser import JUnitXml

from probe.syntax import MAX_NAME_CHARS
from tests.tlsservers import read_request, serving

_UNIT = "é中\u0301]]><&\"'א😀Ω"
NAMES = [(_UNIT * 60)[:MAX_NAME_CHARS], "ns/" + "z" * (MAX_NAME_CHARS - 3)]
CLI = str(Path(sys.executable).with_name("mtlsprobe"))
STATUS = b"HTTP/1.1 200 \x1b[31mOK]]>\x00\x0b\xff\xe2\x80\xa8<x>&\r\n\r\n"


def _hostile(conn: socket.socket) -> None:
    conn.settimeout(5)
    if read_request(conn):
        conn.sendall(STATUS)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "junit", "table"])
def test_hostile_names_and_answers_keep_every_format_well_formed(tmp_path: Path, fmt: str) -> None:
    with serving(_hostile) as srv:
        targets = [
            {
                "name": name,
                "host": f"echo{i}.ns.svc.cluster.local",
                "port": 8080,
                "endpoints": [str(srv.endpoint)],
                "expect": expect,
                "protocol": "http",
            }
            for i, (name, expect) in enumerate(zip(NAMES, ["NONE", "STRICT"], strict=True))
        ]
        f = tmp_path / "t.yaml"
        f.write_text(
            json.dumps({"trustDomain": "cluster.local", "targets": targets}, ensure_ascii=False),
            encoding="utf-8",
        )
        proc = subprocess.run(
            [CLI, "check", "-f", str(f), "--checks", "plaintext", "-o", fmt],
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 1, proc.stderr  # the STRICT target accepted plaintext
    out = proc.stdout
    text = out.decode("utf-8", "strict")
    for bad in (b"\x1b", b"\x00", b"\x0b"):
        assert bad not in out
    if fmt == "json":
        doc = json.loads(text)
        assert {r["target"] for r in doc["results"]} == set(NAMES)
    elif fmt == "jsonl":
        assert {json.loads(line)["target"] for line in text.splitlines()} == set(NAMES)
    elif fmt == "junit":
        ET.fromstring(out)
        (tmp_path / "out.xml").write_bytes(out)
        cases = [c for suite in JUnitXml.fromfile(str(tmp_path / "out.xml")) for c in suite]
        assert sorted(c.name.split(" ")[0] for c in cases) == sorted(NAMES)
    else:
        assert "\u2028" not in text and len(text.splitlines()) == 5
