"""Red-team round 4 on the lab's real Envoy: an app that REPLAYS a genuine XFCC hash.

One liar process serves three workloads: ``data/web`` behind a real server sidecar
(it sees the genuine element, with the SHA-256 of the probe's certificate in
``Hash=``), ``data/web-plain`` behind a DestinationRule DISABLE (reached in
plaintext) and ``bare/liar`` without a sidecar. The last two show a perfect element -
our marker, their own ``By=``, the probe's ``URI=`` and the hash learnt from ``web`` -
for requests that arrive without XFCC. Before round 4 a second run passed both (the
hash matched the probe's certificate); the probe's own sidecar counted the call as
plaintext all along, and now that decides (``mesh`` fails; ``xfcc-spoof`` cannot lean
on that element as the genuine one: error)."""

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


def test_replayed_hash_from_a_genuine_element_does_not_pass(tmp_path: Path) -> None:
    web = [("http", 8080, 8080)]
    text = head() + workload("web", web) + workload("web-plain", web)
    text += PLAIN_DR % {"name": "web-plain"}
    text += BARE + workload("liar", web, namespace="bare")
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    fabricate = (
        f'By=spiffe://cluster.local/ns/{{ns}}/sa/{{svc}};Hash={{hash}};Subject="";URI={PROBE}'
    )
    liar_argv = reflect_argv(App.HTTPBIN, "--fabricate", fabricate)
    with running(from_files([path]), tmp_path / "lab", serve_argv=liar_argv) as lab:
        targets = replace(
            lab.targets,
            targets=tuple(replace(t, expect=Expect.STRICT, echo=True) for t in lab.targets.targets),
        )
        first = run(targets, ("mesh",))  # the liar learns the probe's hash from data/web
        assert first["mesh data/web"].verdict.value == "pass", first["mesh data/web"]
        results = run(targets, ("mesh", "xfcc-spoof"))
    ok = results["mesh data/web"]
    assert ok.verdict.value == "pass", ok
    assert ok.evidence["transport"]["seen"] == "tls", ok.evidence
    for name in ("data/web-plain", "bare/liar"):
        lie = results[f"mesh {name}"]
        assert lie.evidence["xfcc_hash"].startswith("matched"), lie  # the replay worked
        assert lie.verdict.value == "fail", lie
        assert "plaintext" in lie.reason and "replaying or fabricating" in lie.reason, lie
        spoof = results[f"xfcc-spoof {name}"]
        assert spoof.verdict.value == "error" and "plaintext" in spoof.reason, spoof
    assert results["xfcc-spoof data/web"].verdict.value == "pass", results["xfcc-spoof data/web"]
