"""Pure parts of ``mtlsprobe run``: reading probe logs, judging pods, Job specs."""

from __future__ import annotations

import json

from jobs.launch import jobspec
from jobs.launch import judge as collect
from probe.model import Endpoint, Expect, Target, TargetsFile
from probe.results import Result, Verdict

LINE = json.dumps(
    {
        "check": "plaintext",
        "target": "ns/a",
        "endpoint": "10.0.0.1:80",
        "expected": "refused",
        "observed": "refused",
        "verdict": "pass",
        "reason": "reset",
        "evidence": {"error": None},
    }
)


def test_parse_log_keeps_results_and_counts_the_rest() -> None:
    text = "\n".join(
        [
            "2026-01-01 istio-proxy says hi",
            LINE,
            "",
            "[1, 2]",
            '{"check": "x", "target": "t", "verdict": "maybe", "reason": "r"}',
            '{"check": "x", "target": "t", "verdict": "pass"}',  # no reason
            LINE[:40],  # cut by an OOM kill
            "Traceback (most recent call last):",
        ]
    )
    parsed = collect.parse_log(text)
    assert [(r.check, r.endpoint, r.verdict) for r in parsed.results] == [
        ("plaintext", "10.0.0.1:80", Verdict.PASS)
    ]
    assert parsed.ignored == 6
    assert parsed.last_text == "Traceback (most recent call last):"


def _tf() -> TargetsFile:
    eps = (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80))
    return TargetsFile(
        "cluster.local",
        (
            Target("ns/a", "a.ns", 80, Expect.STRICT, eps),
            Target("ns/b", "b.ns", 80, Expect.STRICT, ()),
        ),
    )


def _r(check: str, target: str, endpoint: str | None = None) -> Result:
    return Result(check, target, Verdict.PASS, "ok", endpoint=endpoint)


def test_missing_results_are_found_per_key() -> None:
    owed = collect.expected_keys(
        _tf(), [("plaintext", "endpoint"), ("mesh", "target"), ("self", "run")]
    )
    assert ("plaintext", "ns/a", "10.0.0.2:80") in owed
    assert ("plaintext", "ns/b", None) in owed  # no endpoints: one (skip) result
    assert ("self", "source", None) in owed
    got = [
        _r("plaintext", "ns/a", "10.0.0.1:80"),
        _r("plaintext", "ns/b"),
        _r("mesh", "ns/a"),
        _r("self", "source"),
    ]
    assert collect.missing(owed, got) == [
        ("plaintext", "ns/a", "10.0.0.2:80"),
        ("mesh", "ns/b", None),
    ]
    # a target-level result (a skip of the whole target) covers its endpoints
    assert collect.missing(owed, [*got, _r("plaintext", "ns/a"), _r("mesh", "ns/b")]) == []
    errors = collect.errors_for([("mesh", "ns/b", None)], "pod crashed", "probe-incomplete")
    assert errors[0].verdict is Verdict.ERROR and errors[0].reason == "pod crashed"


def _pod(**status: object) -> dict[str, object]:
    return {
        "metadata": {"name": "p-0", "annotations": {collect.INDEX_ANNOTATION: "3"}},
        "status": status,
    }


def _container(state: dict[str, object]) -> list[dict[str, object]]:
    return [{"name": "istio-proxy", "state": {"running": {}}}, {"name": "probe", "state": state}]


def test_pod_views() -> None:
    pull = collect.pod_view(
        _pod(
            phase="Pending",
            containerStatuses=_container(
                {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "x"'}}
            ),
        ),
        "probe",
    )
    assert pull.index == 3 and not pull.finished
    assert pull.fatal is not None and "image pull failed (ImagePullBackOff)" in pull.fatal
    pending = collect.pod_view(
        _pod(
            phase="Pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes",
                }
            ],
        ),
        "probe",
    )
    assert pending.fatal is None  # may still be scheduled: wait for the deadline
    assert pending.stuck() == "probe pod p-0 unschedulable: 0/1 nodes"
    oom = collect.pod_view(
        _pod(
            phase="Running",
            containerStatuses=_container({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
        ),
        "probe",
    )
    assert oom.finished and oom.crash() == "probe container OOMKilled (exit 137) in pod p-0"
    found = collect.pod_view(
        _pod(
            phase="Failed",
            containerStatuses=_container({"terminated": {"exitCode": 1, "reason": "Error"}}),
        ),
        "probe",
    )
    assert found.crash() is None  # exit 1 = a check failed: the results say so
    usage = collect.pod_view(
        _pod(
            phase="Failed",
            containerStatuses=_container(
                {"terminated": {"exitCode": 64, "reason": "Error", "message": "bad\ntargets"}}
            ),
        ),
        "probe",
    )
    assert usage.crash() == "probe container exited 64 (Error) in pod p-0: bad targets"


def test_job_failure_line() -> None:
    job = {
        "metadata": {"name": "j"},
        "status": {
            "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
        },
    }
    assert collect.job_failure(job) == "job j failed (DeadlineExceeded)"
    assert collect.job_failure({"metadata": {"name": "j"}, "status": {}}) is None


def test_job_specs_native_sidecar_and_sharding() -> None:
    spec = jobspec.RunSpec(run_id="r1", image="img:1", native_sidecar=True, root_cert=False)
    owner = {"metadata": {"name": "mtlsprobe-r1", "uid": "u-1"}}
    side = jobspec.ROLES[0]
    job = jobspec.job(spec, "mtlsprobe", side, ("mesh",), owner, shards=5, parallelism=2)
    tpl = job["spec"]["template"]
    assert tpl["metadata"]["annotations"][jobspec.NATIVE_ANNOTATION] == "true"
    args = tpl["spec"]["containers"][0]["args"]
    assert "--wait-for-sidecar" in args and "--quit-sidecar" not in args
    assert args[args.index("-f") + 1] == "/etc/mtlsprobe/targets-$(JOB_COMPLETION_INDEX).yaml"
    sources = next(v for v in tpl["spec"]["volumes"] if v["name"] == "targets")["projected"]
    assert [s["configMap"]["name"] for s in sources["sources"]] == [
        f"mtlsprobe-r1-sidecar-{i}" for i in range(5)
    ]
    assert job["spec"]["completionMode"] == "Indexed"
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (5, 2)
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert not any(v["name"] == "mesh-root" for v in tpl["spec"]["volumes"])
    assert jobspec.shard_count(200, 200) == 1 and jobspec.shard_count(201, 200) == 2
    tf = jobspec.pod_targets(_tf(), "ns-x", spec)
    assert tf.source.identity == "spiffe://cluster.local/ns/ns-x/sa/mtlsprobe"
    assert tf.root_cert_file is None
