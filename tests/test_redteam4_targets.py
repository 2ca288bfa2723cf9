"""Red-team round 4 for the targets file: two targets whose names a reader cannot tell
apart (``ns/café`` composed and decomposed, full-width letters, another case). Every
report tells results apart by name only, so one could carry the other's pass - before
round 4 both loaded and each got its own row. The real CLI: exit 64, one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("mtlsprobe"))


def _target(name: str, i: int) -> dict[str, object]:
    return {
        "name": name,
        "host": f"svc{i}.ns.svc.cluster.local",
        "port": 8080,
        "endpoints": [f"127.0.0.1:{9 + i}"],
        "expect": "STRICT",
    }


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("ns/caf\u00e9", "ns/cafe\u0301"),  # NFC vs NFD
        ("ns/echo", "ns/\uff45cho"),  # full-width e
        ("ns/echo", "ns/Echo"),
    ],
    ids=["nfc-nfd", "fullwidth", "case"],
)
def test_names_that_look_alike_are_duplicates(tmp_path: Path, first: str, second: str) -> None:
    f = tmp_path / "t.yaml"
    doc = {"trustDomain": "cluster.local", "targets": [_target(first, 0), _target(second, 1)]}
    f.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    proc = subprocess.run(
        [CLI, "check", "-f", str(f), "--checks", "plaintext", "-o", "json"],
        capture_output=True,
        timeout=60,
        check=False,
        text=True,
    )
    assert proc.returncode == 64, (proc.returncode, proc.stdout, proc.stderr)
    assert "targets[1]" in proc.stderr and "duplicate name" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
