"""``mtlsprobe run`` with AuthorizationPolicy cases (#13 item 3), on the fake API server
with the simulated Job controller and kubelet (tests/fakekube_jobs.py): the sidecar probe
Job runs ``authz`` for its own identity, ``--impersonate ns/sa`` adds authz-only Jobs as
that service account with no API token, and a case whose source no probe holds is
reported as not probed, naming the identity.

The sidecar pods here have no Envoy admin, so the real probe cannot read its own identity
and reports each of its cases as ``error`` naming why: that is what lets the tests see
which pod was handed which cases (every case result carries its ``source``)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from jobs.launch.jobspec import LABEL_ROLE
from tests import kubebuild as kb
from tests.fakekube import Resource
from tests.runcase import Env, probe_results, run

pytestmark = pytest.mark.timeout(120)

TD = "cluster.local"
PROBE = f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe"
FRONTEND = f"spiffe://{TD}/ns/ns-a/sa/frontend"
TARGET = "ns-a/api:80"


def policy_cluster(env: Env) -> None:
    """ns-a/api: an echo responder with a sidecar, and an AuthorizationPolicy allowing
    GET /api/* to ns-a's ``frontend`` service account only."""
    env.kube.serve(
        Resource(
            "security.istio.io",
            ("v1", "v1beta1"),
            "authorizationpolicies",
            "AuthorizationPolicy",
        )
    )
    labels = {"app": "api", "app.kubernetes.io/name": "mtlsprobe-echo"}
    # Nothing listens at 127.0.0.9: the sidecar-less checks of this pod fail fast.
    env.kube.add_all(
        [
            kb.service("api", "ns-a", {"app": "api"}, [kb.sport(80, 8080)]),
            kb.pod("api-0", "ns-a", labels, ip="127.0.0.9", sa="api", ports=[("http", 8080)]),
            kb.endpoint_slice(
                "api-x", "ns-a", "api", [("127.0.0.9", "api-0", True)], [("http", 8080)]
            ),
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": "api-frontend", "namespace": "ns-a"},
                "spec": {
                    "selector": {"matchLabels": {"app": "api"}},
                    "action": "ALLOW",
                    "rules": [
                        {
                            "from": [{"source": {"principals": [f"{TD}/ns/ns-a/sa/frontend"]}}],
                            "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"]}}],
                        }
                    ],
                },
            },
        ]
    )


CONFIGMAPS: dict[tuple[str, str], dict[str, Any]] = {}


def spy_jobs(env: Env) -> list[dict[str, Any]]:
    """The Jobs as created; the run's ConfigMaps as they were when each Job started
    (``CONFIGMAPS``, by namespace and name: the run deletes them at its end)."""
    seen: list[dict[str, Any]] = []
    original = env.kube.behaviour
    CONFIGMAPS.clear()

    def spy(job: dict[str, Any], index: int) -> str:
        seen.append(job)
        for cm in env.kube.objects("configmaps"):
            md = cm["metadata"]
            CONFIGMAPS[(md["namespace"], md["name"])] = cm
        return original(job, index)

    env.kube.behaviour = spy
    return seen


def targets_written(ns: str, name: str) -> dict[str, Any]:
    """The targets file the run wrote into ConfigMap ns/name."""
    cm = CONFIGMAPS.get((ns, name))
    assert cm is not None, f"no ConfigMap {ns}/{name} created"
    return yaml.safe_load(cm["data"]["targets.yaml"])  # type: ignore[no-any-return]


def authz_of(doc: Any) -> list[dict[str, Any]]:
    return [r for r in probe_results(doc) if r["check"] == "authz"]


def test_authz_runs_in_the_sidecar_job_and_unheld_identities_are_reported(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    policy_cluster(env)
    jobs = spy_jobs(env)
    code, doc, err = run(env, capsys, "--deadline", "60")
    assert doc is not None, err
    # authz joined the default checks (the plan has cases), in the sidecar Job only.
    by_role = {j["metadata"]["labels"][LABEL_ROLE]: j for j in jobs}
    assert set(by_role) == {"sidecar", "plain"}
    args = by_role["sidecar"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "authz" in args[args.index("--checks") + 1].split(",")
    args = by_role["plain"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "authz" not in args[args.index("--checks") + 1].split(",")
    results = authz_of(doc)
    sources = {r["source"] for r in results}
    assert sources == {PROBE, FRONTEND}, results
    # The sidecar pod was handed its own cases only, and reported each of them.
    mine = [r for r in results if r["source"] == PROBE]
    assert mine and all(r["evidence"].get("probeJob", "").endswith("-sidecar") for r in mine)
    assert all(r["verdict"] == "error" for r in mine), mine  # no admin: identity unknown
    assert all("identity" in r["reason"] for r in mine), mine
    # The policy's principal: no probe holds it, so each case is a skip naming it.
    theirs = [r for r in results if r["source"] == FRONTEND]
    assert theirs and all(r["verdict"] == "skip" for r in theirs), theirs
    for r in theirs:
        assert FRONTEND in r["reason"] and "--impersonate ns-a/frontend" in r["reason"]
        assert r["target"] == TARGET and r["request"] and r["expected"] in ("allow", "deny")
    assert any(r["expected"] == "allow" for r in theirs)  # the allow nobody proved
    assert code in (1, 2)  # errors (and the sidecar-less checks' findings): never 0
    assert env.kube.run_objects() == []


def test_impersonated_job_runs_as_the_account_without_a_token(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    policy_cluster(env)
    jobs = spy_jobs(env)
    code, doc, err = run(
        env, capsys, "--checks", "authz", "--impersonate", "ns-a/frontend", "--deadline", "60"
    )
    assert doc is not None, err
    (imp,) = [j for j in jobs if j["metadata"]["namespace"] == "ns-a"]
    run_id = imp["metadata"]["labels"]["mtlsprobe.dev/run-id"]
    assert imp["metadata"]["name"] == f"mtlsprobe-{run_id}-as-0"
    pod = imp["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "frontend"
    assert pod["automountServiceAccountToken"] is False
    assert imp["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
    (c,) = pod["containers"]
    assert c["args"][c["args"].index("--checks") + 1] == "authz"
    cm = f"mtlsprobe-{run_id}-as-0"
    assert imp["metadata"]["ownerReferences"][0]["name"] == cm
    assert any(v.get("configMap", {}).get("name") == cm for v in pod["volumes"])
    # Its targets file: its own identity, its own cases only.
    tf = targets_written("ns-a", cm)
    assert tf["source"]["identity"] == FRONTEND
    cases = [case for t in tf["targets"] for case in t.get("authz") or []]
    assert cases and {case["source"] for case in cases} == {FRONTEND}
    assert any(case["expect"] == "allow" for case in cases)
    # ... and the run's own probe got only its own.
    own = targets_written("mtlsprobe", f"mtlsprobe-{run_id}")
    assert {case["source"] for t in own["targets"] for case in t.get("authz") or []} == {PROBE}
    # Both identities' cases came back, each from its own pod: nothing is "not probed".
    results = authz_of(doc)
    assert {r["source"] for r in results} == {PROBE, FRONTEND}
    for r in results:
        job = r["evidence"].get("probeJob", "")
        assert job.endswith("-as-0" if r["source"] == FRONTEND else "-sidecar"), r
        assert r["verdict"] == "error" and "notProbed" not in r["evidence"], r
    assert code == 2
    # Cleanup took the Job and ConfigMap in ns-a too.
    assert env.kube.run_objects() == []
    deleted = {c.path for c in env.kube.calls if c.method == "DELETE"}
    assert f"/apis/batch/v1/namespaces/ns-a/jobs/mtlsprobe-{run_id}-as-0" in deleted
    assert f"/api/v1/namespaces/ns-a/configmaps/{cm}" in deleted


def test_impersonated_identity_with_no_case_starts_no_pod(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """No AuthorizationPolicy at all: no case for anyone, so no impersonated pod; the
    report says so instead of staying silent."""
    jobs = spy_jobs(env)
    code, doc, err = run(
        env, capsys, "--checks", "authz", "--impersonate", "ns-a/frontend", "--deadline", "60"
    )
    assert doc is not None, err
    assert not [j for j in jobs if j["metadata"]["namespace"] == "ns-a"]
    (r,) = authz_of(doc)
    assert r["verdict"] == "skip" and "ns-a/frontend" in r["reason"] and "no pod" in r["reason"]
    assert r["source"] == FRONTEND
    assert env.kube.run_objects() == []
    assert code == 0


@pytest.mark.parametrize(
    "value",
    [
        "ns-a",
        "ns-a/",
        "/frontend",
        "NS-A/frontend",
        "ns-a/front_end",
        "ns-a/frontend/x",
        "ns-a/-frontend",
        "a" * 64 + "/frontend",
        "ns-a/frontend,bad",
        "ns-a/\x1b[2Jx",
    ],
)
def test_bad_impersonate_is_one_line_exit_64(
    env: Env, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, doc, err = run(env, capsys, "--impersonate", value)
    assert code == 64 and doc is None
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--impersonate" in lines[0], err
    assert "\x1b" not in err
    assert env.kube.run_objects() == []
    assert not [c for c in env.kube.calls if c.method == "POST"]


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (("--checks", "mesh"), "add authz to --checks"),
        (("--impersonate", "mtlsprobe/mtlsprobe"), "already holds it"),
    ],
)
def test_impersonate_contradictions_are_usage_errors(
    env: Env, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], why: str
) -> None:
    args = extra if extra[0] == "--impersonate" else (*extra, "--impersonate", "ns-a/frontend")
    code, _doc, err = run(env, capsys, *args)
    assert code == 64 and why in err and len(err.strip().splitlines()) == 1, err


def test_a_pod_whose_sidecar_holds_another_identity_never_passes(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """The liar: every sidecar here holds the run's own identity, the impersonated pod's
    too (as if Istio had not issued it the ``frontend`` certificate). The impersonated
    pod must not run ``frontend``'s cases as someone else: each is an error naming both
    identities, never a pass. The run's own pod does make its calls."""
    from probe.pki import CertificateAuthority
    from tests.sidecar_standin import DUMP, admin_handler, dump_doc, http_server

    policy_cluster(env)
    ca = CertificateAuthority.create_root(TD, key_type="ec")
    routes = {DUMP: dump_doc(ca.issue_workload(PROBE), ca.root_pem())}
    with http_server(admin_handler(routes)) as admin:
        env.kube.admin = admin
        code, doc, err = run(
            env, capsys, "--checks", "authz", "--impersonate", "ns-a/frontend", "--deadline", "60"
        )
    assert doc is not None, err
    results = authz_of(doc)
    theirs = [r for r in results if r["source"] == FRONTEND]
    assert theirs, results
    for r in theirs:
        assert r["verdict"] == "error", r
        assert PROBE in r["reason"] and FRONTEND in r["reason"], r
    mine = [r for r in results if r["source"] == PROBE]
    assert mine and not any("own identity" in r["reason"] for r in mine), mine
    # The run's own pod made its calls: the stand-in sidecar enforces nothing, so what
    # the policy denies came back reflected: a fail, never a pass.
    assert any(r["verdict"] == "fail" and "reflected" in r["reason"] for r in mine), mine
    assert not any(r["verdict"] == "pass" and r["expected"] == "deny" for r in mine), mine
    assert code != 0
    assert env.kube.run_objects() == []


def test_each_source_namespace_probe_gets_its_own_cases_and_a_dead_pod_owes_each(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """One sidecar Job per source namespace, each with its own identity's cases. ns-b has
    no istio-ca-root-cert, so its pod never starts: each case it owed is an error naming
    ns-b's identity and request, not one error per target without a source."""
    policy_cluster(env)
    jobs = spy_jobs(env)
    env.kube.active_deadline = lambda job: 4.0 if job["metadata"]["namespace"] == "ns-b" else None
    nsb = f"spiffe://{TD}/ns/ns-b/sa/mtlsprobe"
    code, doc, err = run(
        env, capsys, "--checks", "authz", "--source-namespaces", "ns-b", "--deadline", "120"
    )
    assert doc is not None, err
    assert {j["metadata"]["namespace"] for j in jobs} == {"mtlsprobe", "ns-b"}
    run_id = jobs[0]["metadata"]["labels"]["mtlsprobe.dev/run-id"]
    for ns, me in (("mtlsprobe", PROBE), ("ns-b", nsb)):
        tf = targets_written(ns, f"mtlsprobe-{run_id}")
        assert tf["source"]["identity"] == me
        assert {c["source"] for t in tf["targets"] for c in t.get("authz") or []} == {me}
    results = authz_of(doc)
    dead = [r for r in results if r["source"] == nsb]
    owed = [
        c
        for t in targets_written("ns-b", f"mtlsprobe-{run_id}")["targets"]
        for c in t.get("authz") or []
    ]
    assert len(dead) == len(owed) > 1
    assert {r["request"] for r in dead} == {f"{c['method']} {c['path']}" for c in owed}
    for r in dead:
        assert r["verdict"] == "error" and "ContainerCreating" in r["reason"], r
        assert r["expected"] in ("allow", "deny")
    assert {r["source"] for r in results} == {PROBE, nsb, FRONTEND}  # frontend: not probed
    assert code == 2
    assert env.kube.run_objects() == []


def test_a_case_the_pod_left_out_is_an_error_not_silence() -> None:
    """The pod log's keys are per target; a case is per (source, request). A pod that
    reported one of a target's cases and not the other owes the other: ``error``."""
    from jobs.launch.jobspec import RUN_ROLES
    from jobs.launch.launcher import Unit, per_case
    from probe.authzmodel import AuthzCase, AuthzExpect
    from probe.checks.base import Scope
    from probe.model import Expect, Protocol, Source, Target, TargetsFile
    from probe.results import Result, Verdict

    cases = (
        AuthzCase(PROBE, AuthzExpect.ALLOW, "ns-a/allow-get", "GET", "/api/x"),
        AuthzCase(PROBE, AuthzExpect.DENY, "ns-a/allow-get", "POST", "/api/x"),
    )
    target = Target(
        name=TARGET,
        host="api.ns-a.svc.cluster.local",
        port=80,
        protocol=Protocol.HTTP,
        expect=Expect.STRICT,
        identity=f"spiffe://{TD}/ns/ns-a/sa/api",
        authz=cases,
    )
    part = TargetsFile(trust_domain=TD, targets=(target,), source=Source(identity=PROBE))
    sidecar = next(r for r in RUN_ROLES if r.sidecar)
    unit = Unit("mtlsprobe", sidecar, (("authz", Scope.CASE),), (part,), "job")
    got = Result(
        "authz",
        TARGET,
        Verdict.PASS,
        "allowed",
        expected="allow",
        observed="allow",
        source=PROBE,
        request="GET /api/x",
    )
    out = per_case(unit, 0, [got])
    assert [r.verdict for r in out] == [Verdict.PASS, Verdict.ERROR]
    left = out[1]
    assert (left.source, left.request, left.expected) == (PROBE, "POST /api/x", "deny")
    assert "reported other cases" in left.reason
    # Every case reported: nothing added.
    both = [
        got,
        Result("authz", TARGET, Verdict.PASS, "denied", source=PROBE, request="POST /api/x"),
    ]
    assert len(per_case(unit, 0, both)) == 2
