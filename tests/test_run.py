"""``mtlsprobe run`` end to end against the fake API server with a simulated Job
controller and kubelet (tests/fakekube_jobs.py): the real ``kubernetes`` client, real
probe Job specs, and pod logs that are real ``mtlsprobe check -o jsonl`` output."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.cli import main as cli
from jobs.launch.cluster import NS, RUN_API_CALLS
from jobs.launch.jobspec import LABEL_ROLE, LABEL_RUN
from probe.pki import CertificateAuthority
from tests import kubebuild as kb
from tests.fakekube_jobs import JobKube
from tests.runcase import PLAIN, Env, echo_cluster, probe_results, run
from tests.sidecar_standin import Agent

pytestmark = pytest.mark.timeout(120)

ALL_BUT_SELF = "plaintext,peer-cert,foreign-client,mesh,xfcc-spoof"


def shard_endpoints(kube: JobKube, role: str) -> dict[int, list[str]]:
    """Index -> the endpoints the run wrote into that index's shard ConfigMap: what each
    index owns, read from the product's own output (never assumed from the ports)."""
    out: dict[int, list[str]] = {}
    for cm in kube.objects("configmaps"):
        md = cm["metadata"]
        if (md.get("labels") or {}).get(LABEL_ROLE) != role:
            continue
        doc = yaml.safe_load(cm["data"]["targets.yaml"])
        index = int(md["name"].rsplit("-", 1)[1])
        out[index] = [ep for t in doc["targets"] for ep in t.get("endpoints") or []]
    return out


def test_happy_path_jobs_specs_report_and_cleanup(
    env: Env,
    capsys: pytest.CaptureFixture[str],
    agent: Agent,
) -> None:
    seen_jobs: list[dict[str, Any]] = []
    original = env.kube.behaviour

    def spy(job: dict[str, Any], index: int) -> str:
        seen_jobs.append(job)
        return original(job, index)

    env.kube.behaviour = spy
    code, doc, err = run(env, capsys, "--checks", ALL_BUT_SELF, "--deadline", "30")
    assert doc is not None, err
    assert agent.quits == ["POST"]  # the classic sidecar was told to stop
    results = probe_results(doc)
    by_check = {r["check"]: r for r in results}
    assert set(by_check) == set(ALL_BUT_SELF.split(","))
    # The echo pod has no sidecar: plaintext is accepted, as expected for NONE.
    assert by_check["plaintext"]["verdict"] == "pass", by_check["plaintext"]
    assert by_check["plaintext"]["endpoint"] == f"127.0.0.1:{env.echo_port}"
    assert by_check["plaintext"]["evidence"]["probePod"].startswith("mtlsprobe/mtlsprobe-")
    verdicts = {r["verdict"] for r in doc["results"]}
    assert code == (1 if "fail" in verdicts else 2 if "error" in verdicts else 0)
    assert "error" not in {r["verdict"] for r in results}, results

    # -- the Job specs as created ----------------------------------------------------------
    assert {j["metadata"]["name"].rsplit("-", 1)[1] for j in seen_jobs} == {"sidecar", "plain"}
    for job in seen_jobs:
        run_id = job["metadata"]["labels"][LABEL_RUN]
        assert job["metadata"]["namespace"] == "mtlsprobe"
        assert job["metadata"]["ownerReferences"][0]["kind"] == "ConfigMap"
        spec = job["spec"]
        assert spec["backoffLimit"] == 0
        assert spec["activeDeadlineSeconds"] == 30
        assert spec["ttlSecondsAfterFinished"] > 0
        pod = spec["template"]["spec"]
        tpl_labels = spec["template"]["metadata"]["labels"]
        tpl_annotations = spec["template"]["metadata"].get("annotations") or {}
        assert tpl_labels[LABEL_RUN] == run_id
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and isinstance(psc["runAsUser"], int)
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        (c,) = pod["containers"]
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert {"mountPath": "/tmp", "name": "tmp"} in c["volumeMounts"]
        assert any(v.get("emptyDir") is not None for v in pod["volumes"])
        roots = [
            v
            for v in pod["volumes"]
            if (v.get("configMap") or {}).get("name") == "istio-ca-root-cert"
        ]
        assert roots and roots[0]["configMap"]["items"] == [
            {"key": "root-cert.pem", "path": "root-cert.pem"}
        ]
        assert c["args"][:3] == ["check", "-f", "/etc/mtlsprobe/targets.yaml"]
        assert c["args"][c["args"].index("-o") + 1] == "jsonl"
        assert c["image"].startswith("ghcr.io/mtlsprobe/mtlsprobe:")
        if job["metadata"]["name"].endswith("-sidecar"):
            assert tpl_labels["sidecar.istio.io/inject"] == "true"
            assert c["args"][c["args"].index("--checks") + 1] == "mesh,xfcc-spoof"
            assert "--wait-for-sidecar" in c["args"] and "--quit-sidecar" in c["args"]
            # Istio keeps the outbound cluster stats the mesh check reads (ProxyConfig).
            pc = yaml.safe_load(tpl_annotations["proxy.istio.io/config"])
            assert "cluster.outbound" in pc["proxyStatsMatcher"]["inclusionPrefixes"]
            assert pc["holdApplicationUntilProxyStarts"] is True
        else:
            assert tpl_labels["sidecar.istio.io/inject"] == "false"
            assert "proxy.istio.io/config" not in tpl_annotations
            assert c["args"][c["args"].index("--checks") + 1] == PLAIN
            assert "--wait-for-sidecar" not in c["args"]
        assert "completionMode" not in spec  # one endpoint: no sharding

    # -- the targets file the pods read ------------------------------------------------------
    creates = [c for c in env.kube.calls if c.method == "POST" and c.path.endswith("/configmaps")]
    assert len(creates) == 1
    # -- nothing left behind, and GC was asked for ------------------------------------------
    assert env.kube.run_objects() == []
    deletes = [c for c in env.kube.calls if c.method == "DELETE"]
    assert deletes and all(c.query.get("propagationPolicy") == "Background" for c in deletes)
    # -- RBAC: in the probe namespace, exactly the declared calls (discovery reads ns-a) -----
    used = env.kube.api_calls()
    assert {(v, g, r, NS) for v, g, r, ns in used if ns == "mtlsprobe"} == set(RUN_API_CALLS)
    assert any(c.query.get("watch") == "true" for c in env.kube.calls)


def test_rendered_targets_configmap(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    cms: list[dict[str, Any]] = []
    original = env.kube.behaviour

    def spy(job: dict[str, Any], index: int) -> str:
        cm = [
            o
            for o in env.kube.objects("configmaps")
            if LABEL_RUN in (o["metadata"].get("labels") or {})
        ]
        cms.extend(cm)
        return original(job, index)

    env.kube.behaviour = spy
    run(env, capsys, "--checks", "plaintext", "--deadline", "20")
    doc = yaml.safe_load(cms[0]["data"]["targets.yaml"])
    assert doc["source"]["identity"] == "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"
    assert doc["rootCertFile"] == "/etc/mtlsprobe/root/root-cert.pem"
    assert doc["targets"][0]["name"] == "ns-a/echo:80"


def test_istio_namespace_names_the_control_plane_run_reads(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --istio-namespace/--revision` mean what they mean for `plan`: the mesh config
    and the mesh root are read there, and nowhere else."""
    env.kube.add_all(
        [
            kb.namespace("istio-control"),
            kb.configmap("istio-canary", "istio-control", {"mesh": "trustDomain: control.org\n"}),
            kb.configmap(
                "istio-ca-root-cert",
                "istio-control",
                {"root-cert.pem": CertificateAuthority.create_root().root_pem().decode()},
            ),
        ]
    )
    cms: list[dict[str, Any]] = []
    original = env.kube.behaviour

    def spy(job: dict[str, Any], index: int) -> str:
        cms.extend(
            o
            for o in env.kube.objects("configmaps")
            if LABEL_RUN in (o["metadata"].get("labels") or {})
        )
        return original(job, index)

    env.kube.behaviour = spy
    flags = ["--istio-namespace", "istio-control", "--revision", "canary"]
    run(env, capsys, "--checks", "plaintext", "--deadline", "20", *flags)
    doc = yaml.safe_load(cms[0]["data"]["targets.yaml"])
    assert doc["source"]["identity"] == "spiffe://control.org/ns/mtlsprobe/sa/mtlsprobe"
    assert doc["rootCertFile"] == "/etc/mtlsprobe/root/root-cert.pem"
    read = {c.path for c in env.kube.calls if c.method == "GET" and "/configmaps/" in c.path}
    assert read == {
        "/api/v1/namespaces/istio-control/configmaps/istio-canary",
        "/api/v1/namespaces/istio-control/configmaps/istio-ca-root-cert",
    }


@pytest.mark.parametrize(
    ("kind", "phrase", "observed"),
    [
        ("image", "image pull failed", "probe-not-started"),
        ("crash", "probe container exited 139 (Error)", "probe-incomplete"),
        ("oom", "probe container OOMKilled (exit 137)", "probe-incomplete"),
        ("unschedulable", "unschedulable: 0/3 nodes are available", "job-failed"),
        (
            "none",
            "(DeadlineExceeded): Job was active longer than specified deadline; no probe pod",
            "job-failed",
        ),
    ],
)
def test_failure_modes_are_errors_naming_the_cause(
    env: Env, capsys: pytest.CaptureFixture[str], kind: str, phrase: str, observed: str
) -> None:
    env.kube.behaviour = lambda job, index: (
        kind if job["metadata"]["name"].endswith("-plain") else "run"
    )
    # The broken Job hits its deadline after 2 s; the healthy one has the run's generous
    # --deadline, so its real probe finishes however loaded the machine is.
    env.kube.active_deadline = lambda job: (
        2.0 if job["metadata"]["name"].endswith("-plain") else None
    )
    t0 = time.monotonic()
    code, doc, err = run(env, capsys, "--checks", "plaintext,mesh", "--deadline", "120")
    assert time.monotonic() - t0 < 60  # done when both Jobs are, not at --deadline
    assert doc is not None, err
    plain = [r for r in probe_results(doc) if r["check"] == "plaintext"]
    mesh = [r for r in probe_results(doc) if r["check"] == "mesh"]
    assert len(plain) == 1 and len(mesh) == 1
    (r,) = plain
    assert r["verdict"] == "error" and r["observed"] == observed, r
    assert phrase in r["reason"], r["reason"]
    assert r["evidence"]["probeJob"].endswith("-plain")
    assert mesh[0]["verdict"] != "error", mesh  # the other Job is unaffected
    assert code == 2
    assert env.kube.run_objects() == []


def test_logs_unreadable(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.kube.forbid("get", "pods/log")
    code, doc, _err = run(env, capsys, "--checks", "plaintext", "--deadline", "20")
    (r,) = probe_results(doc)
    assert r["verdict"] == "error"
    assert "probe logs unreadable" in r["reason"] and "pods/log" in r["reason"]
    assert code == 2
    assert env.kube.run_objects() == []


def test_sidecar_never_ready(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.kube.agent = "http://127.0.0.1:9"  # nothing listens: never ready
    code, doc, _err = run(
        env, capsys, "--checks", "mesh", "--deadline", "20", "--wait-for-sidecar", "0.5"
    )
    (r,) = probe_results(doc)
    assert r["verdict"] == "error"
    assert "sidecar never became ready" in r["reason"]
    assert code == 2


def test_rbac_denied_at_start_is_one_line_exit_64(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.kube.forbid("create", "jobs", "batch")
    code = cli.main(
        ["run", "--kubeconfig", str(env.kubeconfig), "-n", "ns-a", "--checks", "plaintext"]
    )
    _out, err = capsys.readouterr()
    assert code == 64
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1
    assert "create" in lines[0] and "jobs" in lines[0] and "mtlsprobe" in lines[0]
    assert env.kube.run_objects() == []  # the ConfigMap made before the 403 is gone


def test_sharded_indexed_job(
    tmp_path: Path, echo_port: int, proxy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kube = JobKube(proxy=proxy)
    echo_cluster(kube, echo_port, endpoints=5)
    owned: dict[int, list[str]] = {}
    original = kube.behaviour

    def spy(job: dict[str, Any], index: int) -> str:
        owned.update(shard_endpoints(kube, "plain"))  # the run's objects, before cleanup
        return original(job, index)

    kube.behaviour = spy
    with kube:
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        env = Env(kube, cfg, echo_port, tmp_path)
        _code, doc, err = run(
            env, capsys, "--checks", "plaintext", "--shard-threshold", "2", "--deadline", "30"
        )
        assert doc is not None, err
        everything = sorted(f"127.0.0.{1 + i}:{echo_port}" for i in range(5))
        eps = sorted(r["endpoint"] for r in probe_results(doc))
        assert eps == everything
        # An even split (2, 2, 1), disjoint and covering all five, whatever the port.
        assert sorted(len(v) for v in owned.values()) == [1, 2, 2], owned
        assert sorted(ep for v in owned.values() for ep in v) == everything
        # three indexes, each reading its own shard file from its own ConfigMap
        runs = kube.probe_runs
        assert len(runs) == 3
        assert {a[a.index("-f") + 1] for a in runs} == {
            "/etc/mtlsprobe/targets-$(JOB_COMPLETION_INDEX).yaml"
        }
        made = [c.path for c in kube.calls if c.method == "POST" and "configmaps" in c.path]
        assert len(made) == 4  # the run's ConfigMap + one per shard
        # Every result came from the pod of the index whose ConfigMap held its endpoint.
        index_of = {ep: i for i, v in owned.items() for ep in v}
        for r in probe_results(doc):
            assert f"-plain-{index_of[r['endpoint']]}-" in r["evidence"]["probePod"], r
        assert kube.run_objects() == []


def test_keep_leaves_objects(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    _code, _doc, err = run(env, capsys, "--checks", "plaintext", "--keep", "--deadline", "20")
    left = env.kube.run_objects()
    assert any(o.startswith("jobs/mtlsprobe/") for o in left)
    assert any(o.startswith("configmaps/mtlsprobe/") for o in left)
    assert "kept" in err


def test_interrupt_cleans_up(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM while waiting (sent once the Jobs exist, so the run's handler is in place):
    exit 130 and nothing left behind."""
    import os
    import signal

    timers: list[threading.Timer] = []

    def stuck_then_terminated(job: dict[str, Any], index: int) -> str:
        t = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM))
        timers.append(t)
        t.start()
        return "unschedulable"

    env.kube.behaviour = stuck_then_terminated
    argv = ["run", "--kubeconfig", str(env.kubeconfig), "-n", "ns-a", "--checks", "plaintext"]
    try:
        code = cli.main([*argv, "--deadline", "60", "--poll-interval", "5"])
    finally:
        for t in timers:
            t.cancel()
    assert code == 130
    assert env.kube.run_objects() == []


def test_in_cluster_outside_a_pod_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["run", "--in-cluster"]) == 64
    assert "not running in a pod" in capsys.readouterr().err


def test_source_namespaces(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """ns-b has no istio-ca-root-cert: its pods never start (the mount), which must
    show as errors for the probes from ns-b while those from mtlsprobe pass."""
    # ns-b's Job fails by deadline after 4 s; mtlsprobe's has the generous --deadline.
    env.kube.active_deadline = lambda job: 4.0 if job["metadata"]["namespace"] == "ns-b" else None
    code, doc, err = run(
        env, capsys, "--checks", "plaintext", "--source-namespaces", "ns-b", "--deadline", "120"
    )
    assert doc is not None, err
    by_target = {r["target"]: r for r in probe_results(doc)}
    assert set(by_target) == {"ns-a/echo:80 (from mtlsprobe)", "ns-a/echo:80 (from ns-b)"}
    assert by_target["ns-a/echo:80 (from mtlsprobe)"]["verdict"] == "pass"
    bad = by_target["ns-a/echo:80 (from ns-b)"]
    assert bad["verdict"] == "error" and "ContainerCreating" in bad["reason"], bad
    assert code == 2
    made = {c.path for c in env.kube.calls if c.method == "POST"}
    assert "/api/v1/namespaces/ns-b/configmaps" in made
    assert "/apis/batch/v1/namespaces/ns-b/jobs" in made
    assert env.kube.run_objects() == []


def test_api_failing_during_the_wait_is_an_error_not_a_hang(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(job: dict[str, Any], index: int) -> str:
        env.kube.fail("/api/v1/namespaces/mtlsprobe/pods", 500)  # from now on
        return "run"

    env.kube.behaviour = broken
    t0 = time.monotonic()
    code, doc, _err = run(env, capsys, "--checks", "plaintext", "--deadline", "2")
    assert time.monotonic() - t0 < 20
    (r,) = probe_results(doc)
    assert r["verdict"] == "error"
    assert "could not watch the probe Job" in r["reason"] and "HTTP 500" in r["reason"], r
    assert code == 2
    assert env.kube.run_objects() == []


def test_targets_too_big_for_one_configmap_go_to_shards_only(
    tmp_path: Path,
    echo_port: int,
    proxy: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobs.launch import launcher as run_mod

    kube = JobKube(proxy=proxy)
    echo_cluster(kube, echo_port, endpoints=12)
    seen: list[dict[str, Any]] = []

    def spy(job: dict[str, Any], index: int) -> str:
        seen.extend(kube.objects("configmaps"))
        return "run"

    kube.behaviour = spy
    with kube:
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        env = Env(kube, cfg, echo_port, tmp_path)
        # ~690 bytes for all 12 endpoints, ~480 for one shard of 1
        monkeypatch.setattr(run_mod, "CONFIGMAP_MAX", 560)
        code, doc, err = run(
            env, capsys, "--checks", "plaintext", "--shard-threshold", "1", "--deadline", "30"
        )
        assert doc is not None, err
        eps = sorted(r["endpoint"] for r in probe_results(doc))
        assert eps == sorted(f"127.0.0.{1 + i}:{echo_port}" for i in range(12))
        main = [c for c in seen if c["metadata"]["name"].count("-") == 1]
        assert main and main[0]["data"]["targets.yaml"].startswith("# sharded")
        assert kube.run_objects() == []
        monkeypatch.setattr(run_mod, "CONFIGMAP_MAX", 100)  # not even one shard fits
        code = cli.main(
            [
                "run",
                "--kubeconfig",
                str(cfg),
                "-n",
                "ns-a",
                "--checks",
                "plaintext",
                "--shard-threshold",
                "1",
            ]
        )
        assert code == 64
        assert "lower --shard-threshold" in capsys.readouterr().err
        assert kube.run_objects() == []


def test_default_checks_all_observed_through_the_pods_sidecar(
    tmp_path: Path,
    echo_port: int,
    proxy: str,
    agent: Agent,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every default check, ``self`` included: the sidecar pod's Envoy admin is a
    stand-in serving /certs and the secrets dump for a workload certificate issued by
    the same mesh CA whose root the pods mount from istio-ca-root-cert."""
    import datetime as dt

    from tests.sidecar_standin import DUMP, admin_handler, certs_doc, dump_doc, http_server

    ca = CertificateAuthority.create_root("cluster.local", key_type="ec")
    me = "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"
    issued = ca.issue_workload(me)
    now = dt.datetime.now(dt.UTC)
    routes = {
        "/certs": certs_doc(
            ca.cert.serial_number, me, now - dt.timedelta(minutes=2), now + dt.timedelta(hours=24)
        ),
        DUMP: dump_doc(issued, ca.root_pem()),
    }
    with http_server(admin_handler(routes)) as admin:
        kube = JobKube(proxy=proxy, agent=agent.url, admin=admin)
        echo_cluster(kube, echo_port, ca=ca)
        with kube:
            cfg = tmp_path / "kubeconfig"
            cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
            code, doc, err = run(Env(kube, cfg, echo_port, tmp_path), capsys, "--deadline", "30")
            assert doc is not None, err
            by_check = {r["check"]: r for r in probe_results(doc)}
            assert set(by_check) == {
                "plaintext",
                "peer-cert",
                "foreign-client",
                "mesh",
                "xfcc-spoof",
                "self",
            }
            assert by_check["self"]["verdict"] == "pass", by_check["self"]
            assert by_check["plaintext"]["verdict"] == "pass"
            assert {r["verdict"] for r in probe_results(doc)} <= {"pass", "skip"}, probe_results(
                doc
            )
            assert code == 0
            assert kube.run_objects() == []


def test_cleanup_forbidden_is_a_stderr_line_not_a_verdict(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.kube.forbid("delete", "jobs", "batch")
    code, doc, err = run(env, capsys, "--checks", "plaintext", "--deadline", "20")
    assert code == 0, doc
    (line,) = [x for x in err.splitlines() if "could not delete" in x]
    assert "jobs" in line and "forbidden" in line
    # the ConfigMap went, and with it (owner references) the Job in a real cluster
    assert not any(o.startswith("configmaps/") for o in env.kube.run_objects())


def test_a_failing_shard_does_not_take_the_others_down(
    tmp_path: Path, echo_port: int, proxy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """backoffLimitPerIndex: one index crashes, the others still report (with a
    Job-wide backoffLimit of 0 the Job controller would kill them). Which endpoints
    each index owns is read from the shard ConfigMaps the run wrote; the index made to
    crash is one that does not hold the echo, so a surviving shard must show a pass."""
    kube = JobKube(proxy=proxy)
    echo_cluster(kube, echo_port, endpoints=6)
    echo_ep = f"127.0.0.1:{echo_port}"
    owned: dict[int, list[str]] = {}
    crashing: list[int] = []

    def behaviour(job: dict[str, Any], index: int) -> str:
        if not owned:  # the shard ConfigMaps exist before the Job does
            owned.update(shard_endpoints(kube, "plain"))
            crashing.append(max(i for i, eps in owned.items() if echo_ep not in eps))
        return "crash" if index == crashing[0] else "run"

    kube.behaviour = behaviour
    with kube:
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        env = Env(kube, cfg, echo_port, tmp_path)
        argv = ["--checks", "plaintext", "--shard-threshold", "2", "--deadline", "30"]
        code, doc, err = run(env, capsys, *argv)
        assert doc is not None, err
        # Three shards of exactly two endpoints each (an even split), covering all six.
        assert sorted(owned) == [0, 1, 2] and all(len(v) == 2 for v in owned.values()), owned
        everything = {f"127.0.0.{1 + i}:{echo_port}" for i in range(6)}
        assert {ep for v in owned.values() for ep in v} == everything
        (bad,) = crashing
        results = probe_results(doc)
        assert sorted(r["endpoint"] for r in results) == sorted(everything)
        crashed = [r for r in results if r["endpoint"] in owned[bad]]
        observed = [r for r in results if r["endpoint"] not in owned[bad]]
        assert len(crashed) == 2 and len(observed) == 4
        for r in crashed:
            assert r["verdict"] == "error" and r["observed"] == "probe-incomplete", r
            assert "exited 139" in r["reason"], r
        # The surviving shards really probed: the echo (127.0.0.1 only) answered; the
        # other addresses were seen to have nothing listening (or, should another
        # process hold that port on that loopback address, answered: a real probe too).
        for r in observed:
            if r["endpoint"] == echo_ep:
                assert r["verdict"] == "pass", r
            else:
                assert r["verdict"] == "pass" or "nothing listens" in r["reason"], r
        assert code == 2
        jobs = [c for c in kube.calls if c.method == "POST" and c.path.endswith("/jobs")]
        assert len(jobs) == 1
        assert kube.run_objects() == []


def test_traces_keep_each_probe_pods_timings_and_source(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run`` exports one trace from the orchestrator: each check span starts and ends
    when the probe pod's check did (as its log says, to the nanosecond), not at export,
    and names the probe that observed it."""
    from probe.results import parse_rfc3339_ns
    from tests.otlp_receiver import otlp_receiver

    with otlp_receiver() as (url, got):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        _code, doc, err = run(env, capsys, "--checks", "plaintext,peer-cert", "--deadline", "30")
    assert doc is not None, err
    assert all("timing" not in r for r in doc["results"])  # the report is as before
    logged: dict[str, tuple[int, int]] = {}  # test.case.name -> (start, end) in the pod log
    for text in env.kube.logs.values():
        for line in text.splitlines():
            if line.startswith('{"check"'):
                r = json.loads(line)
                case = " ".join(x for x in (r["check"], r["target"], r.get("endpoint")) if x)
                start = parse_rfc3339_ns(r["timing"]["start"])
                end = parse_rfc3339_ns(r["timing"]["end"])
                assert start is not None and end is not None, r
                logged[case] = (start, end)
    # The pods export their own traces too (OTEL_* reaches them); run's spans are the
    # ones whose evidence names the probe pod.
    spans = [s for s in got.spans if "mtlsprobe.evidence.probePod" in got.span_attrs(s)]
    assert len(spans) == len(probe_results(doc)) == len(logged) >= 2
    for s in spans:
        attrs = got.span_attrs(s)
        assert (s.start_time_unix_nano, s.end_time_unix_nano) == logged[attrs["test.case.name"]]
        assert 0 < s.start_time_unix_nano <= s.end_time_unix_nano
        if attrs["mtlsprobe.verdict"] != "skip":
            assert s.start_time_unix_nano < s.end_time_unix_nano  # a check takes time
        assert (
            attrs["mtlsprobe.source.spiffe_id"]
            == "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"
        )
        assert attrs["mtlsprobe.source.namespace"] == "mtlsprobe"
        assert attrs["mtlsprobe.target"] == "ns-a/echo:80"
    (root,) = [
        s for s in got.spans if s.name == "mtlsprobe.run" and s.trace_id == spans[0].trace_id
    ]
    assert root.start_time_unix_nano <= min(s.start_time_unix_nano for s in spans)
    assert got.span_attrs(root)["mtlsprobe.source.namespace"] == "mtlsprobe"
