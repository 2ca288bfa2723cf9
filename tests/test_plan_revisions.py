"""Plans from a mesh with several control-plane revisions (issue 17, rule 5).

Istio behaviour encoded (istio/istio, read at 86c9f01):

- pilot/pkg/bootstrap/mesh.go ``getMeshConfigMapName``: istiod of revision R reads its
  MeshConfig from ConfigMap ``istio-R`` (``istio`` for ``default``) in its own namespace,
  and pushes it to the proxies it serves - so a sidecar's trust domain and the root
  namespace of its mesh-wide PeerAuthentication are its own revision's.
- manifests/charts/istio-control/istio-discovery/files/injection-template.yaml: the
  injector annotates the pod ``istio.io/rev: {{ .Revision }}`` (the revision, never a
  tag); pkg/kube/inject/inject.go ``SidecarInjectionStatus.Revision`` records it too.
- templates/mutatingwebhook.yaml and templates/revision-tags-mwc.yaml: which webhook
  (revision or tag) a pod goes to - namespace ``istio-injection=enabled`` -> default,
  namespace ``istio.io/rev`` (only without ``istio-injection``), else the pod's own
  ``istio.io/rev``; a tag is a MutatingWebhookConfiguration labelled
  ``istio.io/tag=<tag>``, ``istio.io/rev=<revision>`` (istioctl/pkg/tag ``GetWebhooksWithTag``).

Where the plan cannot know a workload's mesh config it does not probe it and
``--require`` errors there (never passes). Both paths (``--from-manifests`` and the fake
API server) must agree.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import yaml

from jobs.plan.discovery import Options, discover
from jobs.plan.manifests import load_manifests
from jobs.plan.planner import Requirements, build_plan
from probe.model import Expect
from probe.results import Verdict
from tests import kubebuild as kb
from tests.fakekube import FakeKube
from tests.plancase import Both, Obj

REQ = Requirements(strict=True, sidecar=True)
STRICT = "require-strict:shop/a:80"


def mesh_cm(name: str, mesh: str) -> Obj:
    return kb.configmap(name, "istio-system", {"mesh": mesh})


def tag_webhook(tag: str, revision: str, name: str | None = None) -> Obj:
    """A revision tag as the chart's revision-tags-mwc.yaml writes it."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": name or f"istio-revision-tag-{tag}",
            "labels": {"istio.io/tag": tag, "istio.io/rev": revision},
        },
        "webhooks": [],
    }


def cluster(ns_labels: dict[str, str], *extra: Obj, pods: list[Obj] | None = None) -> list[Obj]:
    """Namespace ``shop`` (labels ``ns_labels``), STRICT mesh-wide from istio-system,
    Service a:80 -> 8080 over the pods (default: one injected pod a-0)."""
    return [
        kb.namespace("istio-system"),
        kb.namespace("shop", ns_labels),
        kb.peer_auth("default", "istio-system", "STRICT"),
        kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
        *(pods if pods is not None else [pod("a-0", "10.0.0.1")]),
        *extra,
    ]


def pod(name: str, ip: str, annotations: dict[str, str] | None = None, **kw: object) -> Obj:
    labels = dict(kw.pop("labels", None) or {"app": "a"})  # type: ignore[call-overload]
    return kb.pod(name, "shop", labels, ip=ip, sa="a", annotations=annotations, **kw)  # type: ignore[arg-type]


def excluded(both: Both) -> list[str]:
    return [r.reason for r in both.findings() if r.evidence.get("notProbed")]


# ---- revisions whose mesh config is known -------------------------------------------------------


def test_revision_with_same_trust_domain_is_planned(plan_both: Callable[..., Both]) -> None:
    """Namespace istio.io/rev=canary: its pods are canary's; istio-canary says the same
    trust domain as the default revision, so they are planned as usual."""
    both = plan_both(
        cluster(
            {"istio.io/rev": "canary"},
            mesh_cm("istio", "trustDomain: example.org\n"),
            mesh_cm("istio-canary", "trustDomain: example.org\n"),
        )
    )
    assert both.endpoints() == {"10.0.0.1:8080"}
    assert both.targets()["shop/a:80"].identity == "spiffe://example.org/ns/shop/sa/a"
    assert both.required()[STRICT] == Verdict.PASS


def test_revision_with_other_trust_domain_is_not_probed(plan_both: Callable[..., Both]) -> None:
    """A canary proxy carries (and accepts) identities of canary's trust domain only;
    the targets file holds one trust domain: not probed, compliance errors."""
    both = plan_both(
        cluster(
            {"istio.io/rev": "canary"},
            mesh_cm("istio", "trustDomain: example.org\n"),
            mesh_cm("istio-canary", "trustDomain: other.example\n"),
        )
    )
    assert both.endpoints() == set()
    assert any("'other.example'" in r and "canary" in r for r in excluded(both))
    assert both.required()[STRICT] == Verdict.ERROR


def test_revision_without_configmap_fails_closed(plan_both: Callable[..., Both]) -> None:
    """No ConfigMap istio-canary: canary's mesh config is unknown (its trust domain, its
    root namespace): not probed, error, never pass."""
    both = plan_both(cluster({"istio.io/rev": "canary"}))
    assert both.endpoints() == set()
    reasons = excluded(both)
    assert any("'canary'" in r and "istio-canary" in r for r in reasons), reasons
    assert all(v == Verdict.ERROR for v in both.required().values())
    errors = [r for r in both.findings() if r.verdict == Verdict.ERROR]
    assert [r.evidence.get("notProbed") for r in errors] == [True]


def test_one_unknown_pod_keeps_the_whole_port_from_passing(
    plan_both: Callable[..., Both],
) -> None:
    """a-0 is the default revision's, a-1 (pod label istio.io/rev in a namespace without
    injection labels) an unknown revision's: the port's traffic also reaches a-1, so
    --require strict cannot pass on the port even though a-0 is STRICT."""
    pods = [
        pod("a-0", "10.0.0.1"),
        pod("a-1", "10.0.0.2", labels={"app": "a", "istio.io/rev": "x"}),
    ]
    both = plan_both(cluster({}, pods=pods))
    assert both.endpoints() == {"10.0.0.1:8080"}
    assert both.required()[STRICT] == Verdict.ERROR
    assert both.required()["require-sidecar:shop/a:80"] == Verdict.ERROR


def test_revision_tag_resolves_to_its_revision(plan_both: Callable[..., Both]) -> None:
    """istio.io/rev=prod names a tag: its webhook (istio.io/tag=prod, istio.io/rev=canary)
    injects canary's proxy, whose ConfigMap is istio-canary (there is no istio-prod)."""
    both = plan_both(
        cluster(
            {"istio.io/rev": "prod"},
            mesh_cm("istio-canary", "trustDomain: cluster.local\n"),
            tag_webhook("prod", "canary"),
        )
    )
    assert both.endpoints() == {"10.0.0.1:8080"}
    assert both.required()[STRICT] == Verdict.PASS


def test_revision_tag_to_other_trust_domain_is_not_probed(plan_both: Callable[..., Both]) -> None:
    both = plan_both(
        cluster(
            {"istio.io/rev": "prod"},
            mesh_cm("istio-canary", "trustDomain: canary.example\n"),
            tag_webhook("prod", "canary"),
        )
    )
    assert both.endpoints() == set()
    assert any("'canary'" in r and "canary.example" in r for r in excluded(both))


def test_unresolvable_tag_fails_closed(plan_both: Callable[..., Both]) -> None:
    """istio.io/rev=prod: neither a ConfigMap istio-prod nor a tag webhook for prod."""
    both = plan_both(cluster({"istio.io/rev": "prod"}, mesh_cm("istio", "{}\n")))
    assert both.endpoints() == set()
    assert any("'prod'" in r for r in excluded(both))
    assert both.required()[STRICT] == Verdict.ERROR


def test_tag_defined_twice_for_different_revisions_fails_closed(
    plan_both: Callable[..., Both],
) -> None:
    """Two webhooks claim tag prod for different revisions: which one the API server
    calls first is not something the plan can know."""
    both = plan_both(
        cluster(
            {"istio.io/rev": "prod"},
            mesh_cm("istio-a", "{}\n"),
            mesh_cm("istio-b", "{}\n"),
            tag_webhook("prod", "a", "tag-one"),
            tag_webhook("prod", "b", "tag-two"),
        )
    )
    assert both.endpoints() == set()
    assert any("naming different revisions" in r for r in excluded(both))


def test_injector_annotation_beats_the_namespace_label(plan_both: Callable[..., Both]) -> None:
    """The pod was injected by canary (annotation istio.io/rev, written by the
    injector) although the namespace now says stable (relabelled, not restarted): the
    running proxy is canary's."""
    both = plan_both(
        cluster(
            {"istio.io/rev": "stable"},
            mesh_cm("istio-stable", "trustDomain: cluster.local\n"),
            mesh_cm("istio-canary", "trustDomain: canary.example\n"),
            pods=[pod("a-0", "10.0.0.1", {"istio.io/rev": "canary"})],
        )
    )
    assert both.endpoints() == set()
    assert any("'canary'" in r for r in excluded(both))


def test_status_annotation_revision_counts(plan_both: Callable[..., Both]) -> None:
    """No istio.io/rev annotation, but the injector's status records revision canary."""
    p = pod("a-0", "10.0.0.1")
    p["metadata"]["annotations"]["sidecar.istio.io/status"] = (
        '{"containers":["istio-proxy"],"revision":"canary"}'
    )
    both = plan_both(cluster({"istio-injection": "enabled"}, pods=[p]))
    assert both.endpoints() == set()
    assert any("'canary'" in r and "istio-canary" in r for r in excluded(both))


def test_revision_annotation_that_is_no_name_is_never_looked_up(tmp_path: Path) -> None:
    """Annotations are free text: a value that is no revision name fails closed without
    being put into an API path."""
    hostile = "../../secrets/x"
    objs = cluster({}, pods=[pod("a-0", "10.0.0.1", {"istio.io/rev": hostile})])
    with FakeKube() as kube:
        kube.add_all(objs)
        plan = build_plan(discover(kube.api_client(), Options()), REQ)
        assert not any("secrets" in c.path for c in kube.calls)
    assert not plan.targets_file.targets
    assert any("is not a revision name" in r.reason for r in plan.findings)


def test_flag_revision_plans_its_pods_and_checks_the_others(
    plan_both: Callable[..., Both],
) -> None:
    """--revision canary: the plan's trust domain is canary's; pods of the default
    revision (istio-injection=enabled) run the default istiod's proxy, whose mesh
    config (ConfigMap istio) has another trust domain: those are not probed."""
    objs = [
        kb.namespace("istio-system"),
        kb.namespace("shop", {"istio.io/rev": "canary"}),
        kb.namespace("old", {"istio-injection": "enabled"}),
        mesh_cm("istio", "trustDomain: old.example\n"),
        mesh_cm("istio-canary", "trustDomain: new.example\n"),
        kb.peer_auth("default", "istio-system", "STRICT"),
        kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
        pod("a-0", "10.0.0.1"),
        kb.service("b", "old", {"app": "b"}, [kb.sport(80, 8080)]),
        kb.pod("b-0", "old", {"app": "b"}, ip="10.0.1.1", sa="b"),
    ]
    both = plan_both(objs, revision="canary")
    assert both.live.targets_file.trust_domain == "new.example"
    assert both.endpoints() == {"10.0.0.1:8080"}
    assert both.required()[STRICT] == Verdict.PASS
    assert both.required()["require-strict:old/b:80"] == Verdict.ERROR
    assert any("'default'" in r and "old.example" in r for r in excluded(both))


def test_root_namespace_is_the_workloads_own_revisions(plan_both: Callable[..., Both]) -> None:
    """The mesh-wide PeerAuthentication level is the *pod's* istiod's rootNamespace:
    canary's root is mesh-root (STRICT there); the default revision's is istio-system
    (nothing there: PERMISSIVE)."""
    objs = [
        kb.namespace("istio-system"),
        kb.namespace("mesh-root"),
        kb.namespace("shop", {"istio.io/rev": "canary"}),
        kb.namespace("old", {"istio-injection": "enabled"}),
        mesh_cm("istio-canary", "rootNamespace: mesh-root\n"),
        kb.peer_auth("default", "mesh-root", "STRICT"),
        kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
        pod("a-0", "10.0.0.1"),
        kb.service("b", "old", {"app": "b"}, [kb.sport(80, 8080)]),
        kb.pod("b-0", "old", {"app": "b"}, ip="10.0.1.1", sa="b"),
    ]
    both = plan_both(objs)
    expects = {t.name: t.expect for t in both.live.targets_file.targets}
    assert expects == {"shop/a:80": Expect.STRICT, "old/b:80": Expect.PERMISSIVE}
    assert both.required()[STRICT] == Verdict.PASS
    assert both.required()["require-strict:old/b:80"] == Verdict.FAIL


def test_revision_mesh_config_that_is_not_yaml_fails_closed(
    plan_both: Callable[..., Both],
) -> None:
    both = plan_both(cluster({"istio.io/rev": "canary"}, mesh_cm("istio-canary", "[: nope\n")))
    assert both.endpoints() == set()
    assert any("unusable" in r for r in excluded(both))
    assert both.required()[STRICT] == Verdict.ERROR


def test_configmap_without_mesh_key_is_no_mesh_config(plan_both: Callable[..., Both]) -> None:
    both = plan_both(
        cluster({"istio.io/rev": "canary"}, kb.configmap("istio-canary", "istio-system", {}))
    )
    assert both.endpoints() == set()
    assert any("has no key 'mesh'" in r for r in excluded(both))


def test_sidecarless_pods_have_no_revision(plan_both: Callable[..., Both]) -> None:
    """A namespace labelled for an unknown revision but whose pod has no proxy: no
    mesh config applies; it is probed as a plaintext workload, and require-sidecar fails."""
    both = plan_both(
        cluster({"istio.io/rev": "gone"}, pods=[pod("a-0", "10.0.0.1", sidecar=False)])
    )
    assert both.endpoints() == {"10.0.0.1:8080"}
    assert both.required()["require-sidecar:shop/a:80"] == Verdict.FAIL


def test_forbidden_revision_configmap_fails_closed_live() -> None:
    """The discovery RBAC names only the istio ConfigMap: a 403 on istio-canary is an
    unknown mesh config (error), not the end of the plan."""
    objs = cluster({"istio.io/rev": "canary"}, mesh_cm("istio-canary", "{}\n"))
    with FakeKube() as kube:
        kube.add_all(objs)
        kube.forbid("get", "configmaps")
        plan = build_plan(discover(kube.api_client(), Options()), REQ)
    assert not plan.targets_file.targets
    assert any("forbidden" in r.reason and "canary" in r.reason for r in plan.findings)
    req = {r.target: r.verdict for r in plan.findings if r.check == "require-strict"}
    assert req == {"shop/a:80": Verdict.ERROR}


def test_trust_domain_flag_holds_for_every_revision() -> None:
    """--trust-domain says what the mesh's trust domain is, for every revision."""
    objs = cluster({"istio.io/rev": "canary"}, mesh_cm("istio-canary", "trustDomain: x.y\n"))
    with FakeKube() as kube:
        kube.add_all(objs)
        plan = build_plan(discover(kube.api_client(), Options(trust_domain="forced.td")), REQ)
    assert [str(e) for t in plan.targets_file.targets for e in t.endpoints] == ["10.0.0.1:8080"]


def test_one_revision_mesh_makes_no_extra_calls() -> None:
    """The common case costs nothing: injected pods carry the injector's istio.io/rev,
    so no tag list and no other ConfigMap is read."""
    objs = cluster(
        {"istio-injection": "enabled"},
        mesh_cm("istio", "{}\n"),
        pods=[pod("a-0", "10.0.0.1", {"istio.io/rev": "default"})],
    )
    with FakeKube() as kube:
        kube.add_all(objs)
        discover(kube.api_client(), Options())
        paths = {c.path for c in kube.calls}
    assert not any("mutatingwebhook" in p for p in paths)
    assert {p for p in paths if "/configmaps/" in p} == {
        "/api/v1/namespaces/istio-system/configmaps/istio",
        "/api/v1/namespaces/istio-system/configmaps/istio-ca-root-cert",
    }


def test_manifest_pods_injected_by_a_revision_namespace(tmp_path: Path) -> None:
    """A Deployment-less pod from YAML not yet applied, in a canary namespace: the
    injector will be canary's (a hand-set istio.io/rev annotation is overwritten by it)."""
    p = copy.deepcopy(pod("a-0", "10.0.0.1", {"istio.io/rev": "default"}, sidecar=False))
    p["status"] = {"phase": "Running"}
    objs = cluster(
        {"istio.io/rev": "canary"},
        mesh_cm("istio-canary", "trustDomain: c.example\n"),
        pods=[p],
    )
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all(objs))
    plan = build_plan(load_manifests([f]), REQ)
    assert any("'canary'" in r.reason and "c.example" in r.reason for r in plan.findings)
    req = {r.target: r.verdict for r in plan.findings if r.check == "require-strict"}
    assert req == {"shop/a:80": Verdict.ERROR}


def test_revision_that_turns_interception_off(plan_both: Callable[..., Both]) -> None:
    """canary's mesh config sets ``defaultConfig.interceptionMode: NONE``: its injection
    template then adds no istio-init (injection-template.yaml ``$noInitContainer``), so
    nothing redirects inbound traffic to Envoy - plaintext reaches the app whatever the
    PeerAuthentication. The default revision's pods stay captured."""
    objs = [
        kb.namespace("istio-system"),
        kb.namespace("shop", {"istio.io/rev": "canary"}),
        kb.namespace("old", {"istio-injection": "enabled"}),
        mesh_cm("istio-canary", "defaultConfig:\n  interceptionMode: NONE\n"),
        kb.peer_auth("default", "istio-system", "STRICT"),
        kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
        pod("a-0", "10.0.0.1"),
        kb.service("b", "old", {"app": "b"}, [kb.sport(80, 8080)]),
        kb.pod("b-0", "old", {"app": "b"}, ip="10.0.1.1", sa="b"),
    ]
    both = plan_both(objs)
    expects = {t.name: t.expect for t in both.live.targets_file.targets}
    assert expects == {"shop/a:80": Expect.NONE, "old/b:80": Expect.STRICT}
    assert both.required()[STRICT] == Verdict.FAIL
    assert "defaultConfig.interceptionMode NONE" in " ".join(r.reason for r in both.live.findings)


def test_proxy_config_annotation_beats_the_revision_default(
    plan_both: Callable[..., Both],
) -> None:
    """The pod's ``proxy.istio.io/config`` is merged over the mesh defaultConfig by the
    injector (pkg/kube/inject/webhook.go): REDIRECT there keeps the pod captured."""
    p = pod("a-0", "10.0.0.1", {"proxy.istio.io/config": "interceptionMode: REDIRECT\n"})
    both = plan_both(
        cluster(
            {"istio.io/rev": "canary"},
            mesh_cm("istio-canary", "defaultConfig:\n  interceptionMode: NONE\n"),
            pods=[p],
        )
    )
    assert [t.expect for t in both.live.targets_file.targets] == [Expect.STRICT]


def test_revision_whose_root_namespace_is_the_tenants_own(plan_both: Callable[..., Both]) -> None:
    """canary's rootNamespace is shop itself: shop's namespace-wide policy becomes the
    mesh level for canary's proxies and a selector policy there is ignored
    (ComposePeerAuthentication: workload level only outside the root namespace)."""
    objs = cluster(
        {"istio.io/rev": "canary"},
        mesh_cm("istio-canary", "rootNamespace: shop\n"),
        kb.peer_auth("default", "shop", "STRICT"),
        kb.peer_auth("off", "shop", "DISABLE", selector={"app": "a"}),
    )
    both = plan_both(objs)
    assert [t.expect for t in both.live.targets_file.targets] == [Expect.STRICT]
    assert both.required()[STRICT] == Verdict.PASS


def test_tenant_copy_of_a_revision_configmap_is_not_its_mesh_config(
    plan_both: Callable[..., Both],
) -> None:
    """istiod reads istio-canary only from its own namespace (getMeshConfigSources): a
    tenant's ConfigMap of that name in shop decides nothing; canary stays unknown."""
    tenant = kb.configmap("istio-canary", "shop", {"mesh": "trustDomain: cluster.local\n"})
    both = plan_both(cluster({"istio.io/rev": "canary"}, tenant))
    assert both.endpoints() == set()
    assert both.required()[STRICT] == Verdict.ERROR


def test_hand_made_sidecar_without_revision_marks_is_the_plans_revision(
    plan_both: Callable[..., Both],
) -> None:
    """No istio.io/rev annotation, no revision in the status, no injection label: nothing
    says whose proxy it is, so the revision the user named (--revision) is assumed."""
    objs = [
        kb.namespace("istio-system"),
        kb.namespace("shop"),
        mesh_cm("istio-canary", "trustDomain: canary.example\n"),
        kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
        pod("a-0", "10.0.0.1"),
    ]
    both = plan_both(objs, revision="canary")
    assert both.targets()["shop/a:80"].identity == "spiffe://canary.example/ns/shop/sa/a"


def test_revision_lookups_are_bounded() -> None:
    """Forty pods each naming their own revision: at most MAX_REVISIONS ConfigMaps are
    asked for; the rest are unknown (error), never read."""
    from jobs.plan.meshconfig import MAX_REVISIONS

    pods = [
        pod(f"a-{i}", f"10.0.2.{i + 1}", labels={"app": "a", "istio.io/rev": f"r{i}"})
        for i in range(40)
    ]
    with FakeKube() as kube:
        kube.add_all(cluster({}, pods=pods))
        plan = build_plan(discover(kube.api_client(), Options()), REQ)
        got = [c.path for c in kube.calls if "/configmaps/istio-r" in c.path]
    assert len(got) == MAX_REVISIONS
    assert not plan.targets_file.targets
    assert any(f"more than {MAX_REVISIONS} revisions" in r.reason for r in plan.findings)


def test_default_tag_moves_injection_enabled_namespaces(
    plan_both: Callable[..., Both], tmp_path: Path
) -> None:
    """``istioctl tag set default --revision canary`` makes the tag's webhook serve
    istio-injection=enabled namespaces (revision-tags-mwc.yaml adds the namespace./object.
    webhooks for the default tag). A cluster's injected pods say so themselves
    (istio.io/rev: canary, both paths); pods from manifests not yet created are
    resolved through the tag webhook the manifests hold. Canary's trust domain is not
    the plan's: not probed either way."""
    extra = (
        mesh_cm("istio", "trustDomain: cluster.local\n"),
        mesh_cm("istio-canary", "trustDomain: canary.example\n"),
        tag_webhook("default", "canary"),
    )
    annotated = pod("a-0", "10.0.0.1", {"istio.io/rev": "canary"})
    both = plan_both(cluster({"istio-injection": "enabled"}, *extra, pods=[annotated]))
    assert both.endpoints() == set()
    assert any("'canary'" in r and "canary.example" in r for r in excluded(both))
    assert both.required()[STRICT] == Verdict.ERROR
    p = pod("a-0", "10.0.0.1", sidecar=False)
    p["status"] = {"phase": "Running"}
    f = tmp_path / "unapplied.yaml"
    f.write_text(yaml.safe_dump_all(cluster({"istio-injection": "enabled"}, *extra, pods=[p])))
    plan = build_plan(load_manifests([f]), REQ)
    assert any("'canary'" in r.reason and "canary.example" in r.reason for r in plan.findings)


def test_opted_out_pod_in_a_revision_namespace_is_not_that_revisions(
    plan_both: Callable[..., Both],
) -> None:
    """Label sidecar.istio.io/inject=false keeps canary's webhook away (objectSelector
    NotIn ["false"]): a sidecar such a pod still runs was not made by canary, and no
    label names another revision - the plan's own is assumed, not canary's unknown one."""
    p = pod("a-0", "10.0.0.1", labels={"app": "a", "sidecar.istio.io/inject": "false"})
    both = plan_both(cluster({"istio.io/rev": "canary"}, pods=[p]))
    assert both.endpoints() == {"10.0.0.1:8080"}
    assert both.required()[STRICT] == Verdict.PASS
