"""The snapshot discovery produces and the planner consumes.

A ``ClusterSnapshot`` holds the raw bodies of the kinds the plan reads (``KubeObject``:
plain dicts, read through ``jobs.plan.fields``), each admitted once on the way in
(``jobs.plan.admission``), plus the mesh-wide settings read by ``jobs.plan.meshconfig``
and applied here (``apply_mesh_config``, ``pick_mesh_config``).
This module also re-exports those three modules' public names: callers import the
object model from one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobs.plan.admission import DR_TLS_MODES, PA_MODES, Problem, admit
from jobs.plan.fields import (
    ZERO_TIME,
    KubeObject,
    annotations_of,
    created_at,
    is_port,
    labels_of,
    meta,
    name,
    namespace,
    parse_time,
    pod_ip,
    pod_ready,
    port_key,
    ref,
    service_account,
    set_pod_ip,
    spec,
)
from jobs.plan.meshconfig import (
    DEFAULT_OUTBOUND_MODE,
    MESH_KEY,
    MESH_MAX_BYTES,
    MeshSettings,
    Revisions,
    mesh_configmap_name,
    mesh_outbound_mode,
    read_mesh_config,
    revision_name,
    tags_from_webhooks,
)
from probe.constants import DEFAULT_ISTIO_NAMESPACE, MESH_CONFIGMAP

__all__ = [
    "DEFAULT_CLUSTER_DOMAIN",
    "DEFAULT_ISTIO_NAMESPACE",
    "DEFAULT_ROOT_NAMESPACE",
    "DEFAULT_TRUST_DOMAIN",
    "DR_TLS_MODES",
    "KINDS",
    "MESH_CONFIGMAP",
    "MESH_KEY",
    "MESH_MAX_BYTES",
    "PA_MODES",
    "ZERO_TIME",
    "ClusterSnapshot",
    "KubeObject",
    "MeshSettings",
    "Problem",
    "add_revision_mesh",
    "admit",
    "annotations_of",
    "apply_mesh_config",
    "created_at",
    "is_port",
    "labels_of",
    "mesh_configmap_name",
    "meta",
    "name",
    "namespace",
    "parse_time",
    "pick_mesh_config",
    "pod_ip",
    "pod_ready",
    "port_key",
    "read_mesh_config",
    "ref",
    "service_account",
    "set_pod_ip",
    "set_revision_tags",
    "spec",
]

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_ROOT_NAMESPACE = DEFAULT_ISTIO_NAMESPACE  # MeshConfig rootNamespace's default
DEFAULT_CLUSTER_DOMAIN = "cluster.local"


@dataclass
class ClusterSnapshot:
    """Everything the policy engine needs, from one cluster or one set of YAML files.

    ``target_namespaces``: the namespaces whose workloads are planned; ``None``
    means every namespace that has objects here. Objects outside it (the root
    namespace's policies, DestinationRules elsewhere) are still read for policy.
    ``istio_apis``: False when the cluster serves no PeerAuthentication API, so the
    mode everywhere is Istio's default (PERMISSIVE) and the plan says so.
    """

    namespaces: list[KubeObject] = field(default_factory=list)
    pods: list[KubeObject] = field(default_factory=list)
    services: list[KubeObject] = field(default_factory=list)
    endpointslices: list[KubeObject] = field(default_factory=list)
    peerauthentications: list[KubeObject] = field(default_factory=list)
    destinationrules: list[KubeObject] = field(default_factory=list)
    # AuthorizationPolicies (security.istio.io): read by jobs.plan.authz*, nothing else.
    authorizationpolicies: list[KubeObject] = field(default_factory=list)
    # Sidecars (networking.istio.io): the probe's egress scope (jobs.plan.policy.sidecar).
    sidecars: list[KubeObject] = field(default_factory=list)
    root_cert_pem: str | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    target_namespaces: set[str] | None = None
    istio_apis: bool = True
    enable_auto_mtls: bool = True  # MeshConfig enableAutoMtls
    default_dr_export_to: tuple[str, ...] = ("*",)  # MeshConfig defaultDestinationRuleExportTo
    default_service_export_to: tuple[str, ...] = ("*",)  # MeshConfig defaultServiceExportTo
    # MeshConfig outboundTrafficPolicy.mode (jobs.plan.policy.sidecar.mesh_outbound_mode):
    # what a sidecar does with a host its Sidecar resource leaves out.
    outbound_mode: str = DEFAULT_OUTBOUND_MODE
    mesh_config: str | None = None  # "<ns>/<name>" of the mesh ConfigMap read, if any
    interception_mode: str | None = None  # MeshConfig defaultConfig.interceptionMode
    loopback_pods: bool = False  # the lab's pods live on 127/8 (jobs/lab/addresses.py)
    # Other control-plane revisions' mesh configs and revision tags (jobs.plan.meshconfig).
    revisions: Revisions = field(default_factory=Revisions)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def plan_mesh(self) -> MeshSettings:
        """The mesh settings of the plan's own revision, as applied to this snapshot."""
        return MeshSettings(
            self.trust_domain,
            self.root_namespace,
            self.enable_auto_mtls,
            self.default_dr_export_to,
            self.interception_mode,
        )

    def is_target_namespace(self, ns: str) -> bool:
        return self.target_namespaces is None or ns in self.target_namespaces

    def add(self, kind: str, obj: object) -> bool:
        """Admit ``obj`` into the list for ``kind``; a malformed body becomes a Problem."""
        slot = _SLOTS.get(kind)
        if slot is None:
            return False
        problem = admit(kind, obj)
        if problem is not None:
            self.problems.append(problem)
            return False
        assert isinstance(obj, dict)
        getattr(self, slot).append(obj)
        return True

    def sort_as_listed(self) -> None:
        """Every kind in the order the API server lists it (etcd's key order: namespace,
        then name), so objects read from files in any order plan as the live ones do
        (targets are split and numbered in the order pods come). Stable: objects written
        twice keep their order, and the duplicate findings with it."""
        for slot in _SLOTS.values():
            objs: list[KubeObject] = getattr(self, slot)
            objs.sort(key=lambda o: (namespace(o), name(o)))


_SLOTS = {
    "Namespace": "namespaces",
    "Pod": "pods",
    "Service": "services",
    "EndpointSlice": "endpointslices",
    "PeerAuthentication": "peerauthentications",
    "DestinationRule": "destinationrules",
    # AuthorizationPolicy: admitted by shape only; jobs.plan.authz reads the rules.
    "AuthorizationPolicy": "authorizationpolicies",
    # Sidecar: admitted by metadata only; jobs.plan.policy.sidecar reads the spec and turns
    # what it cannot read into findings naming the field.
    "Sidecar": "sidecars",
}
KINDS = tuple(_SLOTS)


# ---- the mesh config, applied -----------------------------------------------------------


def apply_mesh_config(snap: ClusterSnapshot, cm: Mapping[str, Any] | None, where: str) -> None:
    """Read the mesh ConfigMap ``cm`` (found at ``where``, "<ns>/<name>") into ``snap``."""
    if cm is None:
        return
    data = cm.get("data")
    settings, problems = read_mesh_config(data.get(MESH_KEY) if type(data) is dict else None)
    ns, _, cm_name = where.partition("/")
    snap.problems.extend(Problem("ConfigMap", ns, cm_name, p) for p in problems)
    snap.mesh_config = where
    snap.trust_domain = settings.trust_domain or snap.trust_domain
    snap.root_namespace = settings.root_namespace or snap.root_namespace
    if settings.enable_auto_mtls is not None:
        snap.enable_auto_mtls = settings.enable_auto_mtls
    if settings.default_dr_export_to is not None:
        snap.default_dr_export_to = settings.default_dr_export_to
    if settings.default_service_export_to is not None:
        snap.default_service_export_to = settings.default_service_export_to
    mode, problem = mesh_outbound_mode(data.get(MESH_KEY) if type(data) is dict else None)
    snap.outbound_mode = mode
    if problem is not None:
        snap.problems.append(Problem("ConfigMap", ns, cm_name, problem))
    snap.interception_mode = settings.interception_mode or snap.interception_mode


def pick_mesh_config(
    snap: ClusterSnapshot,
    configmaps: list[KubeObject],
    istio_namespace: str = DEFAULT_ISTIO_NAMESPACE,
    revision: str | None = None,
) -> None:
    """From ConfigMaps read out of YAML, apply the one istiod would read and say why the
    others named like it are not the mesh config (a tenant's ``istio`` ConfigMap with a
    ``mesh`` key looks like an attempt to change the mesh's trust domain or root)."""
    want = mesh_configmap_name(revision)
    snap.revisions.plan = revision_name(revision)
    snap.revisions.istio_namespace = istio_namespace
    chosen: Mapping[str, Any] | None = None
    others: dict[str, Mapping[str, Any]] = {}  # revision -> its ConfigMap, the last one
    for cm in configmaps:
        n, ns = name(cm), namespace(cm)
        other = _revision_of_configmap(n)
        if ns == istio_namespace and n != want and other is not None:
            others[other] = cm  # another revision's mesh config (jobs.plan.meshconfig)
            continue
        if n == want and ns == istio_namespace:
            if chosen is not None:
                snap.notes.append(
                    f"ConfigMap {ns}/{n} appears more than once: the last one is read, as "
                    "kubectl apply would leave it"
                )
            chosen = cm
        elif n == MESH_CONFIGMAP or n.startswith(f"{MESH_CONFIGMAP}-"):
            data = cm.get("data")
            if type(data) is dict and MESH_KEY in data:
                snap.notes.append(
                    f"ConfigMap {ns}/{n} is not the mesh config (istiod reads only "
                    f"{istio_namespace}/{want}): ignored"
                )
    apply_mesh_config(snap, chosen, f"{istio_namespace}/{want}")
    for rev, other_cm in sorted(others.items()):
        add_revision_mesh(snap, rev, other_cm, f"{istio_namespace}/{name(other_cm)}")


def _revision_of_configmap(cm_name: str) -> str | None:
    """The revision whose mesh ConfigMap has this name (``istio`` -> default)."""
    if cm_name == MESH_CONFIGMAP:
        return "default"
    if cm_name.startswith(f"{MESH_CONFIGMAP}-") and len(cm_name) > len(MESH_CONFIGMAP) + 1:
        return cm_name[len(MESH_CONFIGMAP) + 1 :]
    return None


def add_revision_mesh(
    snap: ClusterSnapshot, revision: str, cm: Mapping[str, Any] | None, where: str
) -> None:
    """Record the mesh config of a revision other than the plan's (``cm`` None: it
    does not exist). A ConfigMap without a ``mesh`` key is no mesh config: unknown."""
    rv = snap.revisions
    data = cm.get("data") if cm is not None else None
    if cm is None:
        return  # Revisions.mesh_of says no ConfigMap holds it
    if type(data) is not dict or MESH_KEY not in data:
        rv.unknown[revision] = f"ConfigMap {where} has no key {MESH_KEY!r}: no mesh config"
        return
    settings, problems = read_mesh_config(data.get(MESH_KEY))
    if problems:
        rv.unknown[revision] = f"its mesh config {where} is unusable: {problems[0]}"
        return
    rv.meshes[revision] = settings


def set_revision_tags(snap: ClusterSnapshot, webhooks: list[KubeObject]) -> None:
    """Record the revision tags the MutatingWebhookConfigurations ``webhooks`` define."""
    rv = snap.revisions
    rv.tags, clashes = tags_from_webhooks(list(webhooks))
    rv.tag_clashes = set(clashes)
