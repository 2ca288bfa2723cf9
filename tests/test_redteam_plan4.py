"""Hostile and unusual clusters, fourth sweep (issue 17): the probe's egress scope (Sidecar
resources, Service exportTo) and per-workload control-plane revisions. Cases not in
test_plan_sidecar*.py, test_plan_revisions.py or test_redteam_plan*.py. Each case is
planned from YAML and from the fake API server (``plan_both``: the two must agree), and
cites the Istio behaviour it encodes. Cases marked *fixed* were answered wrongly before.

Istio sources: istio/istio at 86c9f01 (2026-08).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.plan.manifests import load_manifests
from jobs.plan.planner import build_plan
from jobs.plan.policy.client import Outcome
from jobs.plan.policy.sidecar import exported_to
from probe.results import Verdict
from tests import kubebuild as kb
from tests.plancase import REQ, Both, a_pod

Obj = dict[str, Any]
Plan = Callable[..., Both]
PROBE_NS = "mtlsprobe"
STRICT = "require-strict:shop/a:80"
SIDECAR = "require-sidecar:shop/a:80"
T0 = "2026-01-01T00:00:00Z"
T1 = "2026-02-01T00:00:00Z"


def cluster(*extra: Obj, mesh: str | None = None, ports: list[Obj] | None = None) -> list[Obj]:
    """shop/a (one injected pod, port 80 -> 8080) under STRICT, the probe's namespace, an
    optional mesh config (``mesh``: the ``mesh`` key of istio-system/istio) and ``extra``."""
    objs = [
        kb.namespace("shop", {"istio-injection": "enabled"}),
        kb.peer_auth("default", "shop", "STRICT"),
        kb.namespace(PROBE_NS, {"istio-injection": "enabled"}),
        a_pod(),
        kb.service("a", "shop", {"app": "a"}, ports or [kb.sport(80, 8080)]),
        *extra,
    ]
    if mesh is not None:
        objs.append(kb.configmap("istio", "istio-system", {"mesh": mesh}))
    return objs


def annotate(objs: list[Obj], kind: str, ann: dict[str, str]) -> list[Obj]:
    o = next(o for o in objs if o["kind"] == kind)
    o["metadata"].setdefault("annotations", {}).update(ann)
    return objs


def outcomes(b: Both) -> set[str]:
    return {e.client.outcome for e in b.live.edges}


def by_target(b: Both) -> dict[str, Any]:
    return {r.target: r for r in b.findings()}


# ---- Service exportTo ----------------------------------------------------------------------


@pytest.mark.parametrize("mesh_default", ['["."]', '["shop"]', '["~"]', '["other", "."]'])
def test_mesh_default_service_export_to_hides_unannotated_services(
    plan_both: Plan, mesh_default: str
) -> None:
    """*fixed*. push_context.go ``serviceExportTo``: a Service without the exportTo
    annotation takes MeshConfig ``defaultServiceExportTo`` (``initDefaultExportMaps``);
    with ``["."]`` shop/a is private to shop, so the probe's sidecar in mtlsprobe has it in
    no scope. The plan read only the annotation and passed require-strict."""
    b = plan_both(
        cluster(
            mesh=f"defaultServiceExportTo: {mesh_default}\n"
            "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"
        )
    )
    assert outcomes(b) == {Outcome.FAIL}
    assert all(not e.client.mtls for e in b.live.edges)
    assert b.required()[STRICT] == Verdict.FAIL
    f = by_target(b)["Service shop/a"]
    assert f.verdict == Verdict.FAIL and "defaultServiceExportTo" in f.reason


@pytest.mark.parametrize("mesh_default", ['["*"]', '["mtlsprobe"]', "[]", '["~", "*"]'])
def test_mesh_default_that_reaches_the_probe(plan_both: Plan, mesh_default: str) -> None:
    """``*`` (public wins over ``~``), the probe's namespace, and an empty list (a proto
    repeated field left empty is unset: ``DefaultMeshConfig``'s ``*``) keep it in scope."""
    b = plan_both(cluster(mesh=f"defaultServiceExportTo: {mesh_default}\n"))
    assert outcomes(b) == {Outcome.OK}
    assert b.required()[STRICT] == Verdict.PASS


def test_annotation_overrides_the_mesh_default(plan_both: Plan) -> None:
    """``serviceExportTo``: a non-empty annotation replaces the mesh default entirely."""
    objs = annotate(
        cluster(mesh='defaultServiceExportTo: ["."]\n'),
        "Service",
        {"networking.istio.io/exportTo": "mtlsprobe"},
    )
    assert plan_both(objs).required()[STRICT] == Verdict.PASS


@pytest.mark.parametrize("value", [",", " ", " , ", ",,"])
def test_annotation_of_only_separators_exports_nowhere(plan_both: Plan, value: str) -> None:
    """*fixed*. pilot/pkg/serviceregistry/kube/conversion.go: a non-empty annotation is
    split on "," and each part trimmed, empty parts kept: the set is {""}, neither public
    nor ``~``, exported to a namespace named "" - nobody. The plan dropped the empty parts
    and read it as unset (public)."""
    objs = annotate(cluster(), "Service", {"networking.istio.io/exportTo": value})
    b = plan_both(objs)
    assert all(not e.client.mtls for e in b.live.edges)
    assert b.required()[STRICT] == Verdict.FAIL
    assert by_target(b)["Service shop/a"].verdict == Verdict.FAIL


@pytest.mark.parametrize(
    ("value", "svc_ns", "seen"),
    [
        (".", "mtlsprobe", True),  # private, and the probe is in the Service's namespace
        ("mtlsprobe,~", "shop", False),  # "~" beats named namespaces (initServiceRegistry)
        ("*,~", "shop", True),  # "*" beats "~"
        ("MTLSPROBE", "shop", False),  # namespace names compare exactly
        (" mtlsprobe ", "shop", True),  # each entry is trimmed
        ("mtlsprobe.", "shop", False),
        ("shop", "shop", False),  # exported to its own namespace only
    ],
)
def test_export_to_values(value: str, svc_ns: str, seen: bool) -> None:
    """push_context.go ``initServiceRegistry`` over conversion.go's parsed set."""
    assert exported_to(value, svc_ns, PROBE_NS) is seen


# ---- Sidecar egress hosts -----------------------------------------------------------------


def sidecar(
    name: str = "default",
    ns: str = PROBE_NS,
    *,
    hosts: list[str] | None = None,
    egress: list[Obj] | None = None,
    selector: dict[str, str] | None = None,
    created: str = T0,
    mode: str | None = "REGISTRY_ONLY",
) -> Obj:
    spec: Obj = {}
    if egress is not None:
        spec["egress"] = egress
    elif hosts is not None:
        spec["egress"] = [{"hosts": hosts}]
    if mode is not None:
        spec["outboundTrafficPolicy"] = {"mode": mode}
    if selector is not None:
        spec["workloadSelector"] = {"labels": selector}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
        "spec": spec,
    }


@pytest.mark.parametrize(
    "hosts",
    [
        ["*/*", "~shop/*"],  # excluded in the service's namespace
        ["*/*", "~shop/a.shop.svc.cluster.local"],
        ["shop/*", "~*/*.shop.svc.cluster.local"],  # excluded in the "*" scope
        ["shop/*", "~/a.shop.svc.cluster.local"],  # "~" alone is the "*" namespace
        ["*/*", "~*/*"],
    ],
)
def test_excluded_egress_hosts_are_not_imported(plan_both: Plan, hosts: list[str]) -> None:
    """*fixed*. sidecar.go ``convertIstioListenerToWrapper``: a namespace prefixed ``~``
    (``excludePrefix``) makes the entry an exclusion; ``selectServices`` skips a service
    excluded in its own namespace's or the ``*`` entries before any import is looked at.
    The plan read ``~shop`` as a namespace name, so ``*/*`` imported shop/a and
    require-strict passed while the probe's calls went to BlackHoleCluster."""
    b = plan_both(cluster(sidecar(hosts=hosts)))
    assert outcomes(b) == {Outcome.FAIL}
    assert b.required()[STRICT] == Verdict.FAIL
    assert by_target(b)["Sidecar mtlsprobe/default"].verdict == Verdict.FAIL


@pytest.mark.parametrize(
    "hosts",
    [
        ["*/*", "~other/*"],  # an exclusion in another namespace
        ["*/*", "~shop/b.shop.svc.cluster.local"],  # another host
        ["*/*", "~mtlsprobe/*"],
    ],
)
def test_exclusions_elsewhere_leave_the_target_in_scope(plan_both: Plan, hosts: list[str]) -> None:
    b = plan_both(cluster(sidecar(hosts=hosts)))
    assert outcomes(b) == {Outcome.OK}
    assert b.required()[STRICT] == Verdict.PASS


def test_dot_exclusion_in_the_probes_own_namespace(plan_both: Plan) -> None:
    """``~./*``: the prefix is cut first, then ``.`` becomes the Sidecar's namespace - a
    service in the probe's own namespace is excluded, shop/a is not."""
    objs = cluster(
        sidecar(hosts=["*/*", "~./*"]),
        kb.pod("m-0", PROBE_NS, {"app": "m"}, ip="10.0.0.9", sa="m", ports=[("http", 8080)]),
        kb.service("m", PROBE_NS, {"app": "m"}, [kb.sport(80, 8080)]),
        kb.peer_auth("default", PROBE_NS, "STRICT"),
    )
    b = plan_both(objs)
    by_edge = {e.target: e.client.outcome for e in b.live.edges}
    assert by_edge["shop/a:80"] == Outcome.OK
    assert by_edge["mtlsprobe/m:80"] == Outcome.FAIL


# ---- which Sidecar applies to the probe pods ----------------------------------------------


@pytest.mark.parametrize(
    "selector",
    [
        {"batch.kubernetes.io/job-completion-index": "0"},  # shard 0 of every indexed Job
        {"app.kubernetes.io/name": "mtlsprobe", "mtlsprobe.dev/run-id": "r1"},
        {"controller-revision-hash": "abc"},  # a DaemonSet's pods (the sidecar agents)
    ],
)
def test_selector_on_per_run_labels_is_never_a_pass(
    plan_both: Plan, selector: dict[str, str]
) -> None:
    """*fixed*. push_context.go ``getSidecarScope``: a Sidecar whose
    ``workloadSelector.labels`` are a subset of the pod's labels applies, ahead of the
    namespace-wide one. The probe pods also carry labels set per run (the run id, the Job
    and DaemonSet controllers' labels, the completion index): a Sidecar selecting on them
    may apply. The plan matched only the fixed probe labels and passed require-strict
    through the namespace-wide ``*/*``, while the probe pod the selector picks is
    black-holed."""
    narrow = sidecar("narrow", hosts=["./*"], selector=selector)
    wide = sidecar("wide", hosts=["*/*"])
    b = plan_both(cluster(wide, narrow))
    assert outcomes(b) == {Outcome.UNKNOWN}
    assert all(not e.client.mtls for e in b.live.edges)
    assert b.required()[STRICT] != Verdict.PASS
    f = by_target(b)["Sidecar mtlsprobe/narrow"]
    assert f.verdict == Verdict.ERROR and "per-run" in f.reason


def test_selector_on_per_run_labels_that_imports_the_target_changes_nothing(
    plan_both: Plan,
) -> None:
    narrow = sidecar("narrow", hosts=["shop/*"], selector={"job-name": "x"})
    b = plan_both(cluster(sidecar("wide", hosts=["*/*"]), narrow))
    assert outcomes(b) == {Outcome.OK}
    assert b.required()[STRICT] == Verdict.PASS


def test_selector_with_a_fixed_label_that_differs_is_not_a_maybe(plan_both: Plan) -> None:
    """A selector that also names a fixed label with another value selects no probe pod."""
    narrow = sidecar("narrow", hosts=["./*"], selector={"job-name": "x", "app": "other"})
    b = plan_both(cluster(sidecar("wide", hosts=["*/*"]), narrow))
    assert b.required()[STRICT] == Verdict.PASS


# ---- the probe's own control-plane revision -------------------------------------------------


def probe_ns_cluster(probe_labels: dict[str, str], *extra: Obj) -> list[Obj]:
    """shop/a of revision canary (namespace istio.io/rev=canary, so canary's mesh config is
    read on both paths), STRICT, and the probe's namespace with ``probe_labels``."""
    return [
        kb.namespace("shop", {"istio.io/rev": "canary"}),
        kb.peer_auth("default", "shop", "STRICT"),
        kb.namespace(PROBE_NS, probe_labels),
        a_pod(),
        kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
        kb.configmap("istio", "istio-system", {"mesh": "trustDomain: cluster.local\n"}),
        *extra,
    ]


def test_probe_of_another_revision_whose_mesh_hides_services(plan_both: Plan) -> None:
    """*fixed*. The probe pods (labelled ``sidecar.istio.io/inject=true``) in a namespace
    labelled ``istio.io/rev=canary`` are injected by canary's webhook
    (mutatingwebhook.yaml ``rev.namespace.``), and canary's istiod pushes its own mesh
    config to them (pilot/pkg/bootstrap/mesh.go ``getMeshConfigMapName``: istio-canary):
    with ``defaultServiceExportTo: ["."]`` shop/a is in no scope of the probe's sidecar. The
    plan read the client side from the default revision and passed require-strict."""
    canary = kb.configmap(
        "istio-canary", "istio-system", {"mesh": 'defaultServiceExportTo: ["."]\n'}
    )
    b = plan_both(probe_ns_cluster({"istio.io/rev": "canary"}, canary))
    assert b.required()[STRICT] != Verdict.PASS
    assert all(not e.client.mtls for e in b.live.edges)
    f = by_target(b)[f"Namespace {PROBE_NS}"]
    assert f.verdict == Verdict.ERROR and "'canary'" in f.reason and "--revision" in f.reason


def test_probe_of_another_revision_with_the_same_client_settings(plan_both: Plan) -> None:
    """Held: the same client-side settings (trust domain, exportTo defaults, auto mTLS)
    in canary's mesh config: nothing the probe's sidecar reads differs, the plan stands."""
    canary = kb.configmap("istio-canary", "istio-system", {"mesh": "trustDomain: cluster.local\n"})
    b = plan_both(probe_ns_cluster({"istio.io/rev": "canary"}, canary))
    assert b.required()[STRICT] == Verdict.PASS


def test_probe_of_a_revision_without_mesh_config_fails_closed(plan_both: Plan) -> None:
    """*fixed*. A revision that does not exist (no istio-gone ConfigMap, no tag): unknown,
    never a pass (no webhook would even inject the probe pods)."""
    b = plan_both(probe_ns_cluster({"istio.io/rev": "gone"}))
    assert b.required()[STRICT] != Verdict.PASS
    assert "'gone'" in by_target(b)[f"Namespace {PROBE_NS}"].reason


def test_probe_namespace_with_injection_disabled(plan_both: Plan) -> None:
    """*fixed*. mutatingwebhook.yaml: ``istio-injection`` with any value but ``enabled``
    matches no webhook, and the ``object.`` webhook (pod label inject=true) requires the
    namespace label to be absent: the probe pods run without a sidecar, so no mesh check
    can verify mTLS."""
    objs = cluster()
    for o in objs:
        if o["kind"] == "Namespace" and o["metadata"]["name"] == PROBE_NS:
            o["metadata"]["labels"] = {"istio-injection": "disabled"}
    b = plan_both(objs)
    assert b.required()[STRICT] != Verdict.PASS
    assert "no injection webhook" in by_target(b)[f"Namespace {PROBE_NS}"].reason


# ---- held: cases that were already right --------------------------------------------------


def test_port_listener_covering_one_port_of_two(plan_both: Plan) -> None:
    """sidecar.go ``needsPortMatch`` / ``GetEgressListenerForRDS``: a listener on port 80
    imports only port 80; port 9090 has no listener, so it is not in scope."""
    egress = [{"port": {"number": 80, "protocol": "HTTP", "name": "h"}, "hosts": ["shop/*"]}]
    objs = cluster(
        sidecar(egress=egress), ports=[kb.sport(80, 8080), kb.sport(9090, 8080, name="m")]
    )
    b = plan_both(objs)
    by_edge = {e.target: e.client.outcome for e in b.live.edges}
    assert by_edge == {"shop/a:80": Outcome.OK, "shop/a:9090": Outcome.FAIL}
    assert b.required()[STRICT] == Verdict.PASS
    assert b.required()["require-strict:shop/a:9090"] == Verdict.FAIL


def test_other_namespace_wildcard_falls_back_to_the_star_entry(plan_both: Plan) -> None:
    """``selectServices``: entries of istio-system apply to istio-system's services only;
    shop/a is imported by ``*/*.cluster.local`` (the ``*`` entries)."""
    b = plan_both(cluster(sidecar(hosts=["istio-system/*", "*/*.cluster.local"])))
    assert b.required()[STRICT] == Verdict.PASS
    b = plan_both(cluster(sidecar(hosts=["istio-system/*", "*/*.other.local"])))
    assert b.required()[STRICT] == Verdict.FAIL


def test_selector_sidecar_and_two_namespace_wide_ones(plan_both: Plan) -> None:
    """``initSidecarScopes``: selector Sidecars first, then selector-less ones, each oldest
    first; the probe pods' selector one wins over both namespace-wide ones."""
    b = plan_both(
        cluster(
            sidecar("old-wide", hosts=["*/*"], created=T0),
            sidecar("new-wide", hosts=["./*"], created=T1),
            sidecar("probe", hosts=["./*"], selector={"app.kubernetes.io/name": "mtlsprobe"}),
        )
    )
    assert b.required()[STRICT] == Verdict.FAIL
    assert "ignored" in by_target(b)["Sidecar mtlsprobe/new-wide"].reason


@pytest.mark.parametrize(
    ("ns_labels", "injected"),
    [
        ({"istio-injection": "disabled"}, False),  # object. webhook needs the label absent
        ({"istio-injection": "Enabled"}, False),  # label selectors compare exactly
        ({}, True),  # object.sidecar-injector: pod label inject=true
        ({"istio.io/rev": ""}, False),  # present but empty: no webhook (DoesNotExist fails)
    ],
)
def test_inject_true_label_against_namespace_labels(
    ns_labels: dict[str, str], injected: bool
) -> None:
    """mutatingwebhook.yaml: the ``object.`` webhook selects pods labelled
    ``sidecar.istio.io/inject=true`` only in namespaces without ``istio-injection`` and
    ``istio.io/rev``."""
    from jobs.plan.injection import would_inject

    pod = kb.pod("p", "shop", {"app": "p", "sidecar.istio.io/inject": "true"}, ip="10.0.0.5")
    assert would_inject(pod, ns_labels) is injected


# ---- Sidecars labelled for a control-plane revision ------------------------------------------


def labelled(obj: Obj, rev: str) -> Obj:
    obj["metadata"]["labels"] = {"istio.io/rev": rev}
    return obj


def test_sidecar_labelled_for_another_revision_is_not_read(plan_both: Plan) -> None:
    """*fixed*. pilot/pkg/config/kube/crdclient ``inRevision`` (pkg/config/model.go
    ``LabelsInRevision``): istiod of revision ``default`` (the chart's REVISION env) reads
    only config objects without an ``istio.io/rev`` label or labelled ``default``. The
    older ``*/*`` Sidecar labelled for canary is invisible to the probe's istiod, so the
    newer ``./*`` one applies. The plan picked the older one and passed."""
    old = labelled(sidecar("canary-wide", hosts=["*/*"], created=T0), "canary")
    new = sidecar("wide", hosts=["./*"], created=T1)
    b = plan_both(cluster(old, new))
    assert outcomes(b) == {Outcome.FAIL}
    assert b.required()[STRICT] == Verdict.FAIL
    f = by_target(b)["Sidecar mtlsprobe/canary-wide"]
    assert f.verdict == Verdict.SKIP and "istio.io/rev='canary'" in f.reason


def test_sidecar_labelled_for_the_probes_revision_is_read(plan_both: Plan) -> None:
    b = plan_both(cluster(labelled(sidecar(hosts=["./*"]), "default")))
    assert b.required()[STRICT] == Verdict.FAIL
    # the probe of revision canary (same client settings) reads canary's Sidecars only
    canary = kb.configmap("istio-canary", "istio-system", {"mesh": "trustDomain: cluster.local\n"})
    objs = probe_ns_cluster(
        {"istio.io/rev": "canary"}, canary, labelled(sidecar(hosts=["./*"]), "canary")
    )
    assert plan_both(objs).required()[STRICT] == Verdict.FAIL
    objs = probe_ns_cluster(
        {"istio.io/rev": "canary"}, canary, labelled(sidecar(hosts=["./*"]), "default")
    )
    assert plan_both(objs).required()[STRICT] == Verdict.PASS


def test_peer_authentication_labelled_for_another_revision_is_not_read(plan_both: Plan) -> None:
    """*fixed*. ``LabelsInRevision`` holds for PeerAuthentication too: shop/a's proxy is of
    the default revision, whose istiod never reads a STRICT policy labelled canary, so the
    port is PERMISSIVE (the mesh default). The plan read it as STRICT and passed
    require-strict on a port that accepts plaintext."""
    objs = [
        kb.namespace("shop", {"istio-injection": "enabled"}),
        labelled(kb.peer_auth("default", "shop", "STRICT"), "canary"),
        kb.namespace(PROBE_NS, {"istio-injection": "enabled"}),
        a_pod(),
        kb.service("a", "shop", {"app": "a"}, [kb.sport(80, 8080)]),
    ]
    b = plan_both(objs)
    assert b.required()[STRICT] != Verdict.PASS
    assert b.targets()["shop/a:80"].expect.value != "STRICT"
    objs[1] = labelled(kb.peer_auth("default", "shop", "STRICT"), "default")
    assert plan_both(objs).required()[STRICT] == Verdict.PASS


def test_destination_rule_labelled_for_another_revision_is_not_read(plan_both: Plan) -> None:
    """*fixed*. The probe's istiod (default) does not read a DISABLE DestinationRule
    labelled canary: auto mTLS applies to the probe's calls. Conversely a DISABLE rule of
    its own revision turns mTLS off (the plan must not pass then)."""
    dr = kb.dest_rule("a", "shop", "a.shop.svc.cluster.local", "DISABLE")
    b = plan_both(cluster(labelled(dr, "canary")))
    assert outcomes(b) == {Outcome.OK} and all(e.client.mtls for e in b.live.edges)
    dr = kb.dest_rule("a", "shop", "a.shop.svc.cluster.local", "DISABLE")
    b = plan_both(cluster(labelled(dr, "default")))
    assert not any(e.client.mtls for e in b.live.edges)
    assert b.required()[STRICT] != Verdict.PASS


def test_exclusion_past_the_host_bound_is_still_read(tmp_path: Path) -> None:
    """*fixed*. Hosts past MAX_HOSTS were not read at all: harmless for imports (the scope
    only narrows) but an unread ``~shop/*`` exclusion after ``*/*`` widened it, and
    require-strict passed. Exclusions are read to the end of the list."""
    many = ["*/*"] + [f"ns{i}/s.ns{i}.svc.cluster.local" for i in range(12_000)] + ["~shop/*"]
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all(cluster(sidecar(hosts=many)), width=1 << 20))
    plan = build_plan(load_manifests([f]), REQ)
    assert {e.client.outcome for e in plan.edges} == {Outcome.FAIL}
