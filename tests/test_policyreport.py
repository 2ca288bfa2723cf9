"""``-o policyreport``: the objects validate against the upstream CRD schemas (vendored,
tests/data/crds) with nothing a structural schema would prune, one report per target
namespace, every verdict mapped to itself (an error never becomes a pass), evidence as
bounded strings, and large or hostile input stays a valid, bounded object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jobs.cli import main as cli
from probe.compliance import load_controls
from probe.policyreport import KINDS, MAX_RESULTS, build_reports, render_reports
from probe.results import Result, Verdict
from tests.fakekube_reports import validate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "compliance-example.yaml"

SAMPLE = [
    Result(
        "plaintext",
        "ns-a/echo",
        Verdict.PASS,
        "connection reset after request, no HTTP response",
        endpoint="10.0.0.1:8080",
        expected="refused",
        observed="refused",
        end_ns=1_700_000_000_000_000_000,
    ),
    Result(
        "peer-cert",
        "ns-a/echo",
        Verdict.FAIL,
        "URI SAN is not the pod's identity",
        endpoint="10.0.0.1:8080",
        evidence={"uri_sans": ["spiffe://x/ns/a/sa/b"], "not_after": "2030-01-01T00:00:00Z"},
    ),
    Result("mesh", "ns-b/api", Verdict.ERROR, "timed out", evidence={"error": "timeout"}),
    Result("xfcc-spoof", "ns-b/api", Verdict.SKIP, "target does not reflect headers"),
    Result("policy", "default-svc", Verdict.FAIL, "no namespace in the name"),
]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_objects_validate_against_the_crd_and_nothing_is_pruned(kind: str) -> None:
    controls = load_controls(EXAMPLE)
    objs = build_reports(SAMPLE, kind=kind, controls=controls, now_s=1_700_000_123)
    assert [o["metadata"]["namespace"] for o in objs] == ["mtlsprobe", "ns-a", "ns-b"]
    for o in objs:
        assert o["apiVersion"] == KINDS[kind].api_version and o["kind"] == KINDS[kind].kind
        assert validate(o) == [], o["metadata"]["namespace"]
        assert o["metadata"]["name"] == "mtlsprobe"
        assert o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mtlsprobe"
        for r in o["results"]:
            assert r["policy"] == "mtlsprobe" and r["source"] == "mtlsprobe"
            assert all(isinstance(v, str) for v in r["properties"].values())
    ns_a = objs[1]
    assert ns_a["summary"] == {"pass": 1, "fail": 1, "warn": 0, "error": 0, "skip": 0}
    passed, failed = ns_a["results"]
    assert (passed["rule"], passed["result"]) == ("plaintext", "pass")
    assert passed["timestamp"] == {"seconds": 1_700_000_000, "nanos": 0}
    assert passed["resources"] == [
        {"apiVersion": "v1", "kind": "Service", "namespace": "ns-a", "name": "echo"}
    ]
    assert passed["properties"]["endpoint"] == "10.0.0.1:8080"
    assert passed["properties"]["observed"] == "refused"
    assert "PCI DSS 4.0 4.2.1" in passed["properties"]["controls"]
    assert failed["severity"] == "high"
    assert failed["message"] == "URI SAN is not the pod's identity"
    assert json.loads(failed["properties"]["evidence.uri_sans"]) == ["spiffe://x/ns/a/sa/b"]
    assert failed["timestamp"]["seconds"] == 1_700_000_123  # no end time: the render time


def test_every_verdict_maps_to_itself_error_is_never_a_pass() -> None:
    for v in Verdict:
        (obj,) = build_reports([Result("mesh", "ns/x", v, "why")])
        assert obj["results"][0]["result"] == v.value
        assert obj["summary"][v.value] == 1
        assert sum(obj["summary"].values()) == 1


def test_cli_prints_a_yaml_stream_kubectl_can_apply(tmp_path: Path) -> None:
    targets = tmp_path / "t.yaml"
    targets.write_text(
        yaml.safe_dump(
            {
                "trustDomain": "cluster.local",
                "targets": [
                    {
                        "name": "ns-a/echo",
                        "host": "127.0.0.1",
                        "port": 1,
                        "endpoints": ["127.0.0.1:1"],  # nothing listens: error, not pass
                        "expect": "STRICT",
                    }
                ],
            }
        )
    )
    for extra, kind in (([], "policyreport"), (["--openreports"], "openreports")):
        out = tmp_path / "out.txt"
        code = _check(targets, out, "-o", "policyreport", "--checks", "plaintext", *extra)
        assert code == 2
        docs = list(yaml.safe_load_all(out.read_text()))
        assert len(docs) == 1 and docs[0]["kind"] == KINDS[kind].kind
        assert validate(docs[0]) == []
        assert docs[0]["results"][0]["result"] == "error"
        assert docs[0]["results"][0]["properties"]["evidence.error"] == "nothing-listening"


def _check(targets: Path, out: Path, *args: str) -> int:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main(["check", "-f", str(targets), "--timeout", "2", *args])
    out.write_text(buf.getvalue())
    return code


def test_large_namespaces_stay_bounded_fails_first() -> None:
    huge = "x" * 100_000
    results = [
        Result(
            "plaintext",
            "ns/svc",
            Verdict.PASS,
            "ok " * 5000,
            endpoint=f"10.0.{i // 250}.{i % 250}:80",
            evidence={"blob": huge, "nested": {"a": [1, 2, {"b": huge}]}},
        )
        for i in range(MAX_RESULTS + 500)
    ]
    results.append(Result("peer-cert", "ns/svc", Verdict.FAIL, "expired", endpoint="10.9.9.9:80"))
    results.append(Result("mesh", "ns/svc", Verdict.ERROR, "timeout"))
    (obj,) = build_reports(results)
    kept = len(obj["results"])
    assert 100 < kept <= MAX_RESULTS
    verdicts = {r["result"] for r in obj["results"]}
    assert {"fail", "error", "pass"} <= verdicts  # the fail and the error are never dropped
    assert obj["summary"]["pass"] == MAX_RESULTS + 500  # the summary counts everything
    dropped = obj["metadata"]["annotations"]["mtlsprobe.dev/dropped-results"]
    assert int(dropped) == MAX_RESULTS + 502 - kept
    size = len(json.dumps(obj))
    assert size < 1_500_000, size  # etcd's default request limit is 1.5 MiB
    assert validate(obj) == []


def test_hostile_text_stays_valid_yaml_and_valid_objects() -> None:
    # What a server controls (status lines, SANs) trying to end the document and start
    # another object in the stream `kubectl apply -f -` reads.
    weird = "a\x00b\x1b[31mred\u2028line\ud800lone: {x}\n- y\n---\nkind: ClusterRoleBinding\n..."
    results = [
        Result(
            "mesh",
            f"ns-q/{weird}",
            Verdict.FAIL,
            weird,
            endpoint=weird,
            evidence={weird: weird, "n": None, "b": True, "f": 1.5},
        )
    ]
    text = render_reports(results)
    docs = list(yaml.safe_load_all(text))
    assert len(docs) == 1
    assert validate(docs[0]) == []
    props = docs[0]["results"][0]["properties"]
    assert props["evidence.n"] == "null" and props["evidence.b"] == "true"
    # The target name is no DNS name: no resource reference is invented from it.
    assert "resources" not in docs[0]["results"][0]
    text.encode("utf-8")  # strict UTF-8: no lone surrogate made it out


def test_one_result_with_endless_evidence_stays_small_and_is_kept() -> None:
    evidence = {f"k{i:05d}": "v" * 5000 for i in range(10_000)}
    (obj,) = build_reports([Result("peer-cert", "ns/svc", Verdict.FAIL, "x", evidence=evidence)])
    (r,) = obj["results"]
    assert r["properties"]["evidence.omitted"] == f"{10_000 - 32} more evidence fields"
    assert len(json.dumps(r)) < 40_000
    assert validate(obj) == []


def test_many_small_results_stop_at_the_count() -> None:
    results = [Result("plaintext", "ns/svc", Verdict.PASS, "ok") for _ in range(MAX_RESULTS + 7)]
    (obj,) = build_reports(results)
    assert len(obj["results"]) == MAX_RESULTS
    assert obj["metadata"]["annotations"]["mtlsprobe.dev/dropped-results"] == "7"


def test_no_results_no_reports() -> None:
    assert build_reports([]) == []
    assert render_reports([]) == ""
