"""Scenario files and the judging of results against them (pure, no Envoy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.lab.scenarios import (
    BUILTIN,
    Expectation,
    Scenario,
    ScenarioError,
    builtin,
    from_files,
    generated,
    judge,
)
from probe.results import Result, Verdict


def _r(check: str, target: str, verdict: Verdict, endpoint: str | None = None) -> Result:
    return Result(check=check, target=target, verdict=verdict, reason="r", endpoint=endpoint)


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_scenarios_load_with_their_lab_document(name: str) -> None:
    s = builtin(name)
    assert s.judged and s.name == name and s.title and s.demonstrates
    kinds = {d["kind"] for d in s.documents}
    assert "LabScenario" not in kinds
    assert {"Namespace", "Deployment", "Service", "PeerAuthentication"} <= kinds


def test_unknown_builtin_is_a_one_line_error() -> None:
    with pytest.raises(ScenarioError, match="unknown scenario 'nope'"):
        builtin("nope")


def test_user_files_merge_and_need_no_lab_document(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n")
    b = tmp_path / "b.yaml"
    b.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: v1, kind: Namespace, metadata: {name: y}}\n"
    )
    s = from_files([a, b])
    assert not s.judged
    assert [d["metadata"]["name"] for d in s.documents] == ["x", "y"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1, 2\n", "invalid YAML at line"),
        ("- 1\n- 2\n", "not a mapping"),
        ("", "no Kubernetes objects"),
        (
            "kind: LabScenario\nspec: {expect: [{check: mesh, target: t, verdict: maybe}]}\n---\n"
            "kind: Namespace\n",
            "verdict must be",
        ),
        ("kind: LabScenario\nspec: {require: [everything]}\n---\nkind: Namespace\n", "require"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ScenarioError, match=message) as info:
        from_files([f])
    assert "\n" not in str(info.value) and str(f) in str(info.value)


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        from_files([tmp_path / "absent.yaml"])


def _scenario(*expect: Expectation) -> Scenario:
    return Scenario(name="s", documents=(), origin="test", expect=expect, judged=True)


def test_judge_unlisted_results_must_pass_or_skip() -> None:
    s = _scenario()
    assert judge(s, [_r("mesh", "a", Verdict.PASS), _r("self", "source", Verdict.SKIP)]) == []
    bad = judge(s, [_r("mesh", "a", Verdict.ERROR)])
    assert [(m.check, m.expected, m.got) for m in bad] == [("mesh", "pass", "error")]


def test_judge_listed_results_must_match_and_every_expectation_must_be_met() -> None:
    s = _scenario(
        Expectation("plaintext", "ns/a:80", Verdict.FAIL),
        Expectation("mesh", "ns/gone:80", Verdict.FAIL),
    )
    results = [
        _r("plaintext", "ns/a:80", Verdict.FAIL, "1.2.3.4:80"),
        _r("plaintext", "ns/a:80", Verdict.PASS, "1.2.3.5:80"),
    ]
    got = {(m.check, m.target, m.endpoint, m.got) for m in judge(s, results)}
    assert got == {
        ("plaintext", "ns/a:80", "1.2.3.5:80", "pass"),
        ("mesh", "ns/gone:80", None, "no such result"),
    }


def test_generated_mesh_has_n_workloads_over_namespaces() -> None:
    s = generated(120, per_namespace=50)
    deployments = [d for d in s.documents if d["kind"] == "Deployment"]
    namespaces = {d["metadata"]["name"] for d in s.documents if d["kind"] == "Namespace"}
    assert len(deployments) == 120 and len(namespaces) == 3


def test_network_reset_annotation_is_validated() -> None:
    from jobs.lab.build import NETWORK, _lab_annotations

    assert _lab_annotations("pod n/p", {NETWORK: "reset"}) == {NETWORK: "reset"}
    with pytest.raises(ScenarioError, match=r"pod n/p: lab.mtlsprobe.dev/network: 'drop'"):
        _lab_annotations("pod n/p", {NETWORK: "drop"})
