"""The object model discovery produces and the planner consumes.

Kubernetes and Istio objects stay the raw JSON bodies the API server (or a YAML
file) gave us: plain dicts, typed loosely as ``KubeObject``. Copying them into
generated model classes costs time and memory at 10,000 pods and buys nothing the
policy engine needs. Every object is *admitted* once (``admit``): a body that is
not the shape its kind requires is recorded as a ``Problem`` and left out, so
later code may read fields without defending against every malformation, and one
bad object never stops a plan.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

KubeObject = dict[str, Any]

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_ROOT_NAMESPACE = "istio-system"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"

# PeerAuthentication mTLS modes (istio.io/api security/v1 PeerAuthentication.MutualTLS.Mode).
PA_MODES = frozenset({"UNSET", "DISABLE", "PERMISSIVE", "STRICT"})
# DestinationRule ClientTLSSettings.TLSmode.
DR_TLS_MODES = frozenset({"DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"})


@dataclass(frozen=True)
class Problem:
    """Something discovery or loading could not use, with the reason a person acts on."""

    kind: str
    namespace: str | None
    name: str | None
    message: str

    @property
    def ref(self) -> str:
        if self.name is None:
            return self.kind
        return (
            f"{self.kind} {self.namespace}/{self.name}"
            if self.namespace
            else (f"{self.kind} {self.name}")
        )

    def __str__(self) -> str:
        return f"{self.ref}: {self.message}"


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
    root_cert_pem: str | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    target_namespaces: set[str] | None = None
    istio_apis: bool = True
    enable_auto_mtls: bool = True  # MeshConfig enableAutoMtls
    default_dr_export_to: tuple[str, ...] = ("*",)  # MeshConfig defaultDestinationRuleExportTo
    mesh_config: str | None = None  # "<ns>/<name>" of the mesh ConfigMap read, if any
    loopback_pods: bool = False  # the lab's pods live on 127/8 (jobs/lab/addresses.py)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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


_SLOTS = {
    "Namespace": "namespaces",
    "Pod": "pods",
    "Service": "services",
    "EndpointSlice": "endpointslices",
    "PeerAuthentication": "peerauthentications",
    "DestinationRule": "destinationrules",
    # AuthorizationPolicy: admitted by shape only; jobs.plan.authz reads the rules.
    "AuthorizationPolicy": "authorizationpolicies",
}
KINDS = tuple(_SLOTS)


# ---- safe accessors ---------------------------------------------------------------


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if type(m) is dict else _EMPTY


def name(obj: Mapping[str, Any]) -> str:
    n = meta(obj).get("name")
    return n if type(n) is str else ""


def namespace(obj: Mapping[str, Any]) -> str:
    n = meta(obj).get("namespace")
    return n if type(n) is str else ""


def _str_map(raw: object) -> dict[str, str]:
    """A copy of a labels/annotations map. The API server only stores strings there; a
    YAML value that is not one simply never equals the strings policies compare with."""
    return dict(raw) if type(raw) is dict else {}


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return _str_map(meta(obj).get("labels"))


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return _str_map(meta(obj).get("annotations"))


# Go's zero time.Time (0001-01-01T00:00:00Z) in Unix seconds: what an object without a
# creationTimestamp orders as in Istio (time.Time.Compare puts it first).
ZERO_TIME = -62135596800
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})\Z"
)


# Kinds Istio orders by creationTimestamp (the oldest wins): only there does a timestamp
# change the plan, so only there is an unreadable one refused.
_ORDERED_KINDS = frozenset({"PeerAuthentication", "DestinationRule"})


def parse_time(raw: object) -> tuple[int, int] | None:
    """A creationTimestamp as (Unix seconds, nanoseconds); None when it is not a time.

    Accepted: RFC 3339 strings as ``metav1.Time`` reads them (k8s.io/apimachinery
    pkg/apis/meta/v1/time.go ``UnmarshalJSON``: Go's ``time.RFC3339`` layout - ``T``,
    ``Z`` or a numeric offset, optional fractional seconds up to nanoseconds), and the
    ``datetime`` objects PyYAML makes of unquoted YAML timestamps (naive ones are UTC,
    as YAML 1.1's timestamp type says). A bare date is not a time: the API server would
    reject it."""
    if isinstance(raw, datetime):
        dt = raw if raw.tzinfo is not None else raw.replace(tzinfo=UTC)
        whole = dt.replace(microsecond=0)
        return int(whole.timestamp()), dt.microsecond * 1000
    if type(raw) is not str:
        return None
    m = _RFC3339.match(raw)
    if m is None:
        return None
    y, mo, d, h, mi, sec, frac, zone = m.groups()
    tz = UTC
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        zh, zm = int(zone[1:3]), int(zone[4:6])
        if zh > 23 or zm > 59:
            return None
        tz = timezone(sign * timedelta(hours=zh, minutes=zm))
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec), tzinfo=tz)
    except ValueError:  # month 13, 24:00, a leap second: Go's parser rejects them too
        return None
    return int(dt.timestamp()), int((frac or "0").ljust(9, "0"))


def created_at(obj: Mapping[str, Any]) -> int:
    """The creationTimestamp as Istio orders by it: whole seconds, as the API server stores
    it (metav1.Time marshals without fractions; Istio's config.go
    ``configCompareByCreationTime`` notes ties are common for that reason). Missing (or
    unparsable, which ``admit`` refuses) orders as Go's zero time, first."""
    t = parse_time(meta(obj).get("creationTimestamp"))
    return t[0] if t is not None else ZERO_TIME


def spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    s = obj.get("spec")
    return s if type(s) is dict else _EMPTY


def ref(obj: Mapping[str, Any]) -> str:
    return f"{namespace(obj)}/{name(obj)}" if namespace(obj) else name(obj)


def pod_ip(pod: Mapping[str, Any]) -> str | None:
    status = pod.get("status")
    if not isinstance(status, dict):
        return None
    ip = status.get("podIP")
    return ip if isinstance(ip, str) and ip else None


def set_pod_ip(pod: KubeObject, ip: str) -> None:
    """For the lab: give a pod loaded from YAML the address it will really have."""
    status = pod.setdefault("status", {})
    status["podIP"] = ip
    status["podIPs"] = [{"ip": ip}]


def pod_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status")
    if not isinstance(status, dict):
        return False
    if status.get("phase") not in (None, "Running"):
        return False
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        return status.get("phase") == "Running"
    for c in conditions:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def service_account(pod: Mapping[str, Any]) -> str:
    sa = spec(pod).get("serviceAccountName") or spec(pod).get("serviceAccount")
    return sa if isinstance(sa, str) and sa else "default"


# ---- admission ----------------------------------------------------------------------


def _problem(kind: str, obj: object, message: str) -> Problem:
    if isinstance(obj, dict):
        return Problem(kind, namespace(obj) or None, name(obj) or None, message)
    return Problem(kind, None, None, message)


def _need_meta(kind: str, obj: Mapping[str, Any], namespaced: bool) -> str | None:
    md = obj.get("metadata")
    if type(md) is not dict:
        return "no metadata"
    n = md.get("name")
    if type(n) is not str or not n:
        return "metadata.name missing"
    if namespaced:
        ns = md.get("namespace")
        if type(ns) is not str or not ns:
            return "metadata.namespace missing"
    for key in ("labels", "annotations"):
        raw = md.get(key)
        if raw is not None and type(raw) is not dict:
            return f"metadata.{key} is not a mapping"
    ts = md.get("creationTimestamp")
    if kind in _ORDERED_KINDS and ts is not None and parse_time(ts) is None:
        # metav1.Time.UnmarshalJSON (apimachinery pkg/apis/meta/v1/time.go) fails on it, so
        # the API server rejects the whole object: it cannot exist in a cluster.
        shown = ts if isinstance(ts, str) else type(ts).__name__
        return (
            f"metadata.creationTimestamp {str(shown)[:64]!r} is not an RFC 3339 time "
            "(the API server rejects this object; Istio orders policies by it)"
        )
    return None


def _is_port(v: object) -> bool:
    return type(v) is int and 0 < v < 65536


def port_key(k: object) -> int | None:
    """portLevelMtls keys: YAML gives ints, JSON gives strings."""
    if isinstance(k, bool):
        return None
    if isinstance(k, int):
        return k if _is_port(k) else None
    if isinstance(k, str) and k.isdigit() and _is_port(int(k)):
        return int(k)
    return None


def _check_pod(obj: Mapping[str, Any]) -> str | None:
    s = obj.get("spec")
    if not isinstance(s, dict):
        return "spec missing"
    if not isinstance(s.get("containers"), list):
        return "spec.containers is not a list"
    for key in ("containers", "initContainers"):
        for c in s.get(key) or ():
            if type(c) is not dict:
                return f"spec.{key} has a non-mapping entry"
            ports = c.get("ports")
            if ports is None:
                continue
            bad = type(ports) is not list
            for p in () if bad else ports:
                if type(p) is not dict or not _is_port(p.get("containerPort")):
                    bad = True
                    break
            if bad:
                return f"container {c.get('name')!r}: ports must be a list with containerPort"
    if obj.get("status") is not None and not isinstance(obj.get("status"), dict):
        return "status is not a mapping"
    return None


def _check_service(obj: Mapping[str, Any]) -> str | None:
    s = obj.get("spec")
    if not isinstance(s, dict):
        return "spec missing"
    ports = s.get("ports")
    if ports is not None and not isinstance(ports, list):
        return "spec.ports is not a list"
    for p in ports or []:
        if not isinstance(p, dict) or not _is_port(p.get("port")):
            return "spec.ports entry without a valid port"
        tp = p.get("targetPort")
        if tp is not None and not (_is_port(tp) or (isinstance(tp, str) and tp)):
            return f"port {p.get('port')}: targetPort {tp!r} is neither a port nor a name"
    sel = s.get("selector")
    if sel is not None and not isinstance(sel, dict):
        return "spec.selector is not a mapping"
    return None


def _check_slice(obj: Mapping[str, Any]) -> str | None:
    eps = obj.get("endpoints")
    if eps is not None and not isinstance(eps, list):
        return "endpoints is not a list"
    for e in eps or []:
        if not isinstance(e, dict) or not isinstance(e.get("addresses"), list):
            return "endpoint without addresses"
    ports = obj.get("ports")
    if ports is not None and (
        not isinstance(ports, list) or any(not isinstance(p, dict) for p in ports)
    ):
        return "ports is not a list of mappings"
    return None


def _check_mtls(raw: object, where: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        return f"{where} is not a mapping"
    mode = raw.get("mode")
    if mode is not None and mode not in PA_MODES:
        return f"{where}.mode {mode!r} is not one of {', '.join(sorted(PA_MODES))}"
    return None


def _check_pa(obj: Mapping[str, Any]) -> str | None:
    s = obj.get("spec", {})
    if s is None:
        return None
    if not isinstance(s, dict):
        return "spec is not a mapping"
    sel = s.get("selector")
    if sel is not None and (
        not isinstance(sel, dict)
        or (sel.get("matchLabels") is not None and not isinstance(sel.get("matchLabels"), dict))
    ):
        return "spec.selector.matchLabels is not a mapping"
    err = _check_mtls(s.get("mtls"), "spec.mtls")
    if err:
        return err
    plm = s.get("portLevelMtls")
    if plm is not None:
        if not isinstance(plm, dict):
            return "spec.portLevelMtls is not a mapping"
        for k, v in plm.items():
            if port_key(k) is None:
                return f"spec.portLevelMtls key {k!r} is not a port number"
            err = _check_mtls(v, f"spec.portLevelMtls[{k}]")
            if err:
                return err
    return None


def _check_tls(raw: object, where: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        return f"{where} is not a mapping"
    mode = raw.get("mode")
    if mode is not None and mode not in DR_TLS_MODES:
        return f"{where}.mode {mode!r} is not one of {', '.join(sorted(DR_TLS_MODES))}"
    return None


def _check_dr(obj: Mapping[str, Any]) -> str | None:
    s = obj.get("spec")
    if not isinstance(s, dict):
        return "spec missing"
    if not isinstance(s.get("host"), str) or not s["host"]:
        return "spec.host missing"
    ws = s.get("workloadSelector")
    if ws is not None and (
        not isinstance(ws, dict)
        or (ws.get("matchLabels") is not None and not isinstance(ws.get("matchLabels"), dict))
    ):
        return "spec.workloadSelector.matchLabels is not a mapping"
    export = s.get("exportTo")
    if export is not None and (
        not isinstance(export, list) or not all(isinstance(e, str) for e in export)
    ):
        return "spec.exportTo is not a list of namespaces"
    tp = s.get("trafficPolicy")
    if tp is None:
        return None
    if not isinstance(tp, dict):
        return "spec.trafficPolicy is not a mapping"
    err = _check_tls(tp.get("tls"), "trafficPolicy.tls")
    if err:
        return err
    pls = tp.get("portLevelSettings")
    if pls is None:
        return None
    if not isinstance(pls, list):
        return "trafficPolicy.portLevelSettings is not a list"
    for i, p in enumerate(pls):
        if not isinstance(p, dict) or not isinstance(p.get("port"), dict):
            return f"portLevelSettings[{i}] has no port"
        if not _is_port(p["port"].get("number")):
            return f"portLevelSettings[{i}].port.number is not a port number"
        err = _check_tls(p.get("tls"), f"portLevelSettings[{i}].tls")
        if err:
            return err
    return None


_CHECKS: dict[str, tuple[bool, Callable[[Mapping[str, Any]], str | None]]] = {
    "Namespace": (False, lambda o: None),
    "Pod": (True, _check_pod),
    "Service": (True, _check_service),
    "EndpointSlice": (True, _check_slice),
    "PeerAuthentication": (True, _check_pa),
    "DestinationRule": (True, _check_dr),
    # AuthorizationPolicy: a spec mapping is all admission asks; jobs.plan.authz reads the
    # rules and turns what it cannot read into a skip naming the field.
    "AuthorizationPolicy": (
        True,
        lambda o: None if type(o.get("spec", {})) is dict else "spec is not a mapping",
    ),
}


def admit(kind: str, obj: object) -> Problem | None:
    """None when ``obj`` is a usable ``kind``; otherwise the Problem that says why not."""
    if not isinstance(obj, dict):
        return _problem(kind, obj, "not a JSON object")
    namespaced, check = _CHECKS[kind]
    err = _need_meta(kind, obj, namespaced) or check(obj)
    return _problem(kind, obj, err) if err else None


# ---- mesh config ----------------------------------------------------------------------

MESH_CONFIGMAP = "istio"
MESH_KEY = "mesh"  # pkg/config/mesh/kubemesh/watcher.go MeshConfigKey
DEFAULT_ISTIO_NAMESPACE = "istio-system"
MESH_MAX_BYTES = 1 << 20
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}\Z")  # SPIFFE ID spec: trust domain chars


def mesh_configmap_name(revision: str | None = None) -> str:
    """The ConfigMap istiod reads its MeshConfig from, in its own namespace:
    ``istio``, or ``istio-<rev>`` for a revision other than ``default``
    (pilot/pkg/bootstrap/mesh.go ``getMeshConfigMapName``). A ConfigMap of that name in
    any other namespace is nobody's mesh config."""
    if not revision or revision == "default":
        return MESH_CONFIGMAP
    return f"{MESH_CONFIGMAP}-{revision}"


@dataclass(frozen=True)
class MeshSettings:
    """The MeshConfig fields the plan depends on; None: absent, Istio's default applies
    (pkg/config/mesh/mesh.go ``DefaultMeshConfig``: trustDomain cluster.local,
    rootNamespace istio-system, enableAutoMtls true, defaultDestinationRuleExportTo *)."""

    trust_domain: str | None = None
    root_namespace: str | None = None
    enable_auto_mtls: bool | None = None
    default_dr_export_to: tuple[str, ...] | None = None


def read_mesh_config(mesh_yaml: object) -> tuple[MeshSettings, list[str]]:
    """The settings in the ``mesh`` key of the mesh ConfigMap (MeshConfig as YAML), and
    what is wrong with it. A field with a value Istio could not use is reported and
    left at its default (istiod refuses such a mesh config and keeps its defaults)."""
    from probe import yamlload

    if not isinstance(mesh_yaml, str):
        return MeshSettings(), [f"key {MESH_KEY!r} missing"]
    if len(mesh_yaml) > MESH_MAX_BYTES:  # a ConfigMap holds at most 1 MiB
        return MeshSettings(), [f"key {MESH_KEY!r} is larger than {MESH_MAX_BYTES} bytes"]
    try:  # bounded: the string is as hostile as the manifest that carried it
        doc = yamlload.load_one(mesh_yaml, yamlload.Limits(MESH_MAX_BYTES, max_depth=64))
    except yamlload.YamlLoadError as exc:
        return MeshSettings(), [f"key {MESH_KEY!r} is not valid YAML ({exc})"]
    if doc is None:
        return MeshSettings(), []
    if not isinstance(doc, dict):
        return MeshSettings(), [f"key {MESH_KEY!r} is not a YAML mapping"]
    problems: list[str] = []
    td = doc.get("trustDomain")
    if td is not None and not (isinstance(td, str) and _TRUST_DOMAIN.match(td)):
        problems.append(f"trustDomain {str(td)[:64]!r} is not a SPIFFE trust domain")
        td = None
    root = doc.get("rootNamespace")
    if root is not None and not (isinstance(root, str) and _DNS_LABEL.match(root)):
        problems.append(f"rootNamespace {str(root)[:64]!r} is not a namespace name")
        root = None
    auto = doc.get("enableAutoMtls")
    if auto is not None and not isinstance(auto, bool):
        problems.append(f"enableAutoMtls {str(auto)[:16]!r} is not true or false")
        auto = None
    export = doc.get("defaultDestinationRuleExportTo")
    export_to: tuple[str, ...] | None = None
    if export is not None:
        if isinstance(export, list) and all(isinstance(e, str) for e in export):
            export_to = tuple(export)
        else:
            problems.append("defaultDestinationRuleExportTo is not a list of strings")
    return (
        MeshSettings(td or None, root or None, auto, export_to),
        problems,
    )


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
    chosen: Mapping[str, Any] | None = None
    for cm in configmaps:
        n, ns = name(cm), namespace(cm)
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
