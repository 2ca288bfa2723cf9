"""Read a ``ClusterSnapshot`` from a live cluster with the official ``kubernetes`` client.

All Kubernetes HTTP of ``mtlsprobe plan`` goes through ``Reader`` here: paginated
lists (``limit``/``continue``), a client-side ``_request_timeout`` on every call, and
one-line errors. Lists are read as raw JSON (``_preload_content=False``): the
snapshot wants the API server's dicts anyway, and the generated models cost several
times more to build (benchmarks/bench_plan.py measures both).

Errors: a 403 names the verb, resource, API group and the user from the API
server's Status; an unreachable or silent server names the server; both raise
``DiscoveryError`` (the CLI turns it into exit 64). Istio APIs that are not served
(404) are not errors: the snapshot records that and the plan falls back to Istio's
default PERMISSIVE with a finding.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from jobs.plan.meshroot import ROOT_CERT_CONFIGMAP, no_root_note, root_cert_of
from jobs.plan.objects import (
    ClusterSnapshot,
    KubeObject,
    apply_mesh_config,
    mesh_configmap_name,
    name,
    namespace,
)

SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "istio-system")
PEER_AUTH_VERSIONS = ("v1", "v1beta1")
DEST_RULE_VERSIONS = ("v1", "v1beta1", "v1alpha3")
AUTHZ_VERSIONS = ("v1", "v1beta1")  # AuthorizationPolicy (jobs.plan.authz)
MESH_CONFIGMAP = "istio"
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class DiscoveryError(Exception):
    """Discovery cannot go on; the message is the one line users see."""


class Forbidden(DiscoveryError):
    """401/403: the message names the missing permission and who lacks it."""


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
    # List PeerAuthentications/DestinationRules only in these namespaces (include the root
    # namespace!), for users whose RBAC is namespace-scoped. Empty: cluster-wide.
    policy_namespaces: tuple[str, ...] = ()


@dataclass
class Reader:
    """The only place that talks to the API server (kopf-style: one edge for HTTP).

    Requests go through the client's ``ApiClient`` (configuration, credentials, TLS,
    connection pool) by resource path. The generated ``CoreV1Api`` & co. are not
    used on the raw path: importing ``CoreV1Api`` alone costs over a second of CPU
    (pydantic validators for every method), a third of the plan's time budget.
    """

    api: Any  # kubernetes.client.ApiClient
    options: Options = field(default_factory=Options)

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    def _timeout(self) -> tuple[float, float]:
        return (min(self.options.timeout, 5.0), self.options.timeout)

    def _call(self, what: str, path: str, query: list[tuple[str, Any]]) -> bytes:
        """GET one path; failures become DiscoveryError, or ``_NotServed``/``_NotFound``
        for the caller to decide."""
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        try:
            params = self.api.param_serialize(
                method="GET",
                resource_path=path,
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            resp = self.api.call_api(*params, _request_timeout=self._timeout())
            data: bytes = resp.read()
            code, reason = resp.status, resp.reason
        except ApiException as exc:  # the REST layer wraps TLS and protocol failures
            raise DiscoveryError(
                f"cannot reach the Kubernetes API at {self.server} ({what}): "
                f"{str(exc.reason).split(': ', 1)[-1][:200]}"
            ) from None
        except HTTPError as exc:
            raise DiscoveryError(
                f"cannot reach the Kubernetes API at {self.server} ({what}): {_transport(exc)}"
            ) from None
        except OSError as exc:
            raise DiscoveryError(
                f"cannot reach the Kubernetes API at {self.server} ({what}): {exc}"
            ) from None
        if 200 <= code <= 299:
            return data
        status = _status(data)
        if code == 404:
            if (status.get("details") or {}).get("name"):
                raise _NotFound()
            raise _NotServed()
        if code == 410 and any(k == "continue" for k, _ in query):
            token = (status.get("metadata") or {}).get("continue")
            raise _Expired(token if isinstance(token, str) and token else None)
        if code in (401, 403):
            raise Forbidden(_forbidden_line(what, code, status))
        msg = " ".join(str(status.get("message") or reason or "no message").split())
        raise DiscoveryError(f"{what}: the API server at {self.server} answered HTTP {code}: {msg}")

    def _decode(self, what: str, data: bytes, model: str | None) -> Any:
        try:
            if self.options.raw or model is None:
                return _loads(data)
            obj = self.api.deserialize(data.decode("utf-8"), model, "application/json")
            return self.api.sanitize_for_serialization(obj)
        except ValueError:
            raise DiscoveryError(
                f"{what}: the API server at {self.server} sent a body that is not JSON"
            ) from None

    def pages(
        self, what: str, path: str, model: str | None = None, **query: str
    ) -> Iterator[KubeObject]:
        """Every item of a list, one page (``limit``) at a time. ``model``: the generated
        class to decode into when ``Options.raw`` is off (the benchmark's comparison)."""
        token: str | None = None
        while True:
            q: list[tuple[str, Any]] = [*query.items(), ("limit", self.options.page_size)]
            if token:
                q.append(("continue", token))
            try:
                data = self._call(what, path, q)
            except _Expired as exp:
                # A token older than etcd's compaction: the API server hands out one that
                # continues after the last key seen (no repeats; newer changes may show).
                if not token or not exp.token or exp.token == token:
                    raise DiscoveryError(
                        f"{what}: the list expired on {self.server} (HTTP 410); run again"
                    ) from None
                token = exp.token
                continue
            doc = self._decode(what, data, model)
            if not isinstance(doc, dict) or not isinstance(doc.get("items", []), list):
                raise DiscoveryError(f"{what}: the API server sent a body that is not a List")
            yield from doc.get("items") or []
            meta: dict[str, Any] = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
            token = meta.get("continue") or None
            if not token:
                return

    def get(self, what: str, path: str, model: str | None = None) -> KubeObject | None:
        """One object; None when it does not exist."""
        try:
            doc = self._decode(what, self._call(what, path, []), model)
        except (_NotFound, _NotServed):
            return None
        return doc if isinstance(doc, dict) else None


def _loads(data: bytes) -> Any:
    import orjson

    return orjson.loads(data)  # orjson.JSONDecodeError is a ValueError


class _NotServed(Exception):
    """404 without a name: the API (group/version/resource) is not served."""


class _NotFound(Exception):
    """404 for a named object."""


class _Expired(Exception):
    """410: a continue token expired; ``token`` continues inconsistently, if given."""

    def __init__(self, token: str | None) -> None:
        super().__init__(token)
        self.token = token


def _status(body: object) -> dict[str, Any]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return {}
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) and doc.get("kind") == "Status" else {}


def _token_subject() -> str | None:
    """The service account from the pod's token (a JWT; read, not verified)."""
    try:
        with open(SA_TOKEN, encoding="ascii") as f:
            payload = f.read().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (OSError, IndexError, ValueError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


def _forbidden_line(what: str, code: int, status: dict[str, Any]) -> str:
    import re

    msg = str(status.get("message") or "")
    if code == 401:
        return f"{what}: the API server rejected our credentials (401 Unauthorized): {msg}"
    m = re.search(
        r'User "([^"]*)" cannot (\S+) resource "([^"]*)" in API group "([^"]*)"(.*)$', msg
    )
    if m:
        user, verb, res, group, scope = m.groups()
        scope = scope.strip() or "at the cluster scope"
    else:
        details = status.get("details") or {}
        user = _token_subject() or "this client"
        verb, res, group = "list", str(details.get("kind", "?")), str(details.get("group", ""))
        scope = ""
    grant = f"{verb} on {res} (API group {group or 'core'!r})"
    tail = f" {scope}" if scope else ""
    return f"forbidden: {user} may not {verb} {res} in API group {group!r}{tail}; grant {grant}"


def _transport(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason or exc)
    if "timed out" in text.lower() or "timeout" in type(reason or exc).__name__.lower():
        return "no answer within the request timeout"
    if "refused" in text.lower():
        return "connection refused"
    return text.split(": ", 1)[-1][:200]


# ---- configuration ----------------------------------------------------------------------------


def api_client(kubeconfig: str | None, context: str | None, timeout: float = 10.0) -> Any:
    """In-cluster configuration when running in a pod (and no kubeconfig was named),
    else the kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
    except config.ConfigException as exc:
        raise DiscoveryError(f"no usable Kubernetes configuration: {exc}") from None
    except OSError as exc:
        raise DiscoveryError(f"cannot read kubeconfig: {exc}") from None
    cfg.retries = False  # bounded: one attempt per request, the timeout is the budget
    return client.ApiClient(cfg)


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
                        f"list {what} in {ns}", f"{prefix}/namespaces/{ns}/{plural}", model
                    )
                ]
            return [
                shape(o)
                for o in r.pages(f"list {what}", f"{prefix}/{plural}", model)
                if namespace(o) in targets
            ]
        except _NotServed:
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
        except Forbidden as exc:
            snap.notes.append(f"AuthorizationPolicies not read, no authz cases planned: {exc}")
            return None

    fetches.append(
        ("AuthorizationPolicy", "authorizationpolicies.security.istio.io", authz_policies)
    )
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


def _optional_get(
    r: Reader, snap: ClusterSnapshot, what: str, path: str, model: str | None = None
) -> KubeObject | None:
    """A read the plan can do without: forbidden becomes a note, not the end."""
    try:
        return r.get(what, path, model)
    except Forbidden as exc:
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


def _namespaces(r: Reader, snap: ClusterSnapshot, opts: Options) -> set[str]:
    """The target namespaces; their Namespace objects (labels: injection, ambient) go
    into the snapshot. Named namespaces are read one by one (``get``) so a user
    allowed only there still gets a plan."""
    if opts.namespaces:
        for ns in opts.namespaces:
            obj = r.get(f"get namespace {ns}", f"/api/v1/namespaces/{ns}", "V1Namespace")
            if obj is None:
                raise DiscoveryError(f"namespace {ns!r} does not exist on {r.server}")
            snap.add("Namespace", obj)
        return set(opts.namespaces)
    query: dict[str, str] = {}
    if opts.namespace_selector:
        query["labelSelector"] = opts.namespace_selector
    targets: set[str] = set()
    for obj in r.pages("list namespaces", "/api/v1/namespaces", "V1NamespaceList", **query):
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
                return list(r.pages(f"list {plural}.{group}", f"{base}/{plural}", "object"))
            return [
                _with_ns(obj, ns)
                for ns in namespaces
                for obj in r.pages(
                    f"list {plural}.{group} in {ns}", f"{base}/namespaces/{ns}/{plural}", "object"
                )
            ]
        except _NotServed:
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
