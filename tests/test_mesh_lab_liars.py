"""mesh on the lab's real Envoy sidecars, where a response alone would lie.

- tcp echo and non-echo HTTP targets reached in plaintext (DestinationRule DISABLE to a
  PERMISSIVE server: the app answers, bytes come back) must not pass; the probe
  sidecar's own counters show the plaintext;
- the same targets over auto-mTLS pass on those counters, and say identity was not
  observable;
- httpbin-, go-httpbin- and Istio-echo-shaped apps behind real server sidecars prove
  mTLS through the XFCC element the real Envoy wrote.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from jobs.lab.runner import running
from jobs.lab.scenarios import from_files
from probe.reflect import App
from probe.results import Verdict
from tests.meshlab import manifest, reflect_argv, run

pytestmark = pytest.mark.envoy


def test_reachable_is_not_mtls_and_the_sidecar_tells_which(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        [
            ("pg", 5432, "tcp-pg"),
            ("pg-plain", 5432, "tcp-pg"),
            ("web", 8080, "http"),
            ("web-plain", 8080, "http"),
        ],
        ["pg-plain", "web-plain"],
    )
    with running(from_files([path]), tmp_path / "lab") as lab:
        # the web apps are treated as apps that do not reflect headers
        quiet = replace(
            lab.targets,
            targets=tuple(replace(t, echo=t.protocol.value == "tcp") for t in lab.targets.targets),
        )
        first, second = run(quiet), run(quiet)  # the second reuses pooled connections
        # many calls to the same clusters at once: serialised per cluster, each delta is
        # one call's, so concurrency never turns into "other traffic" or a wrong verdict
        crowd = replace(
            quiet,
            targets=tuple(
                replace(t, name=f"{t.name.split(':')[0]}-{i}:{t.port}")
                for t in quiet.targets
                for i in range(6)
            ),
        )
        crowded = run(crowd, concurrency=12)
    for results in (first, second):
        plain_tcp = results["mesh data/pg-plain"]
        assert plain_tcp.verdict is Verdict.FAIL, plain_tcp
        assert "our bytes came back" in plain_tcp.reason and "plaintext" in plain_tcp.reason
        assert plain_tcp.evidence["transport"]["delta"]["handshake"] == 0
        plain_web = results["mesh data/web-plain"]
        assert plain_web.verdict is Verdict.FAIL and "plaintext" in plain_web.reason, plain_web
        for name in ("mesh data/pg", "mesh data/web"):
            ok = results[name]
            assert ok.verdict is Verdict.PASS, ok
            assert "TLS handshake" in ok.reason and "identit" in ok.reason
            assert ok.evidence["transport"]["cluster"].startswith("outbound|")
    assert len(crowded) == 24
    for name, r in crowded.items():
        want = Verdict.FAIL if "-plain" in name else Verdict.PASS
        assert r.verdict is want, r
    # both ways of proving it on real Envoy: a fresh connection (the first call; the
    # lab's own mesh control may already have opened one to web) and a reused one
    assert "new connection" in first["mesh data/web-plain"].reason
    assert "reused a connection" in second["mesh data/web"].reason
    assert "reused a connection" in second["mesh data/web-plain"].reason


@pytest.mark.parametrize(
    ("style", "case"),
    [(App.HTTPBIN, "title"), (App.GO_HTTPBIN, "title"), (App.ISTIO_ECHO, "upper")],
)
def test_real_envoy_in_front_of_the_apps_people_run(tmp_path: Path, style: App, case: str) -> None:
    path = manifest(tmp_path, [("web", 8080, "http"), ("web-plain", 8080, "http")], ["web-plain"])
    with running(
        from_files([path]),
        tmp_path / "lab",
        serve_argv=reflect_argv(style, "--case", case),
    ) as lab:
        results = run(lab.targets, ("mesh", "xfcc-spoof"))
    ok = results["mesh data/web"]
    assert ok.verdict is Verdict.PASS and ok.evidence["app"] == style.value, ok
    assert ok.evidence["xfcc_trusted"]["By"] == ["spiffe://cluster.local/ns/data/sa/web"]
    assert results["xfcc-spoof data/web"].verdict is Verdict.PASS
    plain = results["mesh data/web-plain"]
    assert plain.verdict is Verdict.FAIL and "no XFCC" in plain.reason
    # no XFCC at all where the server sidecar must append one: nothing proven
    spoof = results["xfcc-spoof data/web-plain"]
    assert spoof.verdict is Verdict.ERROR and "no XFCC at all" in spoof.reason


def test_real_httpbin_behind_real_envoy(tmp_path: Path) -> None:
    """The httpbin package itself (Flask/Werkzeug, as Istio's samples deploy it),
    when installed: `pip install httpbin`."""
    pytest.importorskip("httpbin")
    path = manifest(tmp_path, [("web", 8080, "http"), ("web-plain", 8080, "http")], ["web-plain"])
    argv = reflect_argv(App.HTTPBIN, "--case", "title", real=True)
    with running(from_files([path]), tmp_path / "lab", serve_argv=argv) as lab:
        results = run(lab.targets, ("mesh", "xfcc-spoof"))
    ok = results["mesh data/web"]
    assert ok.verdict is Verdict.PASS and ok.evidence["app"] == "httpbin", ok
    assert results["xfcc-spoof data/web"].verdict is Verdict.PASS
    assert results["mesh data/web-plain"].verdict is Verdict.FAIL
    assert results["xfcc-spoof data/web-plain"].verdict is Verdict.ERROR
