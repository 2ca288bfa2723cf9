"""The Hash= binding on the lab's real Envoy: the genuine element a real server sidecar
writes carries the SHA-256 of the certificate the probe's sidecar presented, and the
probe compares it with what its sidecar's admin shows. Apps reached in plaintext (no
server sidecar; a DestinationRule DISABLE in front of one) that fabricate a perfect
reflection - our marker, an XFCC with the right, public, By=/URI= - do not pass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from jobs.lab.runner import running
from jobs.lab.scenarios import from_files
from probe.model import Expect
from probe.reflect import App
from tests.meshlab import PLAIN_DR, head, reflect_argv, run, workload

pytestmark = pytest.mark.envoy

BARE = """
---
apiVersion: v1
kind: Namespace
metadata: {name: bare}
"""
PROBE = "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"


@pytest.mark.parametrize(
    "hash_part", ["Hash=" + "5e" * 32 + ";", ""], ids=["made-up-hash", "no-hash"]
)
def test_fabricated_reflections_do_not_pass_and_the_genuine_one_does(
    tmp_path: Path, hash_part: str
) -> None:
    web = [("http", 8080, 8080)]
    text = head() + workload("web", web) + workload("web-plain", web)
    text += PLAIN_DR % {"name": "web-plain"}
    text += BARE + workload("liar", web, namespace="bare")
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    # service account = service name here, so the app can name the target's identity
    fabricate = f'By=spiffe://cluster.local/ns/{{ns}}/sa/{{svc}};{hash_part}Subject="";URI={PROBE}'
    # httpbin-shaped apps that show ``fabricate`` as XFCC when none arrived
    liar_argv = reflect_argv(App.HTTPBIN, "--fabricate", fabricate)
    with running(from_files([path]), tmp_path / "lab", serve_argv=liar_argv) as lab:
        # the targets file says every one of them is mTLS with a sidecar
        targets = replace(
            lab.targets,
            targets=tuple(replace(t, expect=Expect.STRICT, echo=True) for t in lab.targets.targets),
        )
        assert targets.source.identity == PROBE
        results = run(targets, ("mesh", "xfcc-spoof"))
    ok = results["mesh data/web"]
    assert ok.verdict.value == "pass", ok
    assert ok.evidence["xfcc_hash"].startswith("matched: Hash="), ok.evidence
    assert "this probe's certificate" in ok.reason
    spoof = results["xfcc-spoof data/web"]
    assert spoof.verdict.value == "pass" and spoof.evidence["xfcc_hash"].startswith("matched")
    for name in ("data/web-plain", "bare/liar"):
        lie = results[f"mesh {name}"]
        assert lie.verdict.value == "fail", lie
        assert "not written for this probe's certificate" in lie.reason
        assert results[f"xfcc-spoof {name}"].verdict.value != "pass"
