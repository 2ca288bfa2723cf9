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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
    root_cert_pem: str | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    target_namespaces: set[str] | None = None
    istio_apis: bool = True
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


def created(obj: Mapping[str, Any]) -> str:
    """RFC 3339 creationTimestamp (``Z``, whole seconds, as the API server writes it):
    these sort correctly as strings. Missing sorts first, like a zero time in Go."""
    c = meta(obj).get("creationTimestamp")
    return c if isinstance(c, str) else ""


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
}


def admit(kind: str, obj: object) -> Problem | None:
    """None when ``obj`` is a usable ``kind``; otherwise the Problem that says why not."""
    if not isinstance(obj, dict):
        return _problem(kind, obj, "not a JSON object")
    namespaced, check = _CHECKS[kind]
    err = _need_meta(kind, obj, namespaced) or check(obj)
    return _problem(kind, obj, err) if err else None


def mesh_settings(mesh_yaml: object) -> tuple[str | None, str | None, str | None]:
    """(trustDomain, rootNamespace, problem) from the ``mesh`` key of the ``istio``
    ConfigMap (MeshConfig as YAML). Values absent there are None (Istio defaults apply)."""
    from probe import yamlload

    if not isinstance(mesh_yaml, str):
        return None, None, "key 'mesh' missing"
    try:  # bounded: the string is as hostile as the manifest that carried it
        doc = yamlload.load_one(mesh_yaml, yamlload.Limits(max_bytes=1 << 20, max_depth=64))
    except yamlload.YamlLoadError as exc:
        return None, None, f"key 'mesh' is not valid YAML ({exc})"
    if doc is None:
        return None, None, None
    if not isinstance(doc, dict):
        return None, None, "key 'mesh' is not a YAML mapping"
    td, root = doc.get("trustDomain"), doc.get("rootNamespace")
    return (
        td if isinstance(td, str) and td else None,
        root if isinstance(root, str) and root else None,
        None,
    )
