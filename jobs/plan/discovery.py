"""Read a ``ClusterSnapshot`` from a live cluster: what to list, in which namespaces, and
what of each object to keep. The HTTP is ``jobs.kube.client.Client``'s (paged raw-JSON
lists, a client-side timeout on every call, one-line errors).

Errors: every failure is a ``jobs.kube.errors.KubeError`` (``DiscoveryError`` here, for the
callers; the CLI turns it into exit 64). A 403 names the verb, resource, API group and
user. Istio APIs that are not served (``NotServed``) are not errors: the snapshot records
that and the plan falls back to Istio's default PERMISSIVE with a finding. A forbidden
optional read (the mesh ConfigMap, the root certificate) becomes a note.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jobs.kube.client import Client
from jobs.kube.config import api_client
from jobs.kube.errors import Denied, KubeError, NotFound, NotServed
from jobs.plan.injection import needed_revisions
from jobs.plan.meshconfig import DNS_LABEL, MAX_REVISIONS, TAG_LABEL, revision_name
from jobs.plan.meshroot import ROOT_CERT_CONFIGMAP, no_root_note, root_cert_of
from jobs.plan.objects import (
    ClusterSnapshot,
    KubeObject,
    Problem,
    add_revision_mesh,
    apply_mesh_config,
    labels_of,
    mesh_configmap_name,
    name,
    namespace,
    set_revision_tags,
)

SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "istio-system")
PEER_AUTH_VERSIONS = ("v1", "v1beta1")
DEST_RULE_VERSIONS = ("v1", "v1beta1", "v1alpha3")
AUTHZ_VERSIONS = ("v1", "v1beta1")  # AuthorizationPolicy (jobs.plan.authz)
SIDECAR_VERSIONS = ("v1", "v1beta1", "v1alpha3")  # Sidecar (jobs.plan.policy.sidecar)

# Discovery cannot go on; the message is the one line users see. Every Kubernetes failure
# is one (plan, run and the agent catch this name).
DiscoveryError = KubeError

__all__ = ["DiscoveryError", "Options", "Reader", "api_client", "discover", "slim_pod"]


@dataclass(frozen=True)
class Options:
    namespaces: tuple[str, ...] = ()  # -n; empty: every namespace
    namespace_selector: str | None = None  # --selector (label selector on namespaces)
    include_system: bool = False  # plan kube-system, istio-system, ... as targets too
    trust_domain: str | None = None  # overrides the mesh ConfigMap
    root_namespace: str | None = None  # overrides the mesh ConfigMap
    istio_namespace: str = "istio-system"  # where the mesh ConfigMap lives
    revision: str | None = None  # istiod revision: its mesh ConfigMap is istio-<rev>
    timeout: float = 10.0  # seconds, per request
    page_size: int = 500
    raw: bool = True  # False: go through the generated models (for the benchmark)
    # List PeerAuthentications/DestinationRules/Sidecars only in these namespaces (include
    # the root namespace, and the probe's for its Sidecar!), for users whose RBAC is
    # namespace-scoped. Empty: cluster-wide.
    policy_namespaces: tuple[str, ...] = ()


class Reader(Client):
    """The ``jobs.kube`` client as ``Options`` configure it (timeout, page size, models)."""

    def __init__(self, api: Any, options: Options | None = None) -> None:
        opts = options or Options()
        super().__init__(api, timeout=opts.timeout, page_size=opts.page_size, models=not opts.raw)
        self.options = opts


# ---- discovery --------------------------------------------------------------------------------


def discover(api: Any, options: Options | None = None) -> ClusterSnapshot:
    opts = options or Options()
    r = Reader(api, opts)
    snap = ClusterSnapshot()
    snap.loopback_pods = _api_on_loopback(api)

    _mesh_config(r, snap, opts)
    targets = _namespaces(r, snap, opts)
    snap.target_namespaces = targets

    def namespaced(
        what: str,
        prefix: str,
        plural: str,
        model: str,
        shape: Callable[[KubeObject], KubeObject] = lambda o: o,
    ) -> list[KubeObject] | None:
        """Every object of the target namespaces, each ``shape``d as its page is read
        (a page's raw JSON and full objects are dropped before the next one)."""
        try:
            if opts.namespaces or opts.namespace_selector:
                return [
                    shape(_with_ns(obj, ns))
                    for ns in sorted(targets)
                    for obj in r.pages(
                        f"list {what} in {ns}", f"{prefix}/namespaces/{ns}/{plural}", model=model
                    )
                ]
            return [
                shape(o)
                for o in r.pages(f"list {what}", f"{prefix}/{plural}", model=model)
                if namespace(o) in targets
            ]
        except NotServed:
            return None

    # Policy is listed cluster-wide even with -n: the root namespace's mesh policy and
    # DestinationRules exported from any namespace apply to the named ones (the agent's
    # RBAC is pinned to these calls). ``Options.policy_namespaces`` narrows it.
    policy_ns = sorted(opts.policy_namespaces) if opts.policy_namespaces else None

    # The lists are independent: fetch them at once, so one waits on the API server
    # while another is decoded. Results are admitted in a fixed order, and the first
    # error in that order is the one reported.
    fetches: list[tuple[str, str, Callable[[], list[KubeObject] | None]]] = [
        ("Pod", "pods", lambda: namespaced("pods", "/api/v1", "pods", "V1PodList", slim_pod)),
        (
            "Service",
            "services",
            lambda: namespaced("services", "/api/v1", "services", "V1ServiceList"),
        ),
        (
            "EndpointSlice",
            "endpointslices.discovery.k8s.io",
            lambda: namespaced(
                "endpointslices.discovery.k8s.io",
                "/apis/discovery.k8s.io/v1",
                "endpointslices",
                "V1EndpointSliceList",
            ),
        ),
        (
            "PeerAuthentication",
            "peerauthentications.security.istio.io",
            lambda: _istio_list(
                r, "security.istio.io", PEER_AUTH_VERSIONS, "peerauthentications", policy_ns
            ),
        ),
        (
            "DestinationRule",
            "destinationrules.networking.istio.io",
            lambda: _istio_list(
                r, "networking.istio.io", DEST_RULE_VERSIONS, "destinationrules", policy_ns
            ),
        ),
    ]

    # AuthorizationPolicies (jobs.plan.authz): not served or not allowed means no authz
    # cases, noted; never fatal to the mTLS plan.
    def authz_policies() -> list[KubeObject] | None:
        try:
            return _istio_list(
                r, "security.istio.io", AUTHZ_VERSIONS, "authorizationpolicies", policy_ns
            )
        except Denied as exc:
            snap.notes.append(f"AuthorizationPolicies not read, no authz cases planned: {exc}")
            return None

    fetches.append(
        ("AuthorizationPolicy", "authorizationpolicies.security.istio.io", authz_policies)
    )

    # Sidecars (jobs.plan.policy.sidecar): only the probe's namespace and the root
    # namespace's can apply to the probe, but the client namespace is the planner's, so
    # they are listed like DestinationRules. Not allowed (RBAC older than this read) is an
    # error finding, not the end of the plan: the probe's egress scope is then unknown.
    def sidecars() -> list[KubeObject] | None:
        try:
            return _istio_list(r, "networking.istio.io", SIDECAR_VERSIONS, "sidecars", policy_ns)
        except Denied as exc:
            snap.problems.append(
                Problem(
                    "Sidecar",
                    None,
                    None,
                    f"not read ({exc}): a Sidecar in the probe's namespace or the root namespace "
                    "could keep targets out of the probe's sidecar, and the plan cannot tell",
                )
            )
            return None

    fetches.append(("Sidecar", "sidecars.networking.istio.io", sidecars))
    with ThreadPoolExecutor(max_workers=len(fetches), thread_name_prefix="discover") as pool:
        futures = [(kind, what, pool.submit(fn)) for kind, what, fn in fetches]
        got = {kind: (what, f.result()) for kind, what, f in futures}
    for kind, (what, items) in got.items():
        if items is None and kind in ("Pod", "Service", "EndpointSlice"):
            snap.notes.append(f"{what} not served by the API server: planned without them")
        for obj in items or ():
            snap.add(kind, obj)
    if got["PeerAuthentication"][1] is None:
        snap.istio_apis = False
        snap.notes.append(
            "no Istio APIs found (security.istio.io PeerAuthentication v1/v1beta1 not served): "
            "every port planned with Istio's default PERMISSIVE; namespaces, pods, services "
            "and EndpointSlices were read anyway"
        )
    elif got["DestinationRule"][1] is None:
        snap.notes.append(
            "networking.istio.io DestinationRule (v1/v1beta1/v1alpha3) not served: "
            "sidecar clients planned with auto-mTLS"
        )
    _root_cert(r, snap, opts.istio_namespace)
    _revision_meshes(r, snap, opts)
    return snap


# What of a pod the planner reads (jobs.plan.endpoints, .injection, .policy): the rest of a
# real pod (managedFields, env, volumes, probes, containerStatuses) is most of its
# size and is dropped as each page is decoded, so 50,000 pods stay well under a GB.
_POD_SPEC_KEYS = ("serviceAccountName", "serviceAccount", "hostNetwork")
_POD_CONTAINER_KEYS = ("name", "image", "ports", "restartPolicy")
_POD_STATUS_KEYS = ("phase", "conditions", "podIP", "podIPs", "hostIP", "hostIPs")


def _pick(src: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: src[k] for k in keys if k in src}


def _containers(raw: object) -> object:
    if type(raw) is not list:
        return raw  # admission reports the malformed value as it is
    return [_pick(c, _POD_CONTAINER_KEYS) if type(c) is dict else c for c in raw]


def slim_pod(pod: KubeObject) -> KubeObject:
    """The pod with only the fields the plan reads; malformed parts are kept as they are,
    so admission (``jobs.plan.objects.admit``) judges the same values."""
    out = {k: v for k, v in pod.items() if k not in ("metadata", "spec", "status")}
    md = pod.get("metadata")
    if type(md) is dict:
        out["metadata"] = {k: v for k, v in md.items() if k != "managedFields"}
    elif "metadata" in pod:
        out["metadata"] = md
    sp = pod.get("spec")
    if type(sp) is dict:
        new = _pick(sp, _POD_SPEC_KEYS)
        for key in ("containers", "initContainers"):
            if key in sp:
                new[key] = _containers(sp[key])
        out["spec"] = new
    elif "spec" in pod:
        out["spec"] = sp
    st = pod.get("status")
    if type(st) is dict:
        out["status"] = _pick(st, _POD_STATUS_KEYS)
    elif "status" in pod:
        out["status"] = st
    return out


def _api_on_loopback(api: Any) -> bool:
    """Whether the API server is on this host's loopback (a test bed). Only there may
    pods have loopback addresses: a real cluster's kubelet never gives one, so a plan
    from any other cluster never names 127.0.0.0/8 or ::1 (jobs.plan.endpoints)."""
    host = getattr(getattr(api, "configuration", None), "host", None)
    if not isinstance(host, str):
        return False
    hostname = urlsplit(host).hostname or ""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _with_ns(obj: KubeObject, ns: str) -> KubeObject:
    md = obj.get("metadata")
    if isinstance(md, dict) and not md.get("namespace"):
        md["namespace"] = ns
    return obj


def _get(r: Reader, what: str, path: str, model: str | None = None) -> KubeObject | None:
    """One object; None when it (or its API) does not exist."""
    try:
        return r.get(what, path, model)
    except NotFound:
        return None


def _optional_get(
    r: Reader, snap: ClusterSnapshot, what: str, path: str, model: str | None = None
) -> KubeObject | None:
    """A read the plan can do without: forbidden becomes a note, not the end."""
    try:
        return _get(r, what, path, model)
    except Denied as exc:
        snap.notes.append(f"{exc} (planned without it)")
        return None


def _configmap_path(ns: str, name: str) -> str:
    return f"/api/v1/namespaces/{ns}/configmaps/{name}"


def _mesh_config(r: Reader, snap: ClusterSnapshot, opts: Options) -> None:
    """Only the ConfigMap istiod reads is the mesh config: ``istio`` (``istio-<rev>``) in
    the control-plane namespace (pilot/pkg/bootstrap/mesh.go ``getMeshConfigSources``);
    an ``istio`` ConfigMap a tenant writes elsewhere is never read."""
    cm_name = mesh_configmap_name(opts.revision)
    where = f"{opts.istio_namespace}/{cm_name}"
    cm = _optional_get(
        r,
        snap,
        f"get configmap {where}",
        _configmap_path(opts.istio_namespace, cm_name),
        "V1ConfigMap",
    )
    apply_mesh_config(snap, cm, where)
    snap.trust_domain = opts.trust_domain or snap.trust_domain
    snap.root_namespace = opts.root_namespace or snap.root_namespace
    rv = snap.revisions
    rv.plan = revision_name(opts.revision)
    rv.istio_namespace = opts.istio_namespace
    rv.trust_domain, rv.root_namespace = opts.trust_domain, opts.root_namespace


_WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def _revision_meshes(r: Reader, snap: ClusterSnapshot, opts: Options) -> None:
    """The mesh configs of the other revisions the planned pods' sidecars belong to
    (``jobs.plan.meshconfig``): only when a pod is of a revision other than the plan's,
    so a one-revision mesh costs no call. Revision tags are read (webhooks labelled
    ``istio.io/tag``, as istioctl/pkg/tag does; RBAC: ``list
    mutatingwebhookconfigurations``) only when a sidecar lacks the injector's
    ``istio.io/rev`` annotation and a label names another revision, which may be a
    tag. Whatever cannot be read stays unknown: those pods are not probed and
    compliance errors there (fail closed)."""
    rv = snap.revisions
    ns_labels = {name(n): labels_of(n) for n in snap.namespaces}
    needed = needed_revisions(
        (p for p in snap.pods if snap.is_target_namespace(namespace(p))), ns_labels
    )
    # A name from labels may be a tag. The plan's own name is taken as the revision
    # itself: reading tags for it would cost every one-revision mesh a cluster-wide
    # list the discovery RBAC does not grant (a ``default`` tag moving
    # istio-injection=enabled namespaces is seen on injected pods, whose istio.io/rev
    # annotation names the real revision, and from manifests that hold the webhook).
    if any(not free and n != rv.plan for n, free in needed):
        try:
            hooks = list(
                r.pages(
                    "list mutatingwebhookconfigurations.admissionregistration.k8s.io",
                    _WEBHOOKS,
                    [("labelSelector", TAG_LABEL)],
                    model="object",
                )
            )
            set_revision_tags(snap, hooks)
        except (Denied, NotServed, NotFound) as exc:
            rv.tags_why = f"revision tags not read: {exc}"
    revs = sorted({rv.resolve(n, is_tag_free=free) for n, free in needed} - {rv.plan})
    for i, rev in enumerate(revs):
        if not DNS_LABEL.match(rev):
            continue  # Revisions.mesh_of says why; never put into a path
        if i >= MAX_REVISIONS:
            rv.unknown[rev] = f"more than {MAX_REVISIONS} revisions in use: not read"
            continue
        cm_name = mesh_configmap_name(rev)
        where = f"{opts.istio_namespace}/{cm_name}"
        try:
            cm = _get(r, f"get configmap {where}", _configmap_path(opts.istio_namespace, cm_name))
        except Denied as exc:
            rv.unknown[rev] = f"its mesh config could not be read: {exc}"
            continue
        add_revision_mesh(snap, rev, cm, where)


def _namespaces(r: Reader, snap: ClusterSnapshot, opts: Options) -> set[str]:
    """The target namespaces; their Namespace objects (labels: injection, ambient) go
    into the snapshot. Named namespaces are read one by one (``get``) so a user
    allowed only there still gets a plan."""
    if opts.namespaces:
        for ns in opts.namespaces:
            obj = _get(r, f"get namespace {ns}", f"/api/v1/namespaces/{ns}", "V1Namespace")
            if obj is None:
                raise DiscoveryError(f"namespace {ns!r} does not exist on {r.server}")
            snap.add("Namespace", obj)
        return set(opts.namespaces)
    query = [("labelSelector", opts.namespace_selector)] if opts.namespace_selector else []
    targets: set[str] = set()
    for obj in r.pages("list namespaces", "/api/v1/namespaces", query, "V1NamespaceList"):
        if not snap.add("Namespace", obj):
            continue
        ns = name(obj)
        if opts.include_system or ns not in SYSTEM_NAMESPACES:
            targets.add(ns)
    return targets


def _istio_list(
    r: Reader,
    group: str,
    versions: tuple[str, ...],
    plural: str,
    namespaces: list[str] | None = None,
) -> list[KubeObject] | None:
    """Every object of an Istio CRD, from the first served version; None when none is.
    With ``namespaces`` only those are listed (a user allowed only there can plan)."""
    for version in versions:
        base = f"/apis/{group}/{version}"
        try:
            if namespaces is None:
                return list(r.pages(f"list {plural}.{group}", f"{base}/{plural}", model="object"))
            return [
                _with_ns(obj, ns)
                for ns in namespaces
                for obj in r.pages(
                    f"list {plural}.{group} in {ns}",
                    f"{base}/namespaces/{ns}/{plural}",
                    model="object",
                )
            ]
        except NotServed:
            continue
    return None


def _root_cert(r: Reader, snap: ClusterSnapshot, istio_namespace: str) -> None:
    """The mesh root, only from istiod's own namespace: a tenant can write the copy
    istiod's namespace controller puts in theirs (``jobs.plan.meshroot`` says why). Other
    namespaces are not even read."""
    where = f"{istio_namespace}/{ROOT_CERT_CONFIGMAP}"
    cm = _optional_get(
        r,
        snap,
        f"get configmap {where}",
        _configmap_path(istio_namespace, ROOT_CERT_CONFIGMAP),
        "V1ConfigMap",
    )
    snap.root_cert_pem = root_cert_of(cm)
    if snap.root_cert_pem is None:
        snap.notes.append(no_root_note(istio_namespace))
