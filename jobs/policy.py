"""Istio policy semantics as pure functions: what a (pod, target port) must do.

No I/O here: everything takes the raw objects of a ``ClusterSnapshot`` and
returns small immutable answers, each carrying the object that decided it so
reports can say *why*. The rules (istio-facts.md, Istio's
pilot/pkg/security/authn/policy_applier.go):

- PeerAuthentication levels: workload (non-empty ``selector.matchLabels``) >
  namespace > mesh (a selector-less policy in the root namespace). Within one
  level the oldest ``creationTimestamp`` wins, ties broken by name. A selector
  policy in the root namespace is ignored. ``UNSET`` (or no ``mtls``) inherits the
  level above; with nothing set the mode is PERMISSIVE.
- ``portLevelMtls`` counts only on the winning *workload* policy and is keyed by
  the workload's target (container) port; a port entry with ``UNSET`` takes the
  workload's composed mode.
- A pod has a sidecar when it carries annotation ``sidecar.istio.io/status``, a
  container named ``istio-proxy``, or a native-sidecar init container
  ``istio-proxy`` (``restartPolicy: Always``). Without one it accepts plaintext
  whatever the policy says (``Expect.NONE``) - unless ztunnel captures it
  (ambient: namespace or pod label ``istio.io/dataplane-mode=ambient`` and the
  pod annotated ``ambient.istio.io/redirection=enabled``).
- DestinationRules: looked up for the client's namespace, then the service's,
  then the root namespace, then any other namespace exporting it; within one
  namespace the most specific host wins (exact over wildcard), then the oldest.
  ``portLevelSettings`` are keyed by the *service* port. What a sidecar client
  then does to one endpoint is ``client_view``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jobs.objects import (
    KubeObject,
    annotations_of,
    created,
    labels_of,
    name,
    namespace,
    port_key,
    ref,
    spec,
)
from probe.model import Expect, Protocol

SIDECAR_STATUS = "sidecar.istio.io/status"
SIDECAR_INJECT_LABEL = "sidecar.istio.io/inject"
TLS_MODE_LABEL = "security.istio.io/tlsMode"
DATAPLANE_MODE = "istio.io/dataplane-mode"
AMBIENT_REDIRECTION = "ambient.istio.io/redirection"
PROXY_NAME = "istio-proxy"

# ---- PeerAuthentication -------------------------------------------------------------


@dataclass(frozen=True)
class ModeDecision:
    """The effective server mode at one (pod, target port) and who decided it."""

    mode: Expect  # STRICT | PERMISSIVE | DISABLE (never NONE: that is about the sidecar)
    source: str  # e.g. "workload PeerAuthentication shop/checkout port 9090"


def _sort_key(pa: Mapping[str, Any]) -> tuple[str, str, str]:
    return (created(pa), name(pa), namespace(pa))


def _mtls_mode(raw: object) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("mode"), str):
        return str(raw["mode"])
    return "UNSET"


def _selector(pa: Mapping[str, Any]) -> dict[str, str] | None:
    """matchLabels of a workload policy; None for namespace/mesh level (no or empty selector)."""
    sel = spec(pa).get("selector")
    if not isinstance(sel, dict):
        return None
    ml = sel.get("matchLabels")
    if not isinstance(ml, dict) or not ml:
        return None
    return {str(k): str(v) for k, v in ml.items()}


def selects(match_labels: Mapping[str, str], pod_labels: Mapping[str, str]) -> bool:
    return match_labels.items() <= pod_labels.items()


class PeerAuthIndex:
    """The PeerAuthentications of a snapshot, arranged for per-pod lookups."""

    def __init__(self, policies: Iterable[KubeObject], root_namespace: str) -> None:
        self.root_namespace = root_namespace
        mesh: list[KubeObject] = []
        per_ns: dict[str, list[KubeObject]] = defaultdict(list)
        workload: dict[str, list[tuple[dict[str, str], KubeObject]]] = defaultdict(list)
        self.ignored: list[tuple[KubeObject, str]] = []
        self.shadowed: list[tuple[KubeObject, KubeObject]] = []  # (loser, winner)
        for pa in sorted(policies, key=_sort_key):
            ns, sel = namespace(pa), _selector(pa)
            if sel is None:
                if spec(pa).get("portLevelMtls"):
                    self.ignored.append(
                        (pa, "portLevelMtls without a workload selector is ignored by Istio")
                    )
                (mesh if ns == root_namespace else per_ns[ns]).append(pa)
            elif ns == root_namespace:
                self.ignored.append(
                    (pa, f"a selector policy in the root namespace {ns} is ignored by Istio")
                )
            else:
                workload[ns].append((sel, pa))
        self.mesh: KubeObject | None = mesh[0] if mesh else None
        self.namespace_policy: dict[str, KubeObject] = {ns: lst[0] for ns, lst in per_ns.items()}
        for lst in [mesh, *per_ns.values()]:
            self.shadowed.extend((loser, lst[0]) for loser in lst[1:])
        self._workload = dict(workload)
        self._base_cache: dict[str, ModeDecision] = {}

    def has_policy_in(self, ns: str) -> bool:
        return ns in self.namespace_policy or ns in self._workload

    def workload_policies(self, ns: str, pod_labels: Mapping[str, str]) -> list[KubeObject]:
        """Every selector policy that selects the pod, oldest first (the first one counts)."""
        return [pa for sel, pa in self._workload.get(ns, ()) if selects(sel, pod_labels)]

    def _base(self, ns: str) -> ModeDecision:
        """Mesh then namespace level, for pods no workload policy selects."""
        got = self._base_cache.get(ns)
        if got is None:
            mode, source = "PERMISSIVE", "no PeerAuthentication (Istio default PERMISSIVE)"
            for level, pa in (("mesh", self.mesh), ("namespace", self.namespace_policy.get(ns))):
                if pa is not None:
                    m = _mtls_mode(spec(pa).get("mtls"))
                    if m != "UNSET":
                        mode, source = m, f"{level} PeerAuthentication {ref(pa)}"
            got = self._base_cache[ns] = ModeDecision(Expect(mode), source)
        return got

    def for_workload(self, pod_namespace: str, pod_labels: Mapping[str, str]) -> WorkloadPolicy:
        """The composed policy of one workload; ``.at(target_port)`` gives a port's mode."""
        base = self._base(pod_namespace)
        winners = self.workload_policies(pod_namespace, pod_labels)
        if not winners:
            return WorkloadPolicy(base, {})
        workload = winners[0]
        m = _mtls_mode(spec(workload).get("mtls"))
        if m != "UNSET":
            base = ModeDecision(Expect(m), f"workload PeerAuthentication {ref(workload)}")
        ports: dict[int, ModeDecision] = {}
        plm = spec(workload).get("portLevelMtls")
        if isinstance(plm, dict):
            for k, v in plm.items():
                port, pm = port_key(k), _mtls_mode(v)
                if port is not None and pm != "UNSET":
                    ports[port] = ModeDecision(
                        Expect(pm), f"workload PeerAuthentication {ref(workload)} port {port}"
                    )
        return WorkloadPolicy(base, ports)

    def effective(
        self, pod_namespace: str, pod_labels: Mapping[str, str], target_port: int | None
    ) -> ModeDecision:
        return self.for_workload(pod_namespace, pod_labels).at(target_port)


@dataclass(frozen=True)
class WorkloadPolicy:
    """A workload's composed mode and its port-level exceptions (keyed by target port;
    an UNSET port entry is simply absent: it inherits ``workload``)."""

    workload: ModeDecision
    ports: Mapping[int, ModeDecision]

    def at(self, target_port: int | None) -> ModeDecision:
        if target_port is None:
            return self.workload
        return self.ports.get(target_port, self.workload)


# ---- sidecars, injection, ambient -------------------------------------------------------


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    if SIDECAR_STATUS in annotations_of(pod):
        return True
    s = spec(pod)
    for c in s.get("containers") or []:
        if isinstance(c, dict) and c.get("name") == PROXY_NAME:
            return True
    for c in s.get("initContainers") or []:
        if (
            isinstance(c, dict)
            and c.get("name") == PROXY_NAME
            and c.get("restartPolicy") == "Always"
        ):
            return True
    return False


def would_inject(pod: Mapping[str, Any], ns_labels: Mapping[str, str]) -> bool:
    """Whether Istio's default injection webhooks would add a sidecar to this pod.

    Used for YAML that has not been through the API server (the lab, rehearsal):
    namespace ``istio-injection=enabled`` or ``istio.io/rev`` injects unless the pod
    opts out with label ``sidecar.istio.io/inject: "false"``; ``istio-injection=disabled``
    never injects; elsewhere only pods labelled ``sidecar.istio.io/inject: "true"``.
    Host-network pods are never injected.
    """
    if spec(pod).get("hostNetwork") is True:
        return False
    pod_opt = labels_of(pod).get(SIDECAR_INJECT_LABEL)
    ns_inject = ns_labels.get("istio-injection")
    if ns_inject == "disabled":
        return False
    if ns_inject == "enabled" or "istio.io/rev" in ns_labels:
        return pod_opt != "false"
    return pod_opt == "true"


def injected(pod: KubeObject) -> KubeObject:
    """A copy of ``pod`` as the injector leaves it: the marks ``has_sidecar`` and auto-mTLS read."""
    out = dict(pod)
    md = dict(out.get("metadata") or {})
    md["annotations"] = {**annotations_of(pod), SIDECAR_STATUS: '{"containers":["istio-proxy"]}'}
    md["labels"] = {**labels_of(pod), TLS_MODE_LABEL: "istio"}
    out["metadata"] = md
    return out


def ambient_labeled(pod: Mapping[str, Any], ns_labels: Mapping[str, str]) -> bool:
    pod_mode = labels_of(pod).get(DATAPLANE_MODE)
    if pod_mode is not None:
        return pod_mode == "ambient"
    return ns_labels.get(DATAPLANE_MODE) == "ambient"


def ambient_enrolled(pod: Mapping[str, Any], ns_labels: Mapping[str, str]) -> bool:
    """Captured by ztunnel: labelled ambient and redirected by istio-cni, with no sidecar."""
    return (
        ambient_labeled(pod, ns_labels)
        and annotations_of(pod).get(AMBIENT_REDIRECTION) == "enabled"
        and not has_sidecar(pod)
    )


def expect_for(mode: Expect, sidecar: bool, ambient: bool) -> Expect:
    """What the wire must show: without a proxy in front, plaintext is accepted."""
    return mode if (sidecar or ambient) else Expect.NONE


# ---- ports and protocols ----------------------------------------------------------------

_HTTP_PROTOCOLS = ("http", "http2", "grpc", "grpc-web", "h2c")
_TCP_PROTOCOLS = ("tcp", "tls", "https", "mongo", "mysql", "redis", "udp")
_APP_PROTOCOL_HTTP = {"http", "http2", "grpc", "grpc-web", "kubernetes.io/h2c", "kubernetes.io/ws"}


def port_protocol(service_port: Mapping[str, Any]) -> Protocol:
    """Istio's explicit protocol selection: ``appProtocol``, else the port name's prefix
    (``<protocol>[-suffix]``). Unnamed ports are sniffed by Istio; we plan them as
    HTTP, the protocol its detection exists for."""
    app = service_port.get("appProtocol")
    if isinstance(app, str) and app:
        a = app.lower()
        return Protocol.HTTP if a in _APP_PROTOCOL_HTTP else Protocol.TCP
    port_name = service_port.get("name")
    if isinstance(port_name, str) and port_name:
        prefix = port_name.lower().split("-", 1)[0]
        if port_name.lower().startswith("grpc-web"):
            return Protocol.HTTP
        if prefix in _HTTP_PROTOCOLS:
            return Protocol.HTTP
        if prefix in _TCP_PROTOCOLS:
            return Protocol.TCP
    return Protocol.HTTP


def container_ports(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Declared ports of the app containers (the sidecar's own ports excluded)."""
    out: list[Mapping[str, Any]] = []
    for c in spec(pod).get("containers") or ():
        if type(c) is dict and c.get("name") != PROXY_NAME:
            for p in c.get("ports") or ():
                if type(p) is dict:
                    out.append(p)
    return out


def resolve_target_port(
    service_port: Mapping[str, Any], pod: Mapping[str, Any] | None
) -> int | None:
    """The pod port a Service port sends to: a number, or a container port *name*
    looked up in this pod (pods behind one Service may resolve a name differently)."""
    tp = service_port.get("targetPort")
    if tp is None:
        p = service_port.get("port")
        return p if isinstance(p, int) else None
    if isinstance(tp, int):
        return tp
    if isinstance(tp, str) and tp.isdigit():
        return int(tp)
    if pod is None:
        return None
    for cp in container_ports(pod):
        if cp.get("name") == tp and (cp.get("protocol") or "TCP") == (
            service_port.get("protocol") or "TCP"
        ):
            v = cp.get("containerPort")
            return v if isinstance(v, int) else None
    return None


# ---- DestinationRules -------------------------------------------------------------------


@dataclass(frozen=True)
class DrTls:
    """The TLS a DestinationRule sets for one host and service port (mode None: not set)."""

    mode: str | None = None
    source: str | None = None  # "DestinationRule ns/name" (+ " port N")


def dr_host(dr: Mapping[str, Any], cluster_domain: str) -> str:
    """A DR's host as Istio resolves it: a short name is in the DR's namespace."""
    host = str(spec(dr).get("host", ""))
    if "." not in host and host != "*":
        return f"{host}.{namespace(dr)}.svc.{cluster_domain}"
    return host


def host_match(pattern: str, host: str) -> int | None:
    """Specificity of a match (higher wins), None when ``pattern`` does not cover ``host``."""
    if pattern == host:
        return 1_000_000
    if pattern == "*":
        return 0
    if pattern.startswith("*.") and host.endswith(pattern[1:]):
        return len(pattern)
    return None


def in_cluster_host(host: str, cluster_domain: str) -> bool:
    return host.endswith(f".svc.{cluster_domain}") or host == "*" or "." not in host


def _exported_to(dr: Mapping[str, Any], client_ns: str | None) -> bool:
    export = spec(dr).get("exportTo")
    if not isinstance(export, list) or not export:
        return True
    if "*" in export:
        return True
    own = namespace(dr)
    return client_ns is not None and (client_ns in export or ("." in export and client_ns == own))


class DestinationRuleIndex:
    def __init__(
        self, rules: Iterable[KubeObject], root_namespace: str, cluster_domain: str
    ) -> None:
        self.root_namespace = root_namespace
        self.cluster_domain = cluster_domain
        self._by_ns: dict[str, list[tuple[str, KubeObject]]] = defaultdict(list)
        for dr in sorted(rules, key=_sort_key):
            self._by_ns[namespace(dr)].append((dr_host(dr, cluster_domain), dr))

    def rule_for(
        self, host: str, service_namespace: str, client_namespace: str | None
    ) -> KubeObject | None:
        order: list[str] = []
        for ns in (client_namespace, service_namespace, self.root_namespace):
            if ns is not None and ns not in order:
                order.append(ns)
        order.extend(sorted(ns for ns in self._by_ns if ns not in order))
        for ns in order:
            best: tuple[int, KubeObject] | None = None
            for pattern, dr in self._by_ns.get(ns, ()):
                score = host_match(pattern, host)
                if score is None or not _exported_to(dr, client_namespace):
                    continue
                if best is None or score > best[0]:  # sorted oldest first: ties keep the oldest
                    best = (score, dr)
            if best is not None:
                return best[1]
        return None

    def tls_for(
        self, host: str, service_namespace: str, service_port: int, client_namespace: str | None
    ) -> DrTls:
        dr = self.rule_for(host, service_namespace, client_namespace)
        if dr is None:
            return DrTls()
        tp = spec(dr).get("trafficPolicy")
        if not isinstance(tp, dict):
            return DrTls()
        for pls in tp.get("portLevelSettings") or []:
            if pls["port"].get("number") == service_port and isinstance(pls.get("tls"), dict):
                mode = pls["tls"].get("mode")
                if isinstance(mode, str):
                    return DrTls(mode, f"DestinationRule {ref(dr)} port {service_port}")
        tls = tp.get("tls")
        if isinstance(tls, dict) and isinstance(tls.get("mode"), str):
            return DrTls(str(tls["mode"]), f"DestinationRule {ref(dr)}")
        return DrTls()


# ---- what a sidecar client does towards one endpoint ----------------------------------------


class ClientTls:
    ISTIO_MTLS = "istio-mtls"
    PLAINTEXT = "plaintext"
    SIMPLE = "simple-tls"
    MUTUAL = "mutual-tls"


class Outcome:
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ClientView:
    """A sidecar client's call to one endpoint: what it sends and whether it can work."""

    tls: str  # ClientTls value
    mtls: bool  # Istio mTLS (the server sees the client's SPIFFE identity)
    outcome: str  # Outcome value
    reason: str


@lru_cache(maxsize=256)  # pure, and called once per edge with few distinct arguments
def client_view(
    dr: DrTls,
    server_mode: Expect,
    has_proxy: bool,
    tls_mode_label: str | None,
    ambient: bool = False,
) -> ClientView:
    """Auto-mTLS (default on): mTLS only to endpoints labelled
    ``security.istio.io/tlsMode: istio`` (or captured by ztunnel), and not to a DISABLE
    port; the label decides, not whether a proxy is really there. An explicit
    DestinationRule TLS mode overrides auto-mTLS. ``has_proxy``: sidecar or ztunnel."""
    mode = dr.mode
    by = f" ({dr.source})" if dr.source else ""
    if mode is None:
        labelled = tls_mode_label == "istio" or ambient
        if labelled and server_mode != Expect.DISABLE:
            if has_proxy:
                return ClientView(ClientTls.ISTIO_MTLS, True, Outcome.OK, "auto-mTLS")
            return ClientView(
                ClientTls.ISTIO_MTLS,
                True,
                Outcome.FAIL,
                f"auto-mTLS: endpoint labelled {TLS_MODE_LABEL}=istio but has no sidecar",
            )
        why = (
            "auto-mTLS: server port is DISABLE"
            if labelled
            else f"auto-mTLS: endpoint not labelled {TLS_MODE_LABEL}=istio"
        )
        if has_proxy and server_mode == Expect.STRICT:
            return ClientView(
                ClientTls.PLAINTEXT, False, Outcome.FAIL, f"{why}: plaintext to a STRICT port"
            )
        return ClientView(ClientTls.PLAINTEXT, False, Outcome.OK, why)
    if mode == "ISTIO_MUTUAL":
        if not has_proxy:
            return ClientView(
                ClientTls.ISTIO_MTLS,
                True,
                Outcome.FAIL,
                f"ISTIO_MUTUAL{by} to a workload without a sidecar: TLS to a plaintext app fails",
            )
        if server_mode == Expect.DISABLE:
            return ClientView(
                ClientTls.ISTIO_MTLS,
                True,
                Outcome.FAIL,
                f"ISTIO_MUTUAL{by} to a DISABLE port: the server takes plaintext only",
            )
        return ClientView(ClientTls.ISTIO_MTLS, True, Outcome.OK, f"ISTIO_MUTUAL{by}")
    if mode == "DISABLE":
        if has_proxy and server_mode == Expect.STRICT:
            return ClientView(
                ClientTls.PLAINTEXT,
                False,
                Outcome.FAIL,
                f"DISABLE{by} sends plaintext to a STRICT port: clients get 503",
            )
        return ClientView(ClientTls.PLAINTEXT, False, Outcome.OK, f"DISABLE{by}")
    kind = ClientTls.SIMPLE if mode == "SIMPLE" else ClientTls.MUTUAL
    return ClientView(
        kind,
        False,
        Outcome.UNKNOWN,
        f"{mode}{by}: TLS with non-mesh certificates; a sidecar server rejects it unless "
        "its certificates come from the mesh CA",
    )


# ---- small helpers the planner shares -------------------------------------------------------


def service_selector(service: Mapping[str, Any]) -> dict[str, str] | None:
    sel = spec(service).get("selector")
    if not isinstance(sel, dict) or not sel:
        return None
    return {str(k): str(v) for k, v in sel.items()}


def service_ports(service: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    return [p for p in spec(service).get("ports") or [] if isinstance(p, dict)]
