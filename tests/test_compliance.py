"""``--compliance FILE``: the mapping loads bounded and strict (a typo is an error, not a
control silently backed by nothing), the control IDs ride along in JSON, JSON lines and
JUnit, and a control's status is the worst verdict of its checks (an error is not a
pass; no result at all is ``none``, not a pass). Without the flag the JSON contract is
unchanged."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from jobs.cli import main as cli
from jobs.plan.planner import CHECK_POLICY, CHECK_REQUIRE
from probe.checks import REGISTRY
from probe.compliance import (
    KNOWN_CHECKS,
    PLAN_CHECKS,
    ComplianceFileError,
    load_controls,
    parse_controls,
)
from probe.report import render
from probe.results import CONTRACT_KEYS, Result, Verdict

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "compliance-example.yaml"


def test_the_example_loads_is_marked_and_names_only_real_checks() -> None:
    text = EXAMPLE.read_text()
    assert text.startswith("# EXAMPLE") and "NOT AUDIT ADVICE" in text
    m = load_controls(EXAMPLE)
    assert m.name is not None and "EXAMPLE" in m.name
    labels = {c.label for c in m.controls}
    assert {"PCI DSS 4.0 4.2.1", "NIST SP 800-53 Rev. 5 SC-8(1)", "SOC 2 CC6.7"} <= labels
    for c in m.controls:
        assert set(c.checks) <= set(KNOWN_CHECKS)


def test_plan_check_names_agree_with_the_planner() -> None:
    assert set(PLAN_CHECKS) == {CHECK_POLICY, *CHECK_REQUIRE.values()}
    assert set(KNOWN_CHECKS) == set(REGISTRY) | set(PLAN_CHECKS)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "expected a mapping"),
        ({"controls": []}, "non-empty list"),
        ({"controls": [{"framework": "F", "id": "1", "checks": ["plaintxt"]}]}, "unknown check"),
        ({"controls": [{"framework": "F", "id": 4.2, "checks": ["mesh"]}]}, "quote it"),
        ({"controls": [{"framework": "F", "id": "1", "checks": "mesh"}]}, "list of check"),
        ({"controls": [{"framework": "F", "id": "1", "checks": ["mesh"], "x": 1}]}, "unknown key"),
        ({"controls": [{"framework": "F\nG", "id": "1", "checks": ["mesh"]}]}, "one line"),
        ({"ctrls": []}, "unknown key"),
        (
            {"controls": [{"framework": "F", "id": "1", "checks": ["mesh"]}] * 2},
            "listed twice",
        ),
    ],
)
def test_bad_mappings_are_one_line_errors(doc: object, message: str) -> None:
    with pytest.raises(ComplianceFileError, match=message) as exc:
        parse_controls(doc, "m.yaml")
    assert "\n" not in str(exc.value) and str(exc.value).startswith("compliance file m.yaml")


def test_hostile_files_are_refused_bounded(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 30)]
    bomb.write_text("\n".join(lines) + "\ncontrols: *a29\n")
    with pytest.raises(ComplianceFileError, match="alias"):
        load_controls(bomb)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20))
    with pytest.raises(ComplianceFileError, match="larger than"):
        load_controls(big)
    with pytest.raises(ComplianceFileError, match="cannot read"):
        load_controls(tmp_path / "missing.yaml")


def test_status_is_the_worst_verdict_and_none_without_evidence() -> None:
    m = parse_controls(
        {
            "controls": [
                {"framework": "F", "id": "ok", "checks": ["plaintext"]},
                {"framework": "F", "id": "err", "checks": ["plaintext", "mesh"]},
                {"framework": "F", "id": "bad", "checks": ["mesh", "peer-cert"]},
                {"framework": "F", "id": "void", "checks": ["self"]},
            ]
        },
        "m",
    )
    results = [
        Result("plaintext", "ns/a", Verdict.PASS, "r"),
        Result("mesh", "ns/a", Verdict.ERROR, "timed out"),
        Result("peer-cert", "ns/a", Verdict.FAIL, "expired"),
        Result("peer-cert", "ns/b", Verdict.PASS, "ok"),
    ]
    status = {c["id"]: c["status"] for c in m.status(results)}
    assert status == {"ok": "pass", "err": "error", "bad": "fail", "void": "none"}


def test_ids_ride_along_in_json_jsonl_and_junit() -> None:
    m = load_controls(EXAMPLE)
    results = [
        Result("plaintext", "ns/a", Verdict.PASS, "r", endpoint="1.2.3.4:80"),
        Result("self", "ns/a", Verdict.SKIP, "no admin"),
    ]
    doc = json.loads(render(results, "json", controls=m))
    assert "SOC 2 CC6.7" in doc["results"][0]["controls"]
    assert doc["results"][1]["controls"] == m.labels("self")
    assert {c["label"] for c in doc["compliance"]["controls"]} == {c.label for c in m.controls}
    lines = [json.loads(x) for x in render(results, "jsonl", controls=m).splitlines()]
    assert lines == doc["results"]
    xml = render(results, "junit", controls=m)
    assert '<property name="control" value="PCI DSS 4.0 4.2.1"' in xml
    # Without a mapping: the contract, unchanged.
    plain = json.loads(render(results, "json"))
    assert list(plain) == ["results", "summary"]
    assert list(plain["results"][0]) == list(CONTRACT_KEYS)


def test_cli_bad_mapping_is_exit_64_before_probing(tmp_path: Path) -> None:
    targets = tmp_path / "t.yaml"
    targets.write_text(
        yaml.safe_dump(
            {
                "trustDomain": "cluster.local",
                "targets": [{"name": "ns/x", "host": "127.0.0.1", "port": 1, "expect": "STRICT"}],
            }
        )
    )
    bad = tmp_path / "m.yaml"
    bad.write_text("controls:\n  - {framework: F, id: '1', checks: [plaintxt]}\n")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check", "-f", str(targets), "--compliance", str(bad)])
    assert code == 64
    assert out.getvalue() == ""
    assert err.getvalue().count("\n") == 1 and "unknown check 'plaintxt'" in err.getvalue()
