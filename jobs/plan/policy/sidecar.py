"""Sidecar resources (networking.istio.io): which services the probe's own sidecar can
reach, and what it does with the ones its Sidecar leaves out.

As istiod computes it (istio/istio master, pilot/pkg/model):
- push_context.go ``initSidecarScopes``: Sidecars are sorted oldest first
  (``sortConfigByCreationTime``: creationTimestamp, then name, then namespace), those with a
  ``workloadSelector`` in front; the first selector-less Sidecar of the root namespace is
  the mesh-wide default (``meshRootSidecarConfig``).
- push_context.go ``getSidecarScope`` (SidecarProxy): in the proxy's namespace, the first
  Sidecar whose ``workloadSelector.labels`` are a subset of the pod's labels, else the first
  selector-less one; only when none applies, the root namespace's default (converted for
  the proxy's namespace, so ``./`` means the proxy's namespace); else no Sidecar: every
  service (``DefaultSidecarScopeForNamespace``, an egress listener ``*/*``). A Sidecar in
  any other namespace never applies.
- sidecar.go ``initSidecarScopeInternalIndexes``: no ``egress`` (or an empty list) is one
  listener ``*/*``; ``convertIstioListenerToWrapper``: a host must be ``namespace/dnsName``
  with exactly one ``/`` (anything else is logged and skipped), ``.`` is the proxy's
  namespace, ``*`` any namespace; a namespace prefixed ``~`` (``excludePrefix``) makes the
  entry an exclusion in that namespace (``~/...``: in ``*``), so ``~/*`` excludes everything.
  ``selectServices``: a service excluded in its own namespace's or the ``*`` entries is
  never imported, whatever else matches (older Istio read ``~shop`` as a namespace name that
  matches nothing: the plan follows the newer, narrower reading).
  ``selectServices``: a service is imported when the hosts listed for its own namespace
  match it, else when the ``*`` namespace's do; ``hostClassification.Matches``: exact name,
  or a wildcard ``*suffix`` that the name ends with (pkg/config/host/name.go ``SubsetOf``).
  ``needsPortMatch``: a listener with a port imports only that port of a service.
- sidecar.go ``GetEgressListenerForRDS``: the listener for a port is the first one in order
  with that port number or without a port.
- Outbound traffic to a host the scope does not import: the Sidecar's own
  ``outboundTrafficPolicy`` when set (an unset ``mode`` is REGISTRY_ONLY, the zero value of
  istio/api networking/v1alpha3 sidecar.proto ``OutboundTrafficPolicy.Mode``), else the mesh
  config's (pkg/config/mesh/mesh.go ``DefaultMeshConfig``: ALLOW_ANY). REGISTRY_ONLY sends it
  to BlackHoleCluster (HTTP 502, TCP closed); ALLOW_ANY to PassthroughCluster, plain TCP to
  the original destination: the call is never Istio mTLS (pilot/pkg/networking/core
  listener.go / httproute.go ``BlackHoleCluster`` / ``PassthroughCluster``).

- Service ``networking.istio.io/exportTo`` (``exported_to``), with the mesh's
  ``defaultServiceExportTo`` for a Service without it.
- Only Sidecars of the probe's own revision (or without an ``istio.io/rev`` label) are
  read (crdclient ``inRevision``); a selector on labels set per run (``PER_RUN_LABELS``)
  may select the probe pods, so what it leaves out is unknown.

Not modelled: a VirtualService imported by the Sidecar can import its destination hosts
too (``collectImportedServices``); the plan does not read it, so it may predict a hidden
host that such a VirtualService imports (never the reverse).
A listener with ``captureMode: NONE`` or a ``bind`` address serves only an application that
connects to it explicitly: the probe's captured calls never reach it (treated as importing
nothing). Malformed values (which the API server's schema refuses, so only YAML holds them)
are findings; the plan then narrows what the probe can see, never widens it.
On the targets' side only one thing is read: a Sidecar in a planned namespace whose
``ingress[]`` listener has ``tls`` terminates TLS there with its own certificates for
callers from outside the mesh (istio/api sidecar.proto ``IstioIngressListener.tls``); the
plan does not model that port and says so (an error finding naming the Sidecar).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from jobs.plan.fields import KubeObject, created_at, labels_of, name, namespace, ref
from jobs.plan.meshconfig import (
    ALLOW_ANY,
    DEFAULT_OUTBOUND_MODE,
    OUTBOUND_MODES,
    REGISTRY_ONLY,
    REV_LABEL,
    UNKNOWN_MODE,
)
from jobs.plan.policy.client import ClientTls, ClientView, Outcome, plaintext_view
from jobs.plan.policy.destinationrules import PROBE_CLIENT_LABELS
from jobs.plan.policy.peerauth import selects
from probe.constants import APP_NAME_LABEL, COMPONENT_LABEL, INJECT_LABEL
from probe.model import Expect

# Bounds on one Sidecar (a hostile one can hold millions of hosts): what is past them is
# not read, which only narrows what the plan thinks the probe can reach.
MAX_LISTENERS = 1_000
MAX_HOSTS = 10_000
MAX_HOST_CHARS = 512  # a namespace (63) + "/" + a DNS name (253), with room
MAX_PROBLEMS = 20

# The probe pods with a sidecar whose egress scope matters: `mtlsprobe run`'s (the labels
# DestinationRule selectors are matched against too) and the continuous mode's sidecar
# agents (k8s/overlays/continuous/agents.yaml, DaemonSet mtlsprobe-agent-sidecar).
AGENT_SIDECAR_LABELS: Mapping[str, str] = MappingProxyType(
    {APP_NAME_LABEL: "mtlsprobe", COMPONENT_LABEL: "agent-sidecar", INJECT_LABEL: "true"}
)
# Labels the probe pods carry whose values the plan cannot know: the run id
# (jobs/launch/jobspec.py LABEL_RUN), the Job controller's (k8s.io/api batch/v1
# ``job-name``, ``controller-uid``, ``batch.kubernetes.io/*``, the completion index) and the
# DaemonSet controller's. A Sidecar selecting on them may or may not select a probe pod.
PER_RUN_LABELS = frozenset(
    {
        "mtlsprobe.dev/run-id",
        "job-name",
        "controller-uid",
        "batch.kubernetes.io/job-name",
        "batch.kubernetes.io/controller-uid",
        "batch.kubernetes.io/job-completion-index",
        "controller-revision-hash",
        "pod-template-generation",
    }
)
PROBE_CLIENTS: tuple[tuple[str, Mapping[str, str]], ...] = (
    ("the probe pods of `mtlsprobe run`", PROBE_CLIENT_LABELS),
    ("the sidecar agents", AGENT_SIDECAR_LABELS),
)


# ---- Service exportTo ------------------------------------------------------------------------

EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"


def exported_to(
    annotation: str | None,
    svc_ns: str,
    client_ns: str,
    default: tuple[str, ...] = ("*",),
) -> bool:
    """Whether a Service with this exportTo annotation is visible from ``client_ns``.

    pilot/pkg/serviceregistry/kube/conversion.go: a non-empty annotation is split on commas
    and each entry trimmed - empty entries are kept, so ``","`` or ``" "`` names the
    namespace "" and exports the Service nowhere. push_context.go ``serviceExportTo``: an
    absent or empty annotation takes the mesh's ``defaultServiceExportTo`` (``*`` when
    unset); ``initServiceRegistry``: ``*`` public (wins), else ``~`` nobody, else ``.`` or
    its own namespace private, other names exported there."""
    names = {n.strip() for n in annotation[:10_000].split(",")} if annotation else set(default)
    if "*" in names:
        return True
    if "~" in names:
        return False
    if client_ns in names:
        return True
    return client_ns == svc_ns and "." in names


# ---- one Sidecar, read defensively -----------------------------------------------------------


@dataclass(frozen=True)
class _Listener:
    """One egress listener: ``port`` None is the catch-all; hosts by namespace key
    (``.`` kept as is: it means the proxy's namespace, resolved at lookup)."""

    port: int | None
    exact: Mapping[str, frozenset[str]]
    suffixes: Mapping[str, frozenset[str]]  # wildcard hosts without their leading "*"
    captured: bool = True  # False: captureMode NONE or a bind address
    # ``~ns/host`` exclusions, keyed like the imports.
    excluded_exact: Mapping[str, frozenset[str]] = field(default_factory=dict)
    excluded_suffixes: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def _matches(self, key: str, host: str, excluded: bool = False) -> bool | None:
        """None when no host is listed for ``key``; else whether one matches ``host``."""
        if excluded:
            exact, suffixes = self.excluded_exact.get(key), self.excluded_suffixes.get(key)
        else:
            exact, suffixes = self.exact.get(key), self.suffixes.get(key)
        if exact is None and suffixes is None:
            return None
        if exact and host in exact:
            return True
        # ``SubsetOf``: the name ends with the wildcard's suffix; every suffix of the name is
        # looked up, so a Sidecar with thousands of wildcards costs len(host) lookups.
        if not suffixes:
            return False
        return any(host[i:] in suffixes for i in range(len(host) + 1))

    def imports(self, svc_ns: str, host: str, proxy_ns: str) -> bool:
        if not self.captured:
            return False
        # sidecar.go selectServices: exclusions of the service's namespace (``.`` when it is
        # the proxy's) or of ``*`` are checked first.
        keys = (svc_ns, ".", "*") if svc_ns == proxy_ns else (svc_ns, "*")
        if any(self._matches(k, host, excluded=True) for k in keys):
            return False
        own = self._matches(svc_ns, host)
        if svc_ns == proxy_ns:
            dot = self._matches(".", host)
            own = dot if own is None else (own or bool(dot))
        if own:
            return True
        return bool(self._matches("*", host))


@dataclass
class ParsedSidecar:
    obj: KubeObject
    selector: dict[str, str] | None
    listeners: tuple[_Listener, ...] | None  # None: egress unreadable, scope unknown
    mode: str | None  # the Sidecar's outboundTrafficPolicy mode; None: the mesh's
    problems: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"Sidecar {ref(self.obj)}"


def _problem(out: list[str], text: str) -> None:
    if len(out) < MAX_PROBLEMS:
        out.append(text)


def _selector(s: Mapping[str, Any], problems: list[str]) -> dict[str, str] | None:
    ws = s.get("workloadSelector")
    if ws is None:
        return None
    labels = ws.get("labels") if isinstance(ws, dict) else None
    if not isinstance(ws, dict) or (labels is not None and not isinstance(labels, dict)):
        _problem(problems, "workloadSelector.labels is not a mapping: read as selecting every pod")
        return {}
    return {str(k)[:317]: str(v)[:63] for k, v in (labels or {}).items()}


def _outbound(s: Mapping[str, Any], problems: list[str]) -> str | None:
    otp = s.get("outboundTrafficPolicy")
    if otp is None:
        return None
    if not isinstance(otp, dict):
        _problem(problems, "outboundTrafficPolicy is not a mapping")
        return UNKNOWN_MODE
    mode = otp.get("mode")
    if mode is None:
        return REGISTRY_ONLY  # the enum's zero value
    if mode not in OUTBOUND_MODES:
        _problem(
            problems,
            f"outboundTrafficPolicy.mode {str(mode)[:32]!r} is not REGISTRY_ONLY or ALLOW_ANY",
        )
        return UNKNOWN_MODE
    if mode == ALLOW_ANY and otp.get("egressProxy") is not None:
        # Unknown hosts go to that egress proxy, not to the target: not mTLS to it either.
        return f"{ALLOW_ANY} with an egressProxy"
    return str(mode)


def _port(raw: object, where: str, problems: list[str]) -> tuple[bool, int | None]:
    """(usable, port number or None for the catch-all)."""
    if raw is None:
        return True, None
    number = raw.get("number") if isinstance(raw, dict) else None
    if type(number) is int and 0 <= number < 65536:
        return True, number
    _problem(problems, f"{where}.port.number is not a port number: listener ignored")
    return False, None


_HostMaps = tuple[
    dict[str, set[str]], dict[str, set[str]], dict[str, set[str]], dict[str, set[str]]
]


def _hosts(raw: object, where: str, budget: list[int], problems: list[str]) -> _HostMaps:
    """(exact, wildcard suffixes, excluded exact, excluded suffixes) by namespace key."""
    exact: dict[str, set[str]] = defaultdict(set)
    suffixes: dict[str, set[str]] = defaultdict(set)
    ex_exact: dict[str, set[str]] = defaultdict(set)
    ex_suffixes: dict[str, set[str]] = defaultdict(set)
    if not isinstance(raw, list):
        _problem(problems, f"{where}.hosts is not a list: the listener imports nothing")
        return exact, suffixes, ex_exact, ex_suffixes
    over = False
    for i, h in enumerate(raw):
        if budget[0] <= 0 and not over:
            _problem(
                problems, f"more than {MAX_HOSTS} hosts: the rest are read for exclusions only"
            )
            over = True
        if over:
            # An unread import only narrows the scope; an unread ``~`` exclusion would widen
            # it, so those are still read (a cheap test per entry of an already-parsed list).
            if not (isinstance(h, str) and h.startswith("~") and len(h) <= MAX_HOST_CHARS):
                continue
        else:
            budget[0] -= 1
        if not isinstance(h, str) or len(h) > MAX_HOST_CHARS:
            _problem(problems, f"{where}.hosts[{i}] is not a host name: ignored")
            continue
        if h.count("/") != 1:  # convertIstioListenerToWrapper: "Illegal host in sidecar"
            _problem(
                problems, f"{where}.hosts[{i}] {h[:80]!r} is not namespace/dnsName: Istio skips it"
            )
            continue
        ns, host = h.split("/")
        into_exact, into_suffixes = exact, suffixes
        if ns.startswith("~"):  # excludePrefix; "~" alone is the "*" namespace
            ns = ns[1:] or "*"
            into_exact, into_suffixes = ex_exact, ex_suffixes
        if host.startswith("*"):
            into_suffixes[ns].add(host[1:])
        else:
            into_exact[ns].add(host)
    return exact, suffixes, ex_exact, ex_suffixes


def parse_sidecar(obj: KubeObject) -> ParsedSidecar:
    """Read one Sidecar as istiod would; what it cannot read becomes a problem, and the
    result can only narrow what the proxy reaches (or make it unknown)."""
    problems: list[str] = []
    s = obj.get("spec", {})
    if s is None:
        s = {}
    if not isinstance(s, dict):
        return ParsedSidecar(obj, {}, None, UNKNOWN_MODE, ["spec is not a mapping"])
    selector = _selector(s, problems)
    mode = _outbound(s, problems)
    egress = s.get("egress")
    if egress is None or egress == []:
        catch_all = _Listener(None, {"*": frozenset()}, {"*": frozenset({""})})  # "*/*"
        return ParsedSidecar(obj, selector, (catch_all,), mode, problems)
    if not isinstance(egress, list):
        problems.append("egress is not a list")
        return ParsedSidecar(obj, selector, None, mode, problems)
    listeners: list[_Listener] = []
    budget = [MAX_HOSTS]
    for i, e in enumerate(egress[:MAX_LISTENERS]):
        where = f"egress[{i}]"
        if not isinstance(e, dict):
            _problem(problems, f"{where} is not a mapping: ignored")
            continue
        ok, port = _port(e.get("port"), where, problems)
        if not ok:
            continue
        exact, suffixes, ex_exact, ex_suffixes = _hosts(e.get("hosts"), where, budget, problems)
        captured = e.get("captureMode") != "NONE" and not e.get("bind")
        listeners.append(
            _Listener(
                port,
                {k: frozenset(v) for k, v in exact.items()},
                {k: frozenset(v) for k, v in suffixes.items()},
                captured,
                {k: frozenset(v) for k, v in ex_exact.items()},
                {k: frozenset(v) for k, v in ex_suffixes.items()},
            )
        )
    if len(egress) > MAX_LISTENERS:
        _problem(problems, f"more than {MAX_LISTENERS} egress listeners: the rest are not read")
    return ParsedSidecar(obj, selector, tuple(listeners), mode, problems)


def ingress_tls_ports(obj: KubeObject) -> list[int | str]:
    """The ``ingress[].port.number`` of listeners with ``tls`` set (bounded; a port that
    cannot be read is shown as "?"). IstioIngressListener ``tls``: the sidecar terminates
    TLS there with the given certificates, for callers from outside the mesh."""
    s = obj.get("spec")
    ingress = s.get("ingress") if isinstance(s, dict) else None
    if not isinstance(ingress, list):
        return []
    out: list[int | str] = []
    for lst in ingress[:MAX_LISTENERS]:
        if isinstance(lst, dict) and lst.get("tls") is not None:
            port = lst.get("port")
            number = port.get("number") if isinstance(port, dict) else None
            out.append(number if type(number) is int else "?")
    return out


# ---- the scope of one proxy ------------------------------------------------------------------


@dataclass(frozen=True)
class EgressScope:
    """What one proxy (namespace, labels) reaches: its Sidecar (None: none applies, every
    service is reachable), why that Sidecar applies, and the outbound traffic policy."""

    sidecar: ParsedSidecar | None
    how: str
    proxy_ns: str
    mode: str
    mode_from: str
    # A Sidecar before ``sidecar`` whose workloadSelector selects these pods only when the
    # per-run labels (PER_RUN_LABELS) match: the scope it would give, or None.
    maybe: EgressScope | None = None

    def sees(self, svc_ns: str, host: str, port: int) -> bool | None:
        """Whether the proxy has ``host:port`` in its scope; None when it cannot be known."""
        sc = self.sidecar
        if sc is None:
            return True
        if sc.listeners is None:
            return None
        for lst in sc.listeners:  # GetEgressListenerForRDS
            if lst.port is None or lst.port == port:
                return lst.imports(svc_ns, host, self.proxy_ns)
        return False


@dataclass(frozen=True)
class Hidden:
    """A service port the probe's sidecar does not have in scope, and why."""

    client: str  # which probe pods
    scope: EgressScope
    known: bool  # False: the Sidecar could not be read
    # Set when the Service itself is not exported to the probe's namespace: "Service ns/name"
    # and its exportTo annotation (whatever the Sidecar says).
    service: str | None = None
    export_to: str | None = None
    maybe: bool = False  # the Sidecar selects them only if their per-run labels match
    why: str | None = None  # the probe's sidecar is configured by a mesh config not read

    @property
    def export_source(self) -> str:
        """Where the exportTo that hides the Service comes from, as words."""
        if self.export_to:
            return f"{EXPORT_TO_ANNOTATION}: {self.export_to!r}"
        return f"no {EXPORT_TO_ANNOTATION}, and the mesh config's defaultServiceExportTo"

    def view(self, host: str, port: int, server_mode: Expect, has_proxy: bool) -> ClientView:
        """What a call from the probe's sidecar to ``host:port`` does."""
        sc = self.scope.sidecar
        if self.why is not None:
            return ClientView(ClientTls.BLOCKED, False, Outcome.UNKNOWN, self.why)
        if self.service is not None:
            left_out = (
                f"{self.service} is not exported to namespace {self.scope.proxy_ns} "
                f"({self.export_source}), so {self.client} do not have "
                f"{host}:{port} in scope"
            )
        else:
            assert sc is not None
            left_out = (
                f"{sc.ref} ({self.scope.how}) leaves {host}:{port} out of the egress hosts of "
                f"{self.client}"
            )
        if self.maybe:
            assert sc is not None
            return ClientView(
                ClientTls.BLOCKED,
                False,
                Outcome.UNKNOWN,
                f"{sc.ref} ({self.scope.how}) leaves {host}:{port} out of its egress hosts, "
                f"and whether it applies to {self.client} depends on labels set on each run: "
                "the plan cannot know that the probe's call is mTLS",
            )
        if not self.known:
            assert sc is not None
            return ClientView(
                ClientTls.BLOCKED,
                False,
                Outcome.UNKNOWN,
                f"{sc.ref} ({self.scope.how}) cannot be read ({'; '.join(sc.problems[:2])}): "
                f"what {self.client} can reach is unknown",
            )
        mode, by = self.scope.mode, self.scope.mode_from
        if mode == REGISTRY_ONLY:
            return ClientView(
                ClientTls.BLOCKED,
                False,
                Outcome.FAIL,
                f"{left_out}, and outboundTrafficPolicy is REGISTRY_ONLY ({by}): the call goes "
                "to BlackHoleCluster (HTTP 502, TCP closed), never mTLS",
            )
        if mode == ALLOW_ANY:
            why = (
                f"{left_out}, and outboundTrafficPolicy is ALLOW_ANY ({by}): the call goes "
                "to PassthroughCluster, plaintext to the original destination, never mTLS"
            )
            return plaintext_view(why, has_proxy, server_mode)
        return ClientView(
            ClientTls.BLOCKED,
            False,
            Outcome.UNKNOWN,
            f"{left_out}, and outboundTrafficPolicy is {mode} ({by}): not mTLS to the target",
        )


class SidecarIndex:
    """The Sidecars that can apply to the probe's pods (its namespace and the root
    namespace; of the others only ``ingress`` TLS is looked at), arranged as istiod
    arranges them."""

    def __init__(
        self,
        sidecars: Iterable[KubeObject],
        root_namespace: str,
        client_namespace: str | None,
        mesh_mode: str = DEFAULT_OUTBOUND_MODE,
        mesh_from: str | None = None,
        planned: Callable[[str], bool] = lambda ns: False,
        default_service_export_to: tuple[str, ...] = ("*",),
        revision: str = "default",
    ) -> None:
        """``planned``: whether a namespace has planned pods (its Sidecars' ``ingress``
        TLS is reported as not modelled)."""
        sidecars = list(sidecars)
        self.ingress_tls = [
            (f"Sidecar {ref(s)}", ports)
            for s in sorted(sidecars, key=ref)
            if planned(namespace(s)) and (ports := ingress_tls_ports(s))
        ]
        self.root_namespace = root_namespace
        self.default_export_to = default_service_export_to
        self.client_namespace = client_namespace
        self.mesh_mode = mesh_mode
        self.mesh_from = f"mesh config {mesh_from}" if mesh_from else "Istio's default mesh config"
        wanted = {root_namespace, client_namespace}
        # pilot/pkg/config/kube/crdclient ``inRevision`` (pkg/config/model.go
        # ``LabelsInRevision``): istiod of revision R (the chart's REVISION, "default" for the
        # default one) reads only config objects without an ``istio.io/rev`` label or
        # labelled R - the probe's istiod never sees a Sidecar labelled for another.
        self.other_revision: list[tuple[str, str]] = []
        in_revision: list[KubeObject] = []
        for s in sidecars:
            if namespace(s) not in wanted:
                continue
            rev = labels_of(s).get(REV_LABEL)
            if rev is not None and rev != revision:
                self.other_revision.append((f"Sidecar {ref(s)}", str(rev)[:64]))
            else:
                in_revision.append(s)
        self.revision = revision
        parsed = [
            parse_sidecar(s)
            for s in sorted(in_revision, key=lambda s: (created_at(s), name(s), namespace(s)))
        ]
        self.parsed = parsed
        self.by_ns: dict[str, list[ParsedSidecar]] = defaultdict(list)
        for p in parsed:  # selector ones first, each group oldest first
            if p.selector is not None:
                self.by_ns[namespace(p.obj)].append(p)
        for p in parsed:
            if p.selector is None:
                self.by_ns[namespace(p.obj)].append(p)
        self.root_default = next(
            (p for p in self.by_ns.get(root_namespace, ()) if p.selector is None), None
        )
        self.scopes = [
            (who, self.scope(client_namespace, labels))
            for who, labels in PROBE_CLIENTS
            if client_namespace is not None
        ]
        # Set by the builder when the probe's sidecar belongs to a control-plane revision
        # whose client-side mesh settings are not the plan's: every mesh call is unknown.
        self.client_unknown: str | None = None
        # What planning found: (target name, Hidden), and the outcomes of its calls.
        self.hidden: list[tuple[str, Hidden]] = []
        self.outcomes: dict[str, set[str]] = defaultdict(set)

    def scope(self, ns: str, labels: Mapping[str, str]) -> EgressScope:
        """push_context.go ``getSidecarScope`` for a sidecar proxy: the first Sidecar whose
        ``workloadSelector.labels`` are a subset of the pod's (labels.Instance ``SubsetOf``)."""
        chosen: ParsedSidecar | None = None
        maybe: EgressScope | None = None
        how = "no Sidecar applies: every service is in scope"
        for p in self.by_ns.get(ns, ()):
            if p.selector is not None and not selects(p.selector, labels):
                known = {k: v for k, v in p.selector.items() if k not in PER_RUN_LABELS}
                if maybe is None and len(known) < len(p.selector) and selects(known, labels):
                    how_maybe = (
                        "its workloadSelector selects them if their per-run labels "
                        f"{sorted(set(p.selector) - set(known))} match"
                    )
                    mode, by = (p.mode, p.ref) if p.mode else (self.mesh_mode, self.mesh_from)
                    maybe = EgressScope(p, how_maybe, ns, mode, by)
                continue
            chosen = p
            how = (
                "its workloadSelector selects them"
                if p.selector is not None
                else f"the namespace-wide Sidecar of {ns}"
            )
            break
        if chosen is None and self.root_default is not None:
            chosen = self.root_default
            how = f"the mesh-wide default Sidecar of the root namespace {self.root_namespace}"
        if chosen is not None and chosen.mode is not None:
            return EgressScope(chosen, how, ns, chosen.mode, chosen.ref, maybe)
        return EgressScope(chosen, how, ns, self.mesh_mode, self.mesh_from, maybe)

    def hide(
        self,
        target: str,
        svc_ns: str,
        host: str,
        port: int,
        service: str | None = None,
        export_to: str | None = None,
    ) -> Hidden | None:
        """Whether some probe pod's sidecar does not have ``host:port`` in scope (the first
        that does not, preferring a certain answer over an unknown one). ``service``
        ("Service ns/name") and ``export_to`` (its exportTo annotation): a Service not
        exported to the probe's namespace is in no scope of it."""
        if self.scopes and self.client_unknown is not None:
            h = Hidden("the probe pods", self.scopes[0][1], False, why=self.client_unknown)
            self.hidden.append((target, h))
            return h
        if (
            self.scopes
            and self.client_namespace is not None
            and not exported_to(export_to, svc_ns, self.client_namespace, self.default_export_to)
        ):
            h = Hidden("the probe pods", self.scopes[0][1], True, service or svc_ns, export_to)
            self.hidden.append((target, h))
            return h
        unknown: Hidden | None = None
        for who, sc in self.scopes:
            seen = sc.sees(svc_ns, host, port)
            if seen is False:
                h = Hidden(who, sc, True)
                self.hidden.append((target, h))
                return h
            if seen is None and unknown is None:
                unknown = Hidden(who, sc, False)
            if sc.maybe is not None and unknown is None:
                alt = sc.maybe.sees(svc_ns, host, port)
                if alt is not True:
                    unknown = Hidden(who, sc.maybe, alt is False, maybe=True)
        if unknown is not None:
            self.hidden.append((target, unknown))
        return unknown

    def view(
        self,
        target: str,
        hidden: Hidden,
        host: str,
        port: int,
        server_mode: Expect,
        has_proxy: bool,
    ) -> ClientView:
        """``Hidden.view``, remembered for the findings."""
        v = hidden.view(host, port, server_mode, has_proxy)
        self.outcomes[target].add(v.outcome)
        return v

    # -- findings (the planner wraps them: target, verdict name, reason, evidence) ----------

    def findings(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        out: list[tuple[str, str, str, dict[str, Any]]] = []
        for p in self.parsed:
            if p.problems:
                shown = "; ".join(p.problems[:3])
                more = f" (and {len(p.problems) - 3} more)" if len(p.problems) > 3 else ""
                out.append(
                    (
                        p.ref,
                        "error",
                        f"{shown}{more}: read so that the probe's sidecar reaches no more than "
                        "Istio would let it (the API server refuses such a Sidecar)",
                        {"problems": p.problems},
                    )
                )
        out.extend(self._shadowed())
        for sc_ref, rev in sorted(self.other_revision):
            out.append(
                (
                    sc_ref,
                    "skip",
                    f"ignored: labelled {REV_LABEL}={rev!r}, and the probe's sidecar is served "
                    f"by control-plane revision {self.revision!r}, which reads only Sidecars "
                    "of its own revision or without the label",
                    {},
                )
            )
        for sc_ref, ports in self.ingress_tls:
            shown = ", ".join(str(p) for p in ports[:10])
            out.append(
                (
                    sc_ref,
                    "error",
                    f"ingress port(s) {shown} terminate TLS with the Sidecar's own certificates "
                    "(ingress[].tls) instead of Istio mTLS; the plan does not model it, so the "
                    "plaintext, peer-cert and mesh expectations for those ports of the pods it "
                    "selects may not hold",
                    {"ports": list(ports)},
                )
            )
        by_sidecar: dict[str, list[tuple[str, Hidden]]] = defaultdict(list)
        unknown_client = sorted({t for t, h in self.hidden if h.why is not None})
        if unknown_client and self.client_unknown is not None:
            more = f" and {len(unknown_client) - 5} more" if len(unknown_client) > 5 else ""
            out.append(
                (
                    f"Namespace {self.client_namespace}",
                    "error",
                    f"{self.client_unknown}; mTLS cannot be verified on "
                    f"{', '.join(unknown_client[:5])}{more}",
                    {"hidden": unknown_client},
                )
            )
        for target, h in self.hidden:
            if h.why is not None:
                continue
            if h.service is not None:
                out.append(self._not_exported(target, h))
                continue
            assert h.scope.sidecar is not None
            by_sidecar[h.scope.sidecar.ref].append((target, h))
        for sc_ref, items in sorted(by_sidecar.items()):
            out.append(self._hiding(sc_ref, items))
        told: set[str] = set(by_sidecar)
        for _who, sc in self.scopes:
            if sc.sidecar is not None and sc.sidecar.ref not in told:
                told.add(sc.sidecar.ref)
                out.append(
                    (
                        sc.sidecar.ref,
                        "skip",
                        f"{self._users(sc.sidecar)} in namespace {sc.proxy_ns} use this "
                        f"Sidecar ({sc.how}); every planned service port is in its egress hosts",
                        {},
                    )
                )
        return out

    def _not_exported(self, target: str, h: Hidden) -> tuple[str, str, str, dict[str, Any]]:
        assert h.service is not None
        fails = Outcome.FAIL in self.outcomes.get(target, ())
        ns = h.scope.proxy_ns
        where = {
            REGISTRY_ONLY: "BlackHoleCluster (HTTP 502)",
            ALLOW_ANY: "PassthroughCluster as plaintext",
        }.get(h.scope.mode, "no mTLS")
        source = h.export_source
        if not h.export_to:
            source += f" {list(self.default_export_to)!r}"
        reason = (
            f"not exported to the probe's namespace {ns} ({source}): the probe's sidecar "
            f"has {target} in no scope, and with "
            f"outboundTrafficPolicy {h.scope.mode} ({h.scope.mode_from}) its mesh calls go to "
            f"{where}: the mesh checks cannot verify mTLS there. Add {ns} to the annotation"
        )
        evidence = {
            "hidden": [target],
            "exportTo": h.export_to if h.export_to else list(self.default_export_to),
            "clientNamespace": ns,
        }
        return h.service, "fail" if fails else "error", reason, evidence

    def _users(self, sc: ParsedSidecar) -> str:
        """Which probe pods use ``sc``, as words."""
        return " and ".join(who for who, scope in self.scopes if scope.sidecar is sc)

    def _shadowed(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        out: list[tuple[str, str, str, dict[str, Any]]] = []
        for _ns, group in sorted(self.by_ns.items()):
            wide = [p for p in group if p.selector is None]
            for loser in wide[1:]:
                out.append(
                    (
                        loser.ref,
                        "skip",
                        f"ignored: a namespace has one namespace-wide Sidecar and the older "
                        f"{wide[0].ref} is the one Istio uses",
                        {},
                    )
                )
        return out

    def _hiding(
        self, sc_ref: str, items: list[tuple[str, Hidden]]
    ) -> tuple[str, str, str, dict[str, Any]]:
        targets = sorted({t for t, _ in items})
        h = items[0][1]
        sc = h.scope.sidecar
        assert sc is not None
        fails = any(Outcome.FAIL in self.outcomes.get(t, ()) for t in targets)
        more = f" and {len(targets) - 5} more" if len(targets) > 5 else ""
        shown = ", ".join(targets[:5]) + more
        if h.maybe:
            what = (
                f"may leave out {len(targets)} planned service port(s): {shown} (whether it "
                "applies depends on labels set on each run)"
            )
        elif not h.known:
            what = "cannot be read, so what they can reach is unknown"
        elif h.scope.mode == REGISTRY_ONLY:
            what = (
                f"leaves out {len(targets)} planned service port(s): {shown}; with "
                f"outboundTrafficPolicy REGISTRY_ONLY ({h.scope.mode_from}) their mesh calls "
                "go to BlackHoleCluster (HTTP 502)"
            )
        elif h.scope.mode == ALLOW_ANY:
            what = (
                f"leaves out {len(targets)} planned service port(s): {shown}; with "
                f"outboundTrafficPolicy ALLOW_ANY ({h.scope.mode_from}) their mesh calls go "
                "to PassthroughCluster as plaintext, never mTLS"
            )
        else:
            what = (
                f"leaves out {len(targets)} planned service port(s): {shown}; with "
                f"outboundTrafficPolicy {h.scope.mode} their mesh calls are not mTLS"
            )
        ns = h.scope.proxy_ns
        reason = (
            f"{self._users(sc) or h.client} in namespace {ns} use this Sidecar "
            f"({h.scope.how}) and it "
            f"{what}: the mesh checks cannot verify mTLS there. Add the targets' namespaces "
            '("<ns>/*") to '
            "its egress hosts, or give the probe pods their own Sidecar in "
            f"{ns} with workloadSelector labels {{{APP_NAME_LABEL}: mtlsprobe}} and egress "
            'hosts ["*/*"]'
        )
        evidence: dict[str, Any] = {
            "sidecar": sc_ref,
            "clientNamespace": ns,
            "hidden": targets,
            "outboundTrafficPolicy": h.scope.mode,
        }
        return sc_ref, "fail" if fails else "error", reason, evidence
