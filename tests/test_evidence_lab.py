"""The issue's "done means" for evidence, on the lab (real Envoy): ``mtlsprobe lab broken
-o policyreport`` gives objects that validate against the upstream CRD with every
finding in them, and ``--attest`` evidence verifies with the public key and fails after
any byte of the results changes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.fakekube_reports import validate
from tests.signkeys import write_key_pair

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
MTLSPROBE = [sys.executable, "-m", "jobs.cli.main"]


def test_lab_policy_reports_and_a_signed_attestation(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    priv, pub = tmp_path / "key.pem", tmp_path / "pub.pem"
    write_key_pair(key, priv, pub)
    evidence = tmp_path / "lab.intoto.json"
    lab = subprocess.run(
        [
            *MTLSPROBE,
            "lab",
            "broken",
            "-o",
            "policyreport",
            "--compliance",
            str(ROOT / "docs" / "compliance-example.yaml"),
            "--attest",
            str(priv),
            "--attest-out",
            str(evidence),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert lab.returncode == 1, lab.stderr  # the broken scenario has failures
    docs = [d for d in yaml.safe_load_all(lab.stdout) if d]
    assert docs and all(d["kind"] == "PolicyReport" for d in docs)
    for d in docs:
        assert validate(d) == [], d["metadata"]["namespace"]
    results = [r for d in docs for r in d["results"]]
    fails = [r for r in results if r["result"] == "fail"]
    assert fails and all(r["severity"] == "high" for r in fails)
    assert sum(d["summary"]["fail"] for d in docs) == len(fails)
    assert any("controls" in r["properties"] for r in results)

    def verify(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MTLSPROBE, "evidence", "verify", "--key", str(pub), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    ok = verify(evidence)
    assert ok.returncode == 0, ok.stderr
    assert "FAILED" in ok.stdout and f"{len(fails)} fail" in ok.stdout
    # Change the results inside the signed payload: one verdict, one byte elsewhere.
    env = json.loads(evidence.read_text())
    payload = base64.b64decode(env["payload"])
    edited = payload.replace(b'"verdict":"fail"', b'"verdict":"pass"', 1)
    assert edited != payload
    for body in (edited, payload[:100] + bytes([payload[100] ^ 1]) + payload[101:]):
        tampered = tmp_path / "tampered.json"
        tampered.write_text(json.dumps({**env, "payload": base64.b64encode(body).decode()}))
        bad = verify(tampered)
        assert bad.returncode == 1 and "NOT VERIFIED" in bad.stderr
