"""Policy reports written to a cluster: against the fake API server serving the upstream
CRDs (tests/fakekube_reports.py: schema-validated create/update, optimistic concurrency,
pruning recorded). Create, update, prune when a namespace loses its targets, never touch
a report someone else owns, agents never overwrite each other, API failures are lines
not crashes; ``run --policy-reports`` and ``agent --policy-reports`` end to end; every
call is allowed by the opt-in RBAC component and nothing more is granted."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.launch.cluster import Cluster
from jobs.launch.policyreports import (
    GROUP_LABEL,
    OWNER_LABEL,
    REPORT_API_CALLS,
    ClusterReportApi,
    SyncResult,
    sync,
)
from jobs.plan.discovery import Options, Reader
from probe.results import Result, Verdict
from tests.agenthelp import plain_flags, running_agent, target, wait_for, write_targets
from tests.fakekube_jobs import JobKube
from tests.fakekube_reports import ReportKube, validate
from tests.runcase import Env, echo_cluster, run
from tests.sidecar_standin import Agent
from tests.signkeys import write_key_pair
from tests.tlsservers import plaintext_http, serving

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "compliance-example.yaml"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def kube() -> Iterator[ReportKube]:
    with ReportKube() as k:
        yield k


def _api(kube: ReportKube) -> ClusterReportApi:
    return ClusterReportApi(Cluster(Reader(kube.api_client(), Options(timeout=5.0))))


def _r(check: str, target: str, verdict: Verdict = Verdict.PASS) -> Result:
    return Result(check, target, verdict, f"{check} said {verdict.value}")


def _calls(kube: ReportKube) -> set[tuple[str, str, str]]:
    out = set()
    for c in kube.calls:
        seg = [s for s in c.path.split("/") if s]
        named = len(seg) == 7  # /apis/g/v/namespaces/ns/plural/name
        verb = {
            "GET": "get" if named else "list",
            "POST": "create",
            "PUT": "update",
            "DELETE": "delete",
        }[c.method]
        out.add((verb, seg[1], seg[-2] if named else seg[-1]))
    return out


def test_create_update_prune_and_leave_others_alone(kube: ReportKube) -> None:
    api = _api(kube)
    # Someone else's report of the same name (no labels of ours) in ns-c.
    kube.add(
        {
            "apiVersion": "wgpolicyk8s.io/v1alpha2",
            "kind": "PolicyReport",
            "metadata": {"name": "mtlsprobe", "namespace": "ns-c"},
            "results": [],
        }
    )
    first = sync(
        api,
        [_r("plaintext", "ns-a/echo"), _r("mesh", "ns-b/api", Verdict.FAIL), _r("mesh", "ns-c/x")],
        kind="policyreport",
        owner="run",
    )
    assert sorted(first.created) == ["ns-a/mtlsprobe", "ns-b/mtlsprobe"]
    assert len(first.problems) == 1 and "already exists" in first.problems[0]
    stored = {o["metadata"]["namespace"]: o for o in kube.reports()}
    assert stored["ns-c"]["results"] == []  # not overwritten
    assert stored["ns-b"]["summary"]["fail"] == 1
    assert all(validate(o) == [] for o in stored.values())
    rv_a = stored["ns-a"]["metadata"]["resourceVersion"]

    second = sync(
        api, [_r("plaintext", "ns-a/echo", Verdict.ERROR)], kind="policyreport", owner="run"
    )
    assert second.updated == ["ns-a/mtlsprobe"] and second.deleted == ["ns-b/mtlsprobe"]
    assert second.problems == []
    stored = {o["metadata"]["namespace"]: o for o in kube.reports()}
    assert set(stored) == {"ns-a", "ns-c"}  # ns-b pruned; the foreign one stays
    assert stored["ns-a"]["metadata"]["resourceVersion"] != rv_a
    assert stored["ns-a"]["results"][0]["result"] == "error"
    assert kube.pruned == []  # nothing we wrote was dropped by the schema
    assert _calls(kube) <= {(v, g, p) for v, g, p, _ in REPORT_API_CALLS}


def test_a_narrower_run_prunes_only_inside_its_scope(kube: ReportKube) -> None:
    api = _api(kube)
    sync(api, [_r("mesh", "ns-a/x"), _r("mesh", "ns-b/y")], kind="policyreport", owner="run")
    # `run -n ns-a`: ns-a had no results this time (its targets are gone), ns-b was not asked.
    done = sync(api, [], kind="policyreport", owner="run", scope={"ns-a", "mtlsprobe"})
    assert done.deleted == ["ns-a/mtlsprobe"]
    assert [o["metadata"]["namespace"] for o in kube.reports()] == ["ns-b"]


def _plain_agent_round(
    api: ClusterReportApi, owner: str, live_owners: list[str] | None = None
) -> SyncResult:
    """The reports of one round of plain agent ``owner``: ns-a/echo's plaintext passed."""
    return sync(
        api,
        [_r("plaintext", "ns-a/echo")],
        kind="policyreport",
        owner=owner,
        group="agent-plain",
        live_owners=live_owners,
    )


def test_agents_keep_their_own_reports_and_prune_departed_peers(kube: ReportKube) -> None:
    api = _api(kube)
    sync(api, [_r("plaintext", "ns-a/echo")], kind="policyreport", owner="run")
    for me in ("agent-1", "agent-2", "agent-3"):
        _plain_agent_round(api, me)
    # A sidecar agent: another group, with peers of its own.
    sync(api, [_r("mesh", "ns-a/echo")], kind="policyreport", owner="side-1", group="agent-sidecar")
    names = sorted(o["metadata"]["name"] for o in kube.reports())
    assert names == [
        "mtlsprobe",
        "mtlsprobe-agent-1",
        "mtlsprobe-agent-2",
        "mtlsprobe-agent-3",
        "mtlsprobe-side-1",
    ]
    # agent-3's pod is gone: the next round of agent-1 (peers 1 and 2) prunes its report,
    # never the run's nor the sidecar group's.
    done = _plain_agent_round(api, "agent-1", live_owners=["agent-1", "agent-2"])
    assert done.deleted == ["ns-a/mtlsprobe-agent-3"] and done.updated == ["ns-a/mtlsprobe-agent-1"]
    owners = {o["metadata"]["labels"][OWNER_LABEL] for o in kube.reports()}
    assert owners == {"run", "agent-1", "agent-2", "side-1"}
    # Only the first live peer lists the group; the others list their own reports only.
    kube.calls.clear()
    _plain_agent_round(api, "agent-2", live_owners=["agent-1", "agent-2"])
    (listed,) = [c for c in kube.calls if c.method == "GET"]
    assert listed.query["labelSelector"].endswith(f"{OWNER_LABEL}=agent-2")


def test_openreports_kind(kube: ReportKube) -> None:
    done = sync(_api(kube), [_r("mesh", "ns-a/echo")], kind="openreports", owner="run")
    assert done.created == ["ns-a/mtlsprobe"]
    (obj,) = kube.reports("reports", "openreports.io")
    assert obj["kind"] == "Report" and obj["source"] == "mtlsprobe" and validate(obj) == []


def test_api_failures_are_lines_not_crashes(kube: ReportKube) -> None:
    kube.forbid("create", "policyreports", "wgpolicyk8s.io")
    done = sync(_api(kube), [_r("mesh", "ns-a/echo")], kind="policyreport", owner="run")
    assert done.created == [] and len(done.problems) == 1
    assert "forbidden" in done.problems[0].lower() and "\n" not in done.problems[0]
    kube.forbid("list", "policyreports", "wgpolicyk8s.io")
    done = sync(_api(kube), [_r("mesh", "ns-a/echo")], kind="policyreport", owner="run")
    assert len(done.problems) == 1 and "list" in done.problems[0]
    # No CRD installed at all (404 on the group): a line too.
    with ReportKube() as bare:
        bare.fail("/apis/wgpolicyk8s.io", 404, "the server could not find the requested resource")
        done = sync(_api(bare), [_r("mesh", "ns-a/echo")], kind="policyreport", owner="run")
        assert len(done.problems) == 1 and "404" in done.problems[0]


def test_a_slow_api_server_is_bounded(kube: ReportKube) -> None:
    import time

    kube.delay = 0.5  # unbounded, 20 creates would take over 10 s
    results = [_r("mesh", f"ns-{i}/x") for i in range(20)]
    started = time.monotonic()
    done = sync(_api(kube), results, kind="policyreport", owner="run", budget_s=1.0)
    assert time.monotonic() - started < 6.0
    assert 1 <= len(done.created) < 20
    assert done.problems == [f"stopped after 1s: {20 - len(done.created)} report(s) not written"]


# ---- end to end ----------------------------------------------------------------------------


@dataclass
class _RunReportKube(ReportKube, JobKube):
    """The Job controller and kubelet of JobKube plus the report CRDs."""

    def __enter__(self) -> _RunReportKube:
        self.start()
        return self


def test_run_writes_reports_with_service_and_pod(
    tmp_path: Path,
    echo_port: int,
    proxy: str,
    agent: Agent,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Also signs the run (``--attest``): subject = the API server and the run id."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from probe.attest import load_public_key, parse_envelope, verify

    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp_path / "k.pem", tmp_path / "pub.pem"
    write_key_pair(key, priv, pub)
    evidence = tmp_path / "run.intoto.json"
    kube = _RunReportKube(proxy=proxy, agent=agent.url)
    echo_cluster(kube, echo_port)
    with kube:
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        code, doc, err = run(
            Env(kube, cfg, echo_port, tmp_path),
            capsys,
            "--checks",
            "plaintext",
            "--deadline",
            "30",
            "--policy-reports",
            "--compliance",
            str(EXAMPLE),
            "--attest",
            str(priv),
            "--attest-out",
            str(evidence),
        )
        reports = kube.reports()
        pruned = list(kube.pruned)
        url = kube.url
    assert code == 0, err  # echo has no sidecar: plaintext accepted, as the plan expects
    assert "policyreport: 2 created" in err
    signed = verify(parse_envelope(evidence.read_bytes()), load_public_key(pub))
    (subject,) = signed.statement["subject"]
    run_id = subject["annotations"]["run"]
    assert subject["annotations"]["cluster"] == url and f"mtlsprobe run {run_id}" in err
    assert signed.predicate["report"] == doc
    names = {c["name"] for c in signed.predicate["configuration"]}
    assert {"targets:planned", "compliance:compliance-example.yaml", "mtlsprobe"} <= names
    by_ns = {r["metadata"]["namespace"]: r for r in reports}
    # Mesh-wide findings (no namespace in their target) go to the probe's namespace.
    assert set(by_ns) == {"ns-a", "mtlsprobe"}
    report = by_ns["ns-a"]
    assert {r["rule"] for r in report["results"]} == {"policy", "plaintext"}
    assert validate(report) == [] and pruned == []
    plaintext = [r for r in report["results"] if r["rule"] == "plaintext"]
    assert plaintext
    kinds = {ref["kind"]: ref["name"] for ref in plaintext[0]["resources"]}
    assert kinds == {"Service": "echo", "Pod": "echo-0"}
    assert "PCI DSS 4.0 4.2.1" in plaintext[0]["properties"]["controls"]


def test_agent_writes_its_reports_each_round(tmp_path: Path) -> None:
    with ReportKube() as kube, serving(plaintext_http) as leaky:
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        for name, group in (("gone", "agent-plain"), ("side", "agent-sidecar")):
            labels = {
                "app.kubernetes.io/managed-by": "mtlsprobe",
                "mtlsprobe.dev/report": "true",
                OWNER_LABEL: name,
                GROUP_LABEL: group,
            }
            kube.add(
                {
                    "apiVersion": "wgpolicyk8s.io/v1alpha2",
                    "kind": "PolicyReport",
                    "metadata": {
                        "name": f"mtlsprobe-{name}",
                        "namespace": "ns-b",
                        "labels": labels,
                    },
                }
            )
        f = write_targets(tmp_path / "t.yaml", [target("ns-b/leaky", [leaky.endpoint], "STRICT")])
        more = ["--agent-id", "a1", "--peers", "a1", "--kubeconfig", str(cfg)]
        more += ["--policy-reports", "--compliance", str(EXAMPLE)]
        with running_agent(*plain_flags(f, "0.3", "--timeout", "1", *more)) as built:
            wait_for(lambda: built.agent.state.rounds[0] >= 2, timeout=60, what="2 rounds")

            def written() -> list[dict[str, Any]]:
                return [o for o in kube.reports() if o["metadata"]["name"] == "mtlsprobe-a1"]

            wait_for(lambda: bool(written()), timeout=10, what="the agent's report")
        (report,) = written()
        names = {o["metadata"]["name"] for o in kube.reports()}
    assert "mtlsprobe-gone" not in names  # its agent is not among the (plain) peers
    assert "mtlsprobe-side" in names  # another group: the plain agents' peers say nothing
    assert validate(report) == []
    verdicts = {(r["rule"], r["result"]) for r in report["results"]}
    assert ("plaintext", "fail") in verdicts  # the STRICT port answered plaintext
    assert all(
        "SOC 2 CC6.7" in r["properties"]["controls"]
        for r in report["results"]
        if r["rule"] == "plaintext"
    )


# ---- the RBAC component ----------------------------------------------------------------------

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl (for `kubectl kustomize`) is not installed: manifests NOT verified",
)


@needs_kubectl
def test_rbac_component_allows_exactly_the_report_calls() -> None:
    from tests.k8srender import allowed, render, rules_by_subject

    objs = render("overlays/evidence")
    subjects = rules_by_subject(objs)
    for sa in ("mtlsprobe-orchestrator", "mtlsprobe-agent"):
        for verb, group, plural, _ in REPORT_API_CALLS:
            assert allowed(subjects[sa], verb, group, plural, "tenant-ns", None), (sa, verb, plural)
    (role,) = [
        o
        for o in objs
        if o["metadata"]["name"] == "mtlsprobe-policy-reports" and o["kind"] == "ClusterRole"
    ]
    granted = {
        (v, g, r)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert granted == {(v, g, p) for v, g, p, _ in REPORT_API_CALLS}
    for o in objs:  # still no Secret access anywhere, and no wildcard
        for rule in o.get("rules") or []:
            assert "secrets" not in rule["resources"] and "*" not in rule["verbs"]
    # Without the component, the continuous overlay grants no report writes.
    plain = rules_by_subject(render("overlays/continuous"))
    assert not allowed(
        plain["mtlsprobe-agent"], "create", "wgpolicyk8s.io", "policyreports", "tenant-ns", None
    )


@needs_kubectl
def test_evidence_overlay_commands_parse_and_mount_the_key_from_a_secret() -> None:
    from jobs.cli.main import build_parser
    from tests.k8srender import pod_spec, render

    objs = render("overlays/evidence")
    seen = {}
    for o in objs:
        if o["kind"] not in ("CronJob", "DaemonSet"):
            continue
        args = [str(a) for a in pod_spec(o)["containers"][0]["args"]]
        ns = build_parser(args).parse_args(args)
        assert ns.policy_reports, o["metadata"]["name"]
        seen[o["kind"]] = (ns, pod_spec(o))
    ns, spec = seen["CronJob"]
    assert str(ns.attest) == "/etc/mtlsprobe/attest/key.pem" and ns.attest_out == "-"
    (vol,) = [v for v in spec["volumes"] if v["name"] == "attest-key"]
    assert vol["secret"]["secretName"] == "mtlsprobe-attest-key"
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    mount = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "attest-key"]
    assert mount and mount[0]["readOnly"] is True
    assert json.dumps(spec).count("attest-key") >= 2
