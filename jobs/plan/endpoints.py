"""Which addresses behind a Service are mesh workloads the probes may be sent to.

The plaintext, peer-cert and foreign-client checks connect straight to the
addresses a plan names, so a plan must only ever name the IP of a pod of the
Service itself. Anyone who can write an EndpointSlice (or a Service without a
selector) in a planned namespace decides what the slices say; nothing in them is
trusted on its own. The rules (issue 17 rule 1):

- An endpoint is an address from ``status.podIPs`` of a pod that is ``Running``,
  not terminating (no ``deletionTimestamp``), in the Service's namespace, selected
  by the Service's selector (when it has one), and not on the host network (its
  address would be the node's: ``spec.hostNetwork``, or a pod IP equal to
  ``status.hostIP``).
- EndpointSlices (``kubernetes.io/service-name`` label, the Service's namespace)
  say which of those pods serve and on which port. An address is used only when the
  slice's ``addressType`` is IPv4/IPv6, the address is an IP literal of that family,
  and it is one of the ``status.podIPs`` of the Pod its ``targetRef`` names, in the
  same namespace. Consumers use the first address of an endpoint (Kubernetes
  discovery/v1 EndpointSlice API: "consumers must … use the first element").
- Without slices (YAML that has none), the Service's selector picks ready pods (every
  running pod with ``publishNotReadyAddresses``). A pod
  without any address is planned (configuration only, no endpoint) only when it comes
  from YAML not yet applied (no ``metadata.uid``); a cluster's pod without one serves
  nothing.
- Whatever is left out and still receives the Service's traffic is ``routed``:
  the plan cannot verify that port, and compliance must not pass there.

Names that go into identities and hosts must be Kubernetes names (DNS-1123
labels/subdomains), which are also valid SPIFFE path segments.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobs.plan.fields import (
    KubeObject,
    label_map,
    meta,
    name,
    namespace,
    pod_ready,
    ref,
    service_account,
    spec,
)

SLICE_SERVICE_LABEL = "kubernetes.io/service-name"

# k8s.io/apimachinery/pkg/util/validation: IsDNS1123Label / IsDNS1123Subdomain.
_DNS1123_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)
_FAMILY = {"IPv4": 4, "IPv6": 6}


def dns_label(text: object) -> bool:
    """A namespace or Service name Kubernetes accepts (and a valid SPIFFE segment)."""
    return isinstance(text, str) and _DNS1123_LABEL.fullmatch(text) is not None


def dns_subdomain(text: object) -> bool:
    """A service account name Kubernetes accepts (and a valid SPIFFE segment)."""
    return (
        isinstance(text, str)
        and len(text) <= 253
        and _DNS1123_SUBDOMAIN.fullmatch(text) is not None
    )


# A canonical dotted quad (no leading zeros, each octet 0-255): equal to its own
# ipaddress rendering, and about thirty times cheaper to recognise than parsing it.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def ip_literal(text: object) -> str | None:
    """The canonical text of an address that can be a pod's: an IP literal (no host
    name, no zone, no surrounding space), not unspecified (``0.0.0.0`` connects to
    the local host), multicast, link-local (169.254/16 holds cloud metadata servers) or
    the broadcast address. None otherwise."""
    if not isinstance(text, str) or not text or len(text) > 64:
        return None
    if _IPV4.fullmatch(text):
        first = int(text.partition(".")[0])
        if text == "0.0.0.0" or 224 <= first <= 239 or text == "255.255.255.255":
            return None
        if text.startswith("169.254."):  # link-local: the node's metadata server, never a pod
            return None
        return text
    if ":" not in text or text.strip() != text:
        return None  # not IPv4 in canonical form, and not IPv6
    try:
        ip = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    if ip.scope_id is not None or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        return None
    if ip.ipv4_mapped is not None:
        # ``::ffff:a.b.c.d`` reaches the IPv4 host (127.0.0.1, 169.254.169.254 ...) and is
        # never an IPv6 pod address (k8s.io/utils/net IsIPv6 says no).
        return None
    return str(ip)


def ip_family(ip: str) -> int:
    """4 or 6, for an ``ip_literal`` result."""
    return 6 if ":" in ip else 4


def pod_ips(
    pod: Mapping[str, Any], literal: Callable[[object], str | None] = ip_literal
) -> tuple[list[str], str | None]:
    """The pod's addresses (canonical text) from ``status.podIPs`` (``status.podIP``
    when the list is absent), primary first, and the first entry that is not an IP
    literal, if any. ``literal`` is ``ip_literal`` (or a memo of it)."""
    status = pod.get("status")
    if not isinstance(status, dict):
        return [], None
    raw = status.get("podIPs")
    texts: list[object]
    if isinstance(raw, list):
        texts = [e.get("ip") if isinstance(e, dict) else e for e in raw]
    elif status.get("podIP") is not None:
        texts = [status.get("podIP")]
    else:
        texts = []
    out: list[str] = []
    for t in texts:
        ip = literal(t)
        if ip is None:
            return out, str(t)[:64]
        out.append(ip)
    return out, None


def _loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, for an ``ip_literal`` result."""
    return ip.startswith("127.") or ip == "::1"


def running(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status")
    return (
        isinstance(status, dict)
        and status.get("phase") == "Running"
        and not meta(pod).get("deletionTimestamp")
    )


def host_network(
    pod: Mapping[str, Any],
    ips: Iterable[str],
    literal: Callable[[object], str | None] = ip_literal,
) -> bool:
    """On the node's network; ``literal`` is ``ip_literal`` (or a memo of it)."""
    if spec(pod).get("hostNetwork") is True:
        return True
    status = pod.get("status")
    host_ip = literal(status.get("hostIP")) if isinstance(status, dict) else None
    return host_ip is not None and host_ip in ips


@dataclass(frozen=True, slots=True)
class Backend:
    """A pod that serves the Service: its probed address (None: the pod has no
    address yet - YAML not applied) and, from an EndpointSlice, its port map
    (service port name -> target port; None: resolve the targetPort on the pod)."""

    pod: KubeObject
    ip: str | None
    slice_ports: Mapping[str, int | None] | None = None


@dataclass(frozen=True, slots=True)
class Excluded:
    """Something behind a Service that is not probed. ``routed``: the Service's
    traffic really goes there, so nothing about that port can be verified as a
    whole. ``inconsistent``: the object contradicts itself or the pod it names (an
    object that could not be used: an error finding)."""

    obj: str
    address: str | None
    reason: str
    routed: bool = True
    inconsistent: bool = False
    # The traffic goes there, and it may well be a mesh workload, but the plan cannot
    # tell what it must show (its control plane's mesh config is unknown): compliance
    # errors there (could not observe) rather than failing.
    unknown: bool = False

    def text(self) -> str:
        at = f" address {self.address}" if self.address is not None else ""
        return f"{self.obj}{at}: {self.reason}; not probed"


@dataclass
class ServiceBackends:
    backends: list[Backend] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)
    why_none: str = ""  # when ``backends`` is empty: why nothing serves the Service

    @property
    def routed_elsewhere(self) -> list[Excluded]:
        return [e for e in self.excluded if e.routed]


class PodIndex:
    """Pods of the planned namespaces, indexed once: by (namespace, name) and by
    (namespace, label key, label value), so a Service's selector costs the shortest
    posting list of its labels, not every pod of the namespace. The label index is
    built on the first selector lookup: with EndpointSlices none is needed."""

    def __init__(
        self,
        pods: Iterable[KubeObject],
        not_pods: Mapping[str, str] | None = None,
        *,
        loopback_ok: bool = False,
        workload_problem: Callable[[KubeObject], Excluded | None] | None = None,
    ) -> None:
        # Loopback is never a pod's address (Kubernetes' ValidateEndpointIP refuses
        # 127.0.0.0/8 and ::1) and would reach the probe pod itself; only the lab, whose
        # pods live on 127/8, allows it.
        self.loopback_ok = loopback_ok
        # Why a pod that is otherwise a mesh workload still cannot be planned (the
        # planner's: e.g. its revision's mesh config is unknown), checked last.
        self.workload_problem = workload_problem
        # Addresses known to be something else (a node, a Service's cluster IP): a pod
        # whose status claims one is not probed there.
        self.not_pods: Mapping[str, str] = not_pods or {}
        self.by_key: dict[tuple[str, str], KubeObject] = {}
        self._pods = list(pods)
        self._by_label: (
            dict[tuple[str, str, str], list[tuple[KubeObject, Mapping[str, Any]]]] | None
        ) = None
        for p in self._pods:
            self.by_key[(namespace(p), name(p))] = p
        # Per-pod answers, computed on first use: a pod may sit behind many Services
        # and ports, and the planner reads its addresses again. Keyed by id(pod): the
        # index lives for one plan, the snapshot holds every pod object as long (so an
        # id never names another pod), and nothing changes a pod while a plan is built.
        self._addresses: dict[int, tuple[list[str], str | None]] = {}
        self._problems: dict[int, Excluded | None] = {}
        self._literals: dict[str, str | None] = {}
        self._names: dict[str, bool] = {}

    def valid_name(self, sa: str) -> bool:
        """``dns_subdomain(sa)``, once per service account name."""
        got = self._names.get(sa)
        if got is None:
            got = self._names[sa] = dns_subdomain(sa)
        return got

    def literal(self, text: object) -> str | None:
        """``ip_literal(text)``, once per string: a node's address is on all its pods,
        and a slice's address is the pod's own."""
        if type(text) is not str:
            return ip_literal(text)
        if text in self._literals:
            return self._literals[text]
        got = self._literals[text] = ip_literal(text)
        return got

    def addresses(self, pod: KubeObject) -> tuple[list[str], str | None]:
        """``pod_ips(pod)``, once per pod (the list is shared: read it only)."""
        got = self._addresses.get(id(pod))
        if got is None:
            got = self._addresses[id(pod)] = pod_ips(pod, self.literal)
        return got

    def problem(self, pod: KubeObject) -> Excluded | None:
        """Why a running pod is still not a probe target (``_pod_problem``), once per pod."""
        key = id(pod)
        if key in self._problems:
            return self._problems[key]
        ips, bad = self.addresses(pod)
        got = self._problems[key] = _pod_problem(pod, ips, bad, self)
        return got

    def _label_index(
        self,
    ) -> dict[tuple[str, str, str], list[tuple[KubeObject, Mapping[str, Any]]]]:
        if self._by_label is None:
            by_label: dict[tuple[str, str, str], list[tuple[KubeObject, Mapping[str, Any]]]]
            by_label = defaultdict(list)
            for p in self._pods:
                ns = namespace(p)
                lbl = label_map(p)  # read only: selectors compare against it
                for k, v in lbl.items():
                    if isinstance(v, str):
                        by_label[(ns, k, v)].append((p, lbl))
            self._by_label = by_label
        return self._by_label

    def selected(self, ns: str, selector: Mapping[str, str]) -> list[KubeObject]:
        if not selector:
            return []
        by_label = self._label_index()
        postings = [by_label.get((ns, k, v), []) for k, v in selector.items()]
        shortest = min(postings, key=len)
        return [p for p, lbl in shortest if selector.items() <= lbl.items()]


def _selector(service: Mapping[str, Any]) -> dict[str, str] | None:
    sel = spec(service).get("selector")
    if not isinstance(sel, dict) or not sel:
        return None
    return {str(k): str(v) for k, v in sel.items()}


def known_addresses(
    pods: Iterable[Mapping[str, Any]], services: Iterable[Mapping[str, Any]]
) -> dict[str, str]:
    """Addresses that are not a pod's own, with what they are: every node's
    (``status.hostIP`` of any pod) and every Service's cluster IPs. (Two pods with
    one address are left alone: test beds and the lab's loopback setups share one.)"""
    out: dict[str, str] = {}
    seen: set[object] = set()  # a node's address repeats on every pod of the node
    for p in pods:
        status = p.get("status")
        if isinstance(status, dict):
            raw = status.get("hostIP")
            if type(raw) is str:
                if raw in seen:
                    continue
                seen.add(raw)
            ip = ip_literal(raw)
            if ip is not None:
                out.setdefault(ip, "a node's address")
    for svc in services:
        sp = spec(svc)
        raw = sp.get("clusterIPs")
        texts = raw if isinstance(raw, list) else [sp.get("clusterIP")]
        for t in texts:
            ip = ip_literal(t)
            if ip is not None:
                out.setdefault(ip, f"the cluster IP of Service {ref(svc)}")
    return out


def _pod_obj(pod: KubeObject) -> str:
    """How findings name a pod (built only when one is written: most pods pass)."""
    return f"Pod {ref(pod)}"


def _pod_problem(
    pod: KubeObject, ips: list[str], bad_ip: str | None, index: PodIndex
) -> Excluded | None:
    """Why a running pod of the Service is still not a probe target, if it is not one."""
    not_pods = index.not_pods
    loopback = None
    if not index.loopback_ok:
        for ip in ips:
            if _loopback(ip):
                loopback = ip
                break
    if bad_ip is None and loopback is not None:
        return Excluded(
            _pod_obj(pod),
            loopback,
            "status.podIPs holds a loopback address, which no pod has (it would reach the "
            "probe pod itself)",
            inconsistent=True,
        )
    if bad_ip is not None:
        return Excluded(
            _pod_obj(pod),
            bad_ip,
            "status.podIPs holds something that is no pod address (not an IP literal, or "
            "unspecified, multicast, link-local or IPv4-mapped)",
            inconsistent=True,
        )
    if host_network(pod, ips, index.literal):
        return Excluded(
            _pod_obj(pod),
            ips[0] if ips else None,
            "runs on the host network: its address is the node's, not a mesh workload",
        )
    claimed = None
    for ip in ips:
        if ip in not_pods:
            claimed = ip
            break
    if claimed is not None:
        return Excluded(
            _pod_obj(pod),
            claimed,
            f"status.podIPs claims {not_pods[claimed]}, which no pod has",
            inconsistent=True,
        )
    sa = service_account(pod)
    if not index.valid_name(sa):
        return Excluded(
            _pod_obj(pod),
            None,
            f"service account {sa[:64]!r} is not a Kubernetes name: no "
            "SPIFFE identity can be derived",
            inconsistent=True,
        )
    if index.workload_problem is not None:
        return index.workload_problem(pod)
    return None


def _slice_ports(sl: Mapping[str, Any]) -> dict[str, int | None] | str:
    """Port name -> target port of one slice (None: "all ports"), or why unusable."""
    out: dict[str, int | None] = {}
    for p in sl.get("ports") or ():
        pname = p.get("name") or ""
        port = p.get("port")
        if port is None:
            out[str(pname)] = None
        elif type(port) is int and 0 < port < 65536:
            out[str(pname)] = port
        else:
            return f"port {str(port)[:16]!r} is not a port number"
    return out


def service_backends(
    service: KubeObject,
    pods: PodIndex,
    slices: Iterable[KubeObject],
) -> ServiceBackends:
    """The pods the Service's traffic reaches that are mesh workloads we may probe,
    and everything else behind it (``excluded``)."""
    ns = namespace(service)
    sel = _selector(service)
    out = ServiceBackends()
    slices = list(slices)
    if not slices:
        if sel is None:
            out.why_none = "no selector and no EndpointSlice: no pod serves this Service"
            return out
        found = pods.selected(ns, sel)
        # publishNotReadyAddresses: the EndpointSlice controller publishes every pod as
        # ready (pkg/controller/endpointslice ``podToEndpoint``), and Istio then sends
        # traffic to it (endpointslice.go ``endpointHealthStatus``): not-ready pods serve.
        any_ready = spec(service).get("publishNotReadyAddresses") is True
        for pod in found:
            if not running(pod) or not (any_ready or pod_ready(pod)):
                continue
            ips, _ = pods.addresses(pod)
            problem = pods.problem(pod)
            if problem is None and not ips and meta(pod).get("uid"):
                # A pod the API server holds and that has no address serves nothing;
                # only a pod from YAML not yet applied (no uid) is planned without one.
                problem = Excluded(
                    f"Pod {ref(pod)}", None, "has no address in status.podIPs", routed=False
                )
            if problem is not None:
                out.excluded.append(problem)
                continue
            out.backends.append(Backend(pod, ips[0] if ips else None))
        if not out.backends:
            out.why_none = (
                f"every pod it selects is left out ({out.excluded[0].text()})"
                if out.excluded
                else "no running, ready pod matches the selector"
                if found
                else f"no pod in {ns} matches the selector"
            )
        return out
    seen: set[tuple[int, str, tuple[tuple[str, int | None], ...]]] = set()
    for sl in slices:
        slice_obj = f"EndpointSlice {ref(sl)}"
        family = _FAMILY.get(str(sl.get("addressType")))
        if family is None:
            out.excluded.append(
                Excluded(
                    slice_obj,
                    None,
                    f"addressType {str(sl.get('addressType'))[:16]!r}: only IPv4/IPv6 pod "
                    "addresses are probed (an FQDN endpoint is not a mesh workload)",
                )
            )
            continue
        ports = _slice_ports(sl)
        if isinstance(ports, str):
            out.excluded.append(Excluded(slice_obj, None, ports, inconsistent=True))
            continue
        port_items = tuple(sorted(ports.items(), key=lambda kv: kv[0]))
        for ep in sl.get("endpoints") or ():
            cond = ep.get("conditions") if isinstance(ep.get("conditions"), dict) else {}
            if cond.get("ready") is False or cond.get("terminating") is True:
                continue
            addrs = ep["addresses"]
            if not addrs:
                continue
            raw = addrs[0]
            ip = pods.literal(raw)
            if ip is None or ip_family(ip) != family:
                out.excluded.append(
                    Excluded(
                        slice_obj,
                        str(raw)[:64],
                        f"not an IPv{family} address literal",
                        inconsistent=True,
                    )
                )
                continue
            excl = _slice_endpoint_problem(slice_obj, ip, ep, ns, sel, pods)
            if isinstance(excl, Excluded):
                out.excluded.append(excl)
                continue
            if excl is None:
                continue
            pod = excl
            # By identity: every slice address resolves through PodIndex.by_key, one
            # object per (namespace, name). Two slices may map the same pod's address
            # to different ports: Istio and kube-proxy send traffic to each (endpoints
            # are (address, port) pairs), so each is a backend of its own.
            key = (id(pod), ip, port_items)
            if key in seen:
                continue
            seen.add(key)
            out.backends.append(Backend(pod, ip, ports))
    if not out.backends:
        out.why_none = "no EndpointSlice address is a ready pod of this Service"
    return out


def _slice_endpoint_problem(
    slice_obj: str,
    ip: str,
    ep: Mapping[str, Any],
    ns: str,
    sel: Mapping[str, str] | None,
    pods: PodIndex,
) -> KubeObject | Excluded | None:
    """The pod behind one slice address; an Excluded saying why it is not one; None
    for a pod that simply does not serve (not running, terminating)."""
    shown = ip
    tref = ep.get("targetRef")
    if type(tref) is not dict or tref.get("kind") is None:
        return Excluded(
            slice_obj,
            shown,
            "no targetRef Pod: an address outside the mesh (a Service without a selector, "
            "or a hand-written endpoint)",
        )
    if tref.get("kind") != "Pod":
        return Excluded(slice_obj, shown, f"targetRef is a {str(tref.get('kind'))[:32]}, not a Pod")
    tns = tref.get("namespace")
    if tns not in (None, "", ns):
        return Excluded(
            slice_obj,
            shown,
            f"targetRef names a pod in namespace {str(tns)[:64]!r}: only pods of the "
            f"Service's own namespace {ns} are probed",
            inconsistent=True,
        )
    pname = tref.get("name")
    pod = pods.by_key.get((ns, pname)) if isinstance(pname, str) else None
    if pod is None:
        return Excluded(slice_obj, shown, f"targetRef Pod {ns}/{str(pname)[:64]} is not known")
    if not running(pod):
        return None
    lbl = meta(pod).get("labels")  # read, not copied: one pod per slice address
    if sel is not None and not (type(lbl) is dict and sel.items() <= lbl.items()):
        return Excluded(slice_obj, shown, f"Pod {ref(pod)} is not selected by the Service")
    problem = pods.problem(pod)
    if problem is not None:
        return problem
    ips, _ = pods.addresses(pod)
    if ip not in ips:
        have = ", ".join(ips) or "none"
        return Excluded(
            slice_obj,
            shown,
            f"is not an address of its targetRef Pod {ref(pod)} (status.podIPs: {have})",
            inconsistent=True,
        )
    return pod
