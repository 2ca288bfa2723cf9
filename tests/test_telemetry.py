"""Traces and metrics reach a real OTLP/HTTP receiver (protobuf decoded here) from the
real ``mtlsprobe check``; SIGTERM still reports and flushes; an unreachable or silent
collector costs bounded time and never changes the exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from probe.model import Endpoint, Expect, Target, TargetsFile
from probe.results import Result, Verdict
from tests.otlp_receiver import Received, attrs_of, otlp_receiver
from tests.procs import mtlsprobe, reaped, sigterm
from tests.tlsservers import (
    MeshPKI,
    Server,
    black_hole,
    nothing_listening,
    plaintext_http,
    reset_after_read,
    serving,
    tls_handler,
)

SOURCE_ID = "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"
# The target's name says "shop" but its SPIFFE ID says "payments": the namespace on
# spans and metrics must come from the identity when it is Istio-shaped.
ECHO_ID = "spiffe://cluster.local/ns/payments/sa/echo"
STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
STATUS_UNSET = 0


def write_targets(path: Path, targets: list[dict[str, str]], root: Path | None = None) -> Path:
    lines = ["trustDomain: cluster.local"]
    if root is not None:
        lines.append(f"rootCertFile: {root}")
    lines += ["source:", f"  identity: {SOURCE_ID}", "targets:"]
    for t in targets:
        lines += [
            f"  - name: {t['name']}",
            "    host: echo.shop.svc.cluster.local",
            "    port: 8080",
            f'    endpoints: ["{t["endpoint"]}"]',
            f"    expect: {t.get('expect', 'STRICT')}",
        ]
        if "identity" in t:
            lines.append(f"    identity: {t['identity']}")
    path.write_text("\n".join(lines) + "\n")
    return path


def cli_env(**otel: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(otel)
    return env


def check(
    path: Path, *extra: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return mtlsprobe("check", "-f", str(path), "-o", "json", *extra, env=env, timeout=timeout)


@pytest.fixture
def mesh(pki: MeshPKI, tmp_path: Path) -> Iterator[Path]:
    """A STRICT sidecar-like TLS server, a plaintext server that should be STRICT, a
    dead port and a target without a sidecar: every verdict from plaintext+peer-cert."""
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    with serving(tls_handler(pki, issued)) as strict, serving(plaintext_http) as open_:
        yield write_targets(
            tmp_path / "targets.yaml",
            [
                {"name": "shop/echo", "endpoint": str(strict.endpoint), "identity": ECHO_ID},
                {"name": "shop/open", "endpoint": str(open_.endpoint)},
                {"name": "shop/dead", "endpoint": str(nothing_listening())},
                {"name": "legacy/app", "endpoint": str(open_.endpoint), "expect": "NONE"},
            ],
            root=pki.root_file,
        )


def key_of(check_: str, target: str, endpoint: str | None) -> str:
    return f"{check_} {target}" + (f" {endpoint}" if endpoint else "")


def test_one_trace_with_a_span_per_result_and_its_attributes(mesh: Path) -> None:
    with otlp_receiver() as (url, got):
        proc = check(
            mesh,
            "--checks",
            "plaintext,peer-cert",
            "--timeout",
            "1",
            env=cli_env(OTEL_EXPORTER_OTLP_ENDPOINT=url),
        )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""  # delivered: no warning
    results = json.loads(proc.stdout)["results"]
    verdicts = Counter(r["verdict"] for r in results)
    assert set(verdicts) == {"pass", "fail", "error", "skip"}

    assert len(got.spans) == len(results) + 1
    (root,) = [s for s in got.spans if s.name == "mtlsprobe.run"]
    children = [s for s in got.spans if s is not root]
    assert {s.name for s in children} == {"mtlsprobe.check plaintext", "mtlsprobe.check peer-cert"}
    assert {s.trace_id for s in got.spans} == {root.trace_id}
    assert root.parent_span_id == b""
    assert all(c.parent_span_id == root.span_id for c in children)
    assert root.status.code == STATUS_ERROR
    root_attrs = got.span_attrs(root)
    assert root_attrs["test.suite.run.status"] == "failure"
    assert root_attrs["mtlsprobe.results"] == len(results)
    assert root_attrs["mtlsprobe.results.fail"] == verdicts["fail"]
    assert root_attrs["mtlsprobe.source.namespace"] == "mtlsprobe"

    spans = {got.span_attrs(c)["test.case.name"]: c for c in children}
    assert len(spans) == len(results)
    for r in results:
        span = spans[key_of(r["check"], r["target"], r.get("endpoint"))]
        a = got.span_attrs(span)
        assert a["mtlsprobe.verdict"] == r["verdict"] and a["mtlsprobe.reason"] == r["reason"]
        assert a["mtlsprobe.check"] == r["check"] and a["mtlsprobe.target"] == r["target"]
        want_status = {"pass": "pass", "fail": "fail", "error": "fail", "skip": None}
        assert a.get("test.case.result.status") == want_status[r["verdict"]]
        bad = r["verdict"] in ("fail", "error")
        assert span.status.code == (STATUS_ERROR if bad else STATUS_UNSET)
        assert a["mtlsprobe.source.spiffe_id"] == SOURCE_ID
        if r.get("endpoint"):
            host, port = r["endpoint"].rsplit(":", 1)
            assert (a["server.address"], a["server.port"]) == (host, int(port))
        assert root.start_time_unix_nano <= span.start_time_unix_nano
        assert span.start_time_unix_nano <= span.end_time_unix_nano <= root.end_time_unix_nano
        if r["verdict"] == "error":
            assert a["error.type"] == r["evidence"]["error"]

    (cert,) = [r for r in results if r["check"] == "peer-cert" and r["verdict"] == "pass"]
    a = got.span_attrs(spans[key_of("peer-cert", "shop/echo", cert["endpoint"])])
    assert a["k8s.namespace.name"] == "payments"  # from the SPIFFE ID, not the name
    assert a["mtlsprobe.destination.spiffe_id"] == ECHO_ID
    assert a["mtlsprobe.evidence.spiffe_id"] == ECHO_ID
    assert a["tls.server.hash.sha256"] == cert["evidence"]["fingerprint_sha256"].upper()
    assert a["tls.server.not_after"].endswith("Z") and a["tls.server.issuer"]
    assert a["tls.protocol.name"] == "tls" and a["tls.protocol.version"] in ("1.2", "1.3")
    assert a["tls.established"] is True
    assert a["mtlsprobe.evidence.san_uris"] == [ECHO_ID]
    other = got.span_attrs(spans[key_of("plaintext", "shop/open", results[1]["endpoint"])])
    assert other["k8s.namespace.name"] == "shop"  # no identity: from the target name

    # Resource: the default service name, the version.
    (resource,) = {json.dumps(r, sort_keys=True) for r in got.resources}
    assert json.loads(resource)["service.name"] == "mtlsprobe"

    # Metrics: checks by check/verdict/namespace (no endpoint labels) and cert expiry.
    points = got.metric_points("mtlsprobe.checks")
    assert sum(p.as_int for p in points) == len(results)
    for p in points:
        assert set(attrs_of(p.attributes)) == {
            "mtlsprobe.check",
            "mtlsprobe.verdict",
            "k8s.namespace.name",
        }
    by_label: Counter[tuple[str, str]] = Counter()
    for p in points:
        labels = attrs_of(p.attributes)
        by_label[(labels["mtlsprobe.check"], labels["mtlsprobe.verdict"])] += p.as_int
    assert by_label == Counter((r["check"], r["verdict"]) for r in results)
    (expiry,) = got.metric_points("mtlsprobe.peer_cert.expiry")
    labels = attrs_of(expiry.attributes)
    assert labels == {
        "mtlsprobe.check": "peer-cert",
        "mtlsprobe.target": "shop/echo",
        "k8s.namespace.name": "payments",
    }
    assert abs(expiry.as_double - cert["evidence"]["remaining_seconds"]) < 60  # of ~24 h


def test_service_name_resource_attributes_and_headers_come_from_the_environment(
    tmp_path: Path,
) -> None:
    with serving(reset_after_read) as strict, otlp_receiver() as (url, got):
        f = write_targets(tmp_path / "t.yaml", [{"name": "a/x", "endpoint": str(strict.endpoint)}])
        proc = check(
            f,
            "--checks",
            "plaintext",
            env=cli_env(
                OTEL_EXPORTER_OTLP_ENDPOINT=url,
                OTEL_SERVICE_NAME="probe-job",
                OTEL_RESOURCE_ATTRIBUTES="k8s.pod.name=mtlsprobe-abc,service.name=ignored",
                OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20s3cret,x-tenant=team-a",
            ),
        )
    assert proc.returncode == 0, proc.stderr
    assert {r["service.name"] for r in got.resources} == {"probe-job"}
    assert {r["k8s.pod.name"] for r in got.resources} == {"mtlsprobe-abc"}
    assert {p for p, _ in got.requests} == {"/v1/traces", "/v1/metrics"}
    for _, headers in got.requests:
        assert headers["authorization"] == "Bearer s3cret"
        assert headers["x-tenant"] == "team-a"
        assert headers["content-type"] == "application/x-protobuf"


def test_per_signal_endpoint_and_sdk_disabled(tmp_path: Path) -> None:
    with serving(reset_after_read) as strict, otlp_receiver() as (url, got):
        f = write_targets(tmp_path / "t.yaml", [{"name": "a/x", "endpoint": str(strict.endpoint)}])
        only_traces = check(
            f,
            "--checks",
            "plaintext",
            env=cli_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{url}/v1/traces"),
        )
        with got.lock:
            paths_after_traces = [p for p, _ in got.requests]
        disabled = check(
            f,
            "--checks",
            "plaintext",
            env=cli_env(OTEL_EXPORTER_OTLP_ENDPOINT=url, OTEL_SDK_DISABLED="true"),
        )
        with got.lock:
            paths_after_disabled = [p for p, _ in got.requests]
    assert only_traces.returncode == disabled.returncode == 0
    assert paths_after_traces == ["/v1/traces"]  # one request: the whole run's trace
    assert paths_after_disabled == paths_after_traces  # nothing more was sent


def timed(path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = check(path, "--checks", "plaintext", env=env)
    return proc, time.monotonic() - t0


@pytest.mark.parametrize("collector", ["nothing-listening", "black-hole"])
def test_unreachable_collector_is_bounded_and_never_changes_the_exit_code(
    tmp_path: Path, collector: str
) -> None:
    with (
        serving(reset_after_read) as strict,
        serving(plaintext_http) as open_,
        serving(black_hole) as hole,
    ):
        f = write_targets(
            tmp_path / "t.yaml",
            [
                {"name": "a/strict", "endpoint": str(strict.endpoint)},
                {"name": "a/open", "endpoint": str(open_.endpoint)},
            ],
        )
        baseline, base_s = timed(f, cli_env())
        where = str(nothing_listening()) if collector == "nothing-listening" else str(hole.endpoint)
        # 1500 is read the spec's way (milliseconds), not as 25 minutes.
        proc, took = timed(
            f,
            cli_env(
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{where}", OTEL_EXPORTER_OTLP_TIMEOUT="1500"
            ),
        )
    assert baseline.returncode == proc.returncode == 1
    assert json.loads(proc.stdout)["summary"] == json.loads(baseline.stdout)["summary"]
    assert [r["verdict"] for r in json.loads(proc.stdout)["results"]] == ["pass", "fail"]
    # The 1.5 s export timeout, with room for a loaded machine; still well below the
    # exporter's 10 s default (the variable ignored) and its minute of retries.
    assert took - base_s < 7, (took, base_s)
    (line,) = proc.stderr.splitlines()
    assert line.startswith("mtlsprobe: telemetry: ") and "results are unaffected" in line


def start_check(path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "jobs.cli.main", "check", "-f", str(path)),
            *("--checks", "plaintext", "-o", "jsonl", "--timeout", "30"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_accepted(server: Server, timeout: float = 60) -> None:
    """Until the probe is connected to ``server`` (the check is surely in flight)."""
    end = time.monotonic() + timeout
    while not server.accepted:
        assert time.monotonic() < end, "the probe never connected"
        time.sleep(0.02)


def sigterm_run(
    tmp_path: Path, collector_url: str, **otel: str
) -> tuple[subprocess.Popen[str], str, str, float]:
    with serving(black_hole) as hole, serving(reset_after_read) as strict:
        f = write_targets(
            tmp_path / "t.yaml",
            [
                {"name": "a/strict", "endpoint": str(strict.endpoint)},
                {"name": "a/hole", "endpoint": str(hole.endpoint)},
            ],
        )
        env = cli_env(OTEL_EXPORTER_OTLP_ENDPOINT=collector_url, **otel)
        with reaped(start_check(f, env)) as proc:
            # Both checks in flight (the strict one then ends within the stop grace);
            # a worker not yet started when the stop comes would report it interrupted.
            wait_accepted(strict)
            wait_accepted(hole)
            out, err, took = sigterm(proc)
    return proc, out, err, took


def test_sigterm_stops_reports_the_partial_run_and_flushes(tmp_path: Path) -> None:
    with otlp_receiver() as (url, got):
        proc, out, err, took = sigterm_run(tmp_path, url)
        with got.lock:
            spans = list(got.spans)
    assert proc.returncode == 2, err  # the interrupted check is an error, never a pass
    assert took < 15, took  # stop grace (min(timeout, 2 s)) + flush, not the 30 s check
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(r["target"], r["verdict"]) for r in lines] == [
        ("a/strict", "pass"),
        ("a/hole", "error"),
    ]
    assert lines[1]["observed"] == "interrupted"
    assert len(spans) == 3
    hole = next(s for s in spans if Received().span_attrs(s).get("mtlsprobe.target") == "a/hole")
    assert Received().span_attrs(hole)["mtlsprobe.verdict"] == "error"
    assert "Traceback" not in err


def test_sigterm_with_a_silent_collector_is_still_bounded(tmp_path: Path) -> None:
    with serving(black_hole) as collector:
        proc, out, err, took = sigterm_run(
            tmp_path, f"http://{collector.endpoint}", OTEL_EXPORTER_OTLP_TIMEOUT="1"
        )
    assert proc.returncode == 2, err
    assert len(out.splitlines()) == 2  # the partial report went out before the flush
    assert took < 15, took  # grace + 1 s export timeout, not the 30 s check or a hang
    assert "Traceback" not in err and "mtlsprobe: telemetry: " in err


# --- the Telemetry object (what the agent reuses) and the attribute mapping ---------


def result(
    check_: str,
    target: str,
    verdict: Verdict,
    endpoint: str | None = None,
    evidence: dict[str, Any] | None = None,
) -> Result:
    now = time.time_ns()
    return Result(
        check_,
        target,
        verdict,
        f"{verdict.value} because",
        endpoint=endpoint,
        expected="x",
        observed="y",
        evidence=evidence or {},
        start_ns=now - 5_000_000,
        end_ns=now,
    )


def test_one_telemetry_object_serves_many_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from probe.telemetry import Telemetry

    with otlp_receiver() as (url, got):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        t = Telemetry(export_timeout=2)
        ids = [
            t.record(
                [result("plaintext", "a/x", Verdict.PASS, "127.0.0.1:1")], source_identity=SOURCE_ID
            ),
            t.record(
                [
                    result("plaintext", "a/x", Verdict.PASS, "127.0.0.1:1"),
                    result("mesh", "a/x", Verdict.SKIP),
                ]
            ),
        ]
        assert t.flush() is True
        with got.lock:
            traces = Counter(s.trace_id.hex() for s in got.spans)
        assert t.shutdown() is True and t.shutdown() is True
        points = got.metric_points("mtlsprobe.checks")
    assert ids[0] != ids[1] and traces == {ids[0]: 2, ids[1]: 3}
    # Cumulative counters: the last export holds the total over both runs.
    plain = [p.as_int for p in points if attrs_of(p.attributes)["mtlsprobe.check"] == "plaintext"]
    assert max(plain) == 2
    assert t.delivery_problem() is None


def test_attributes_never_carry_key_material_and_are_bounded() -> None:
    from probe.telemetry_attrs import span_attributes

    pem = "-----BEGIN PRIVATE KEY-----\nMIIE...\n-----END PRIVATE KEY-----"
    r = result(
        "peer-cert",
        "a/x",
        Verdict.FAIL,
        "10.0.0.1:15006",
        {
            "private_key": "abc",
            "key": "abc",
            "key_pem": "abc",
            "note": pem,
            "chain": ["ok", pem],
            "key_type": "EC secp256r1",
            "key_size": 256,
            "subject": "",
            "issuer": "O=cluster.local",
            "not_after": "2030-01-01T00:00:00+00:00",
            "fingerprint_sha256": "ab" * 32,
            "tls_version": "TLSv1.2",
            "long": "z" * 5000,
            "nested": {"a": 1},
            "mixed": [1, "a"],
            "wrong trust domain": "rejected: TLS alert",
        },
    )
    a = span_attributes(r, SOURCE_ID)
    assert not [
        k for k in a if "private" in k or k.endswith((".key", ".key_pem", ".note", ".chain"))
    ]
    assert not [v for v in a.values() if "PRIVATE KEY" in str(v)]
    assert a["mtlsprobe.evidence.key_type"] == "EC secp256r1"
    assert a["mtlsprobe.evidence.key_size"] == 256
    assert len(a["mtlsprobe.evidence.long"]) == 512
    assert "mtlsprobe.evidence.nested" not in a and "mtlsprobe.evidence.mixed" not in a
    assert a["tls.server.not_after"] == "2030-01-01T00:00:00.000Z"
    assert a["tls.server.hash.sha256"] == "AB" * 32
    assert (a["tls.protocol.name"], a["tls.protocol.version"]) == ("tls", "1.2")
    assert a["k8s.namespace.name"] == "a" and a["test.case.result.status"] == "fail"
    assert a["mtlsprobe.evidence.wrong_trust_domain"] == "rejected: TLS alert"


def test_own_certificate_is_the_client_side_and_statuses_map() -> None:
    from probe.telemetry_attrs import run_attributes, span_attributes

    own = result("self", "source", Verdict.PASS, evidence={"not_after": "2030-01-01T00:00:00"})
    a = span_attributes(own, SOURCE_ID)
    assert a["tls.client.not_after"] == "2030-01-01T00:00:00.000Z"
    assert not [k for k in a if k.startswith("tls.server.")]
    assert a["k8s.namespace.name"] == "mtlsprobe"  # the probe's own namespace
    assert span_attributes(own)["k8s.namespace.name"] == "-"
    skip = span_attributes(result("mesh", "ns/x", Verdict.SKIP))
    assert "test.case.result.status" not in skip and skip["mtlsprobe.verdict"] == "skip"
    err = span_attributes(result("mesh", "ns/x", Verdict.ERROR, evidence={"error": "timeout"}))
    assert err["test.case.result.status"] == "fail" and err["error.type"] == "timeout"
    assert run_attributes([])["test.suite.run.status"] == "success"
    assert run_attributes([result("m", "t", Verdict.SKIP)])["test.suite.run.status"] == "skipped"
    interrupted = Result("m", "t", Verdict.ERROR, "stopped", observed="interrupted")
    assert run_attributes([interrupted])["test.suite.run.status"] == "aborted"
    target = Target("shop/echo", "echo.shop", 8080, Expect.STRICT, identity=ECHO_ID)
    per_target = span_attributes(result("mesh", "shop/echo", Verdict.PASS), None, target)
    assert (per_target["server.address"], per_target["server.port"]) == ("echo.shop", 8080)
    assert per_target["k8s.namespace.name"] == "payments"


def test_expiry_is_the_soonest_per_target() -> None:
    from probe.telemetry_attrs import certificate_expiry, targets_by_name

    tf = TargetsFile(
        "cluster.local",
        (Target("shop/echo", "h", 80, Expect.STRICT, (Endpoint("10.0.0.1", 1),), ECHO_ID),),
    )
    soon = result("peer-cert", "shop/echo", Verdict.FAIL, "10.0.0.2:1", {"remaining_seconds": 30})
    got = certificate_expiry(
        [
            result(
                "peer-cert", "shop/echo", Verdict.PASS, "10.0.0.1:1", {"remaining_seconds": 900}
            ),
            soon,
            result("peer-cert", "shop/echo", Verdict.ERROR, "10.0.0.3:1", {"remaining_seconds": 1}),
            result("plaintext", "shop/echo", Verdict.PASS, "10.0.0.1:1", {"remaining_seconds": 2}),
            result("self", "source", Verdict.PASS, evidence={"not_after": "2030-01-01T00:00:00Z"}),
        ],
        targets_by_name(tf),
        SOURCE_ID,
    )
    assert got == {
        ("peer-cert", "shop/echo", "payments"): soon.end_ns / 1e9 + 30,
        ("self", "source", "mtlsprobe"): 1893456000.0,
    }


def test_expiry_gauge_reports_only_the_last_run() -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

    from probe.telemetry import Telemetry

    reader = InMemoryMetricReader()
    t = Telemetry(metric_readers=[reader], otlp=False)

    def gauge() -> dict[str, float]:
        data = reader.get_metrics_data()
        assert data is not None
        out: dict[str, float] = {}
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != "mtlsprobe.peer_cert.expiry":
                        continue
                    for p in m.data.data_points:
                        assert isinstance(p, NumberDataPoint) and p.attributes is not None
                        out[str(p.attributes["mtlsprobe.target"])] = p.value
        return out

    t.record([result("peer-cert", "a/x", Verdict.PASS, "10.0.0.1:1", {"remaining_seconds": 600})])
    first = gauge()
    t.record([result("peer-cert", "b/y", Verdict.PASS, "10.0.0.2:1", {"remaining_seconds": 60})])
    second = gauge()
    t.shutdown()
    assert list(first) == ["a/x"] and 595 < first["a/x"] <= 600
    assert list(second) == ["b/y"]  # a/x is gone, not stale


def test_export_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from probe.telemetry import configured_export_timeout

    for raw, want in (("", 5.0), ("2", 2.0), ("1500", 1.5), ("10000", 5.0), ("x", 5.0), ("0", 0.1)):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", raw)
        assert configured_export_timeout() == want, raw


def test_sigterm_during_the_flush_does_not_kill_the_flush(tmp_path: Path) -> None:
    with serving(reset_after_read) as strict, serving(black_hole) as collector:
        f = write_targets(tmp_path / "t.yaml", [{"name": "a/x", "endpoint": str(strict.endpoint)}])
        proc = start_check(
            f,
            cli_env(
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{collector.endpoint}",
                OTEL_EXPORTER_OTLP_TIMEOUT="2",
            ),
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # the report is out; the flush is now waiting
            wait_accepted(collector)
            proc.send_signal(signal.SIGTERM)
            rest, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert json.loads(first)["verdict"] == "pass" and rest == ""
    assert proc.returncode == 0, err  # not killed by the signal (-15): the run's own code
    assert "mtlsprobe: telemetry: " in err


def test_hostile_text_neither_breaks_the_export_nor_the_report() -> None:
    """A lone surrogate (what a hostile echo's JSON ``\\udcff`` decodes to) would make
    protobuf refuse the whole batch and a UTF-8 stdout refuse the table."""
    from probe.report import render
    from probe.telemetry import Telemetry

    bad = "spiffe://evil/\udcff\x1b[2J"
    r = result("mesh", "a/x", Verdict.FAIL, evidence={"xfcc_trusted": bad})
    r = Result(**{**r.__dict__, "reason": f"wrong identity {bad}"})
    with otlp_receiver() as (url, got):
        t = Telemetry(export_timeout=2, otlp=False, span_exporter=_exporter(url))
        t.record([r])
        assert t.shutdown() is True
    assert len(got.spans) == 2
    attrs = Received().span_attrs(next(s for s in got.spans if s.name != "mtlsprobe.run"))
    assert attrs["mtlsprobe.reason"].startswith("wrong identity spiffe://evil/?")
    for fmt in ("table", "json", "jsonl", "junit"):
        render([r], fmt).encode("utf-8")  # writable to any UTF-8 stream
    assert "\\udcff" in render([r], "table") and ESC not in render([r], "table")


ESC = "\x1b"


def _exporter(url: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=2)


def test_each_result_keeps_the_probe_that_observed_it() -> None:
    """``mtlsprobe run`` from two source namespaces: every span names its own source,
    the target stays the planned one (destination lookups work), and the case name
    tells the two probes of one edge apart as the report does."""
    from dataclasses import replace

    from probe.results import Origin
    from probe.telemetry_attrs import check_labels, run_attributes, span_attributes

    target = Target("shop/echo", "echo.shop", 8080, Expect.STRICT, identity=ECHO_ID)
    base = result("mesh", "shop/echo", Verdict.PASS)
    here = replace(base, origin=Origin("mtlsprobe", SOURCE_ID, shown=True))
    there_id = "spiffe://cluster.local/ns/ns-b/sa/mtlsprobe"
    there = replace(base, origin=Origin("ns-b", there_id, shown=True))
    a, b = span_attributes(here, None, target), span_attributes(there, None, target)
    assert a["mtlsprobe.source.spiffe_id"] == SOURCE_ID
    assert a["mtlsprobe.source.namespace"] == "mtlsprobe"
    assert b["mtlsprobe.source.spiffe_id"] == there_id
    assert b["mtlsprobe.source.namespace"] == "ns-b"
    assert a["mtlsprobe.target"] == b["mtlsprobe.target"] == "shop/echo"
    assert a["mtlsprobe.destination.spiffe_id"] == ECHO_ID  # found by the planned name
    assert a["test.case.name"] == "mesh shop/echo (from mtlsprobe)"
    assert b["test.case.name"] == "mesh shop/echo (from ns-b)"
    # the probe's own certificate is about the probe: its own namespace
    own = replace(result("self", "source", Verdict.PASS), origin=Origin("ns-b", there_id))
    assert check_labels(own, None)["k8s.namespace.name"] == "ns-b"
    # the root names the source only when every result agrees on one
    assert run_attributes([here, base])["mtlsprobe.source.spiffe_id"] == SOURCE_ID
    assert "mtlsprobe.source.spiffe_id" not in run_attributes([here, there])
