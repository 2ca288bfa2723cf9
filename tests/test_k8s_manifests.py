"""The shipped manifests: every kustomization renders, built-in kinds validate against
the Kubernetes schemas (strict), every pod meets the restricted Pod Security Standard
with requests and limits, the RBAC is read-only and narrow except for what `run`
writes in its own namespace, every command parses with the CLI that exists, and every
API call the code makes is allowed by the rendered roles."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import yaml

from jobs.cli.main import build_parser
from jobs.launch.cluster import RUN_API_CALLS
from jobs.plan.discovery import Options, discover
from tests import kubebuild as kb
from tests.fakekube import FakeKube
from tests.k8srender import (
    K8S,
    K8S_VERSIONS,
    POD_KINDS,
    allowed,
    parse_call,
    pod_spec,
    render,
    rules_by_subject,
)

KUSTOMIZATIONS = [
    "base",
    "overlays/smoke",
    "overlays/continuous",
    "overlays/echo-example",
    "overlays/impersonate-example",
]
OWN_NS = "mtlsprobe"
CUSTOM_KINDS = {"PrometheusRule"}

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl (for `kubectl kustomize`) is not installed: manifests NOT verified",
)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {k: render(k) for k in KUSTOMIZATIONS}


def all_objects(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [o for objs in rendered.values() for o in objs]


def test_every_kustomization_renders(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, objs in rendered.items():
        assert objs, name


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_validate_strictly(
    rendered: dict[str, list[dict[str, Any]]], version: str
) -> None:
    import kubernetes_validate

    for obj in all_objects(rendered):
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def test_pods_are_restricted_with_limits(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pods = [o for o in all_objects(rendered) if o["kind"] in POD_KINDS]
    assert {o["kind"] for o in pods} == POD_KINDS
    for obj in pods:
        spec = pod_spec(obj)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, where
        assert isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, where
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), where
        assert not any("hostPath" in v for v in spec.get("volumes", [])), where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("privileged"), where
            assert not any("hostPort" in p for p in c.get("ports", [])), where
            res = c.get("resources", {})
            assert {"cpu", "memory"} <= set(res.get("requests", {})), where
            assert "memory" in res.get("limits", {}), where


def test_tokens_only_where_the_api_is_used(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = all_objects(rendered)
    sas = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ServiceAccount"}
    assert sas["mtlsprobe"]["automountServiceAccountToken"] is False  # probe pods
    assert sas["mtlsprobe-echo"]["automountServiceAccountToken"] is False
    for obj in objs:
        if obj["kind"] in POD_KINDS and obj["metadata"]["name"].startswith("mtlsprobe-echo"):
            assert pod_spec(obj).get("automountServiceAccountToken") is False


def test_rbac_is_narrow(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = render("overlays/continuous")
    for o in objs:
        if o["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in o["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], o["metadata"]["name"]
            assert "*" not in rule.get("apiGroups", []), o["metadata"]["name"]
            assert "secrets" not in rule["resources"], o["metadata"]["name"]
            if o["kind"] == "ClusterRole":
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, "cluster-wide writes"
            else:
                assert o["metadata"]["namespace"] == OWN_NS


@pytest.mark.parametrize("options", [Options(), Options(namespaces=("shop",))])
def test_discovery_calls_are_allowed_for_orchestrator_and_agent(options: Options) -> None:
    kube = FakeKube()
    kube.start()
    try:
        kube.add_all(kb.small_mesh())
        discover(kube.api_client(), options)
        calls = [parse_call(c.method, c.path, c.query) for c in kube.calls]
    finally:
        kube.stop()
    subjects = rules_by_subject(render("overlays/continuous"))
    assert calls
    for sa in ("mtlsprobe-orchestrator", "mtlsprobe-agent"):
        for verb, group, resource, ns, name in calls:
            if resource == "configmaps" and name is None:
                pytest.fail(f"discovery lists configmaps ({ns}): widen the RBAC knowingly")
            # The rule is cluster-wide by name (istiod's namespace is a flag), but both
            # ConfigMaps are read only there: a tenant's istio-ca-root-cert never is.
            if resource == "configmaps":
                assert ns == "istio-system" and name in ("istio", "istio-ca-root-cert"), (ns, name)
            assert allowed(subjects[sa], verb, group, resource, ns, name), (
                sa,
                verb,
                group,
                resource,
                ns,
                name,
            )


def test_run_writes_are_allowed_in_its_namespace_only() -> None:
    subjects = rules_by_subject(render("base"))
    rules = subjects["mtlsprobe-orchestrator"]
    for verb, group, resource, ns_name in RUN_API_CALLS:
        ns = OWN_NS if ns_name.startswith("<") else ns_name  # "<probe namespace>"
        assert allowed(rules, verb, group, resource, ns, None), (verb, group, resource, ns)
        if verb in ("create", "delete"):
            assert not allowed(rules, verb, group, resource, "other-ns", None)
    assert not allowed(rules, "list", "", "configmaps", "", None)
    assert not allowed(rules, "get", "", "secrets", OWN_NS, None)


def test_impersonate_component_is_run_rbac_in_its_namespace_only() -> None:
    """k8s/components/impersonate (opt-in, `run --impersonate shop/<sa>`): exactly the
    run's calls, in the namespace the kustomization sets, for the orchestrator; nothing
    cluster-wide, no Secrets, no wildcards; the base alone never allows them there."""
    objs = render("overlays/impersonate-example")
    assert {o["kind"] for o in objs} == {"Role", "RoleBinding"}
    for o in objs:
        assert o["metadata"]["namespace"] == "shop"
        for rule in o.get("rules", []):
            assert "*" not in rule["verbs"] + rule["resources"] + rule.get("apiGroups", [])
            assert "secrets" not in rule["resources"]
            assert "serviceaccounts/token" not in rule["resources"]
    rules = rules_by_subject(objs)["mtlsprobe-orchestrator"]
    binding = next(o for o in objs if o["kind"] == "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mtlsprobe-orchestrator", "namespace": OWN_NS}
    ]
    granted = {
        (verb, group, resource)
        for _, rule in rules
        for group in rule.get("apiGroups", [""])
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {(v, g, r) for v, g, r, _ in RUN_API_CALLS}  # no more, no less
    for verb, group, resource, _ in RUN_API_CALLS:
        assert allowed(rules, verb, group, resource, "shop", None)
        assert not allowed(rules, verb, group, resource, "other-ns", None)
    base = rules_by_subject(render("base"))["mtlsprobe-orchestrator"]
    assert not allowed(base, "create", "batch", "jobs", "shop", None)
    text = (K8S / "components" / "impersonate" / "kustomization.yaml").read_text()
    assert "RISK" in text and "ANY service account" in text


def test_commands_parse_with_the_cli_that_exists(rendered: dict[str, list[dict[str, Any]]]) -> None:
    seen = set()
    for obj in all_objects(rendered):
        if obj["kind"] not in POD_KINDS:
            continue
        for c in pod_spec(obj)["containers"]:
            args = [str(a) for a in c["args"]]
            parser = build_parser(args)
            ns = parser.parse_args(args)
            seen.add(ns.command)
    assert seen == {"run", "agent", "serve"}


def test_orchestrator_pods_are_not_injected(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for obj in all_objects(rendered):
        if obj["kind"] in ("CronJob", "Job"):
            tmpl = (
                obj["spec"]["jobTemplate"]["spec"]["template"]
                if obj["kind"] == "CronJob"
                else obj["spec"]["template"]
            )
            assert tmpl["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"


def test_dockerfile_rules() -> None:
    text = (K8S.parent / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]
    assert "USER 65532:65532" in final
    assert 'ENTRYPOINT ["mtlsprobe"]' in final
    assert "apt-get" not in final and "pip install" not in final
    assert "compileall" in text
    assert "[lab" not in text and "[test" not in text


def test_agent_peer_listing_is_allowed_for_the_agent() -> None:
    """The agent shards by listing its DaemonSet's pods every round (jobs.agent.sources)."""
    from jobs.agent.sources import KubePeers

    kube = FakeKube()
    kube.start()
    try:
        KubePeers(kube.api_client(), OWN_NS, "app.kubernetes.io/name=mtlsprobe-agent").agents()
        calls = [parse_call(c.method, c.path, c.query) for c in kube.calls]
    finally:
        kube.stop()
    assert calls
    rules = rules_by_subject(render("overlays/continuous"))["mtlsprobe-agent"]
    for verb, group, resource, ns, name in calls:
        assert allowed(rules, verb, group, resource, ns, name), (verb, group, resource, ns, name)


def test_probe_sidecars_keep_the_outbound_cluster_stats(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Every probe pod with a sidecar asks Istio (ProxyConfig ``proxyStatsMatcher``) to keep
    the ``cluster.outbound`` counters the mesh check reads (probe/clusterstats.py): the
    sidecar agent DaemonSet here, and the `run` Jobs (jobs/launch/jobspec.py), with one value."""
    from jobs.launch.jobspec import PROBE_PROXY_CONFIG, ROLES, RunSpec, job

    def meta(o: dict[str, Any]) -> dict[str, Any]:
        spec = o["spec"]["jobTemplate"]["spec"] if o["kind"] == "CronJob" else o["spec"]
        return spec["template"]["metadata"]  # type: ignore[no-any-return]

    injected = [
        o
        for o in all_objects(rendered)
        if o["kind"] in POD_KINDS
        and meta(o).get("labels", {}).get("sidecar.istio.io/inject") == "true"
    ]
    probes = [o for o in injected if o["metadata"]["name"].startswith("mtlsprobe-agent")]
    assert {o["metadata"]["name"] for o in probes} == {"mtlsprobe-agent-sidecar"}
    for obj in probes:
        annotations = meta(obj)["annotations"]
        assert yaml.safe_load(annotations["proxy.istio.io/config"]) == PROBE_PROXY_CONFIG
        # Not the deprecated annotation: when set, Istio uses it instead of ProxyConfig's.
        assert "sidecar.istio.io/statsInclusionPrefixes" not in annotations
    owner = {"metadata": {"name": "mtlsprobe-x", "uid": "u"}}
    spec = RunSpec(run_id="x", image="img")
    for role in ROLES:
        tmpl = job(spec, OWN_NS, role, role.checks, owner)["spec"]["template"]["metadata"]
        got = tmpl["annotations"].get("proxy.istio.io/config")
        if role.sidecar:
            assert got is not None and yaml.safe_load(got) == PROBE_PROXY_CONFIG
        else:
            assert got is None  # no sidecar, nothing to configure
    assert "cluster.outbound" in PROBE_PROXY_CONFIG["proxyStatsMatcher"]["inclusionPrefixes"]
