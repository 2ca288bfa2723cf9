"""From a ``ClusterSnapshot`` to a plan: what every edge must do, and what the
configuration itself says about the mesh. Pure: no I/O.

API (the lab and the orchestrator build on it)::

    plan = build_plan(snapshot, Requirements(strict=True, sidecar=False))
    plan.targets_file   # probe.model.TargetsFile: ``mtlsprobe check`` input, one Target
                        # per (Service, service port[, pod group]); name "<ns>/<svc>:<port>"
    plan.findings       # list[probe.results.Result]: check "policy" (static findings),
                        # "require-strict" / "require-sidecar" (compliance, only when asked)
    plan.edges          # list[Edge]: one per (target, pod, target port) - both sides of a call
    plan.inbound        # list[Inbound] (computed on first use): one per (pod, port) of every
                        # planned pod (declared container ports and target ports), for
                        # configuring sidecar listeners (ports not behind a Service too)
    plan.exit_code()    # 1 when a finding fails (an asked requirement, or a contradiction)

``Edge`` (frozen): ``target`` (Target.name), ``service``, ``namespace``, ``host`` (FQDN),
``service_port``, ``protocol`` (probe.model.Protocol), ``pod`` (PodInfo), ``target_port``,
``server_mode`` (Expect STRICT|PERMISSIVE|DISABLE from PeerAuthentication), ``expect``
(``server_mode``, or NONE when neither sidecar nor ztunnel is in front), ``mode_source``,
``dr_mode`` (DISABLE|SIMPLE|MUTUAL|ISTIO_MUTUAL|None) and ``dr_source``, and ``client``
(jobs.plan.policy.ClientView: what a sidecar client sends - ``tls``, ``mtls`` - and whether it
works - ``outcome`` ok|fail|unknown, ``reason``).

``PodInfo`` (frozen): ``name``, ``namespace``, ``service_account``, ``identity`` (SPIFFE ID),
``ip`` (None until known; the lab sets IPs with jobs.plan.objects.set_pod_ip before planning),
``ready``, ``labels``, ``annotations``, ``has_sidecar``, ``ambient``, ``tls_mode_label``,
``echo`` (label ``app.kubernetes.io/name: mtlsprobe-echo``); ``key`` is "<ns>/<name>".

Verdicts of findings: ``fail`` = an asked requirement is not met, or the configuration
contradicts itself (a DestinationRule that will break calls against the server's mode);
``error`` = an object could not be used (the plan may be incomplete: fail closed);
``skip`` = a warning or fact that no requirement asked about; ``pass`` = a requirement met,
and the coverage summary.

Safety (issue 17): only pods of the Service itself are probed - ``jobs.plan.endpoints`` decides
which addresses are mesh workloads; everything else behind a Service is a finding naming
the object (evidence ``notProbed``). A Service port with nothing probed behind it gets no
target, and ``--require`` never passes there (``plan.ports``: ``PortCoverage``): ``fail``
when its traffic provably reaches something that is not a mesh workload, ``error`` when
there is simply nothing to verify. Sidecars are the proxy container, never an annotation
(``jobs.plan.injection``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jobs.plan.endpoints import (
    SLICE_SERVICE_LABEL,
    Backend,
    Excluded,
    PodIndex,
    dns_label,
    dns_subdomain,
    known_addresses,
    pod_ips,
    service_backends,
)
from jobs.plan.injection import (
    AMBIENT_BYPASS_INBOUND,
    DATAPLANE_MODE,
    TLS_MODE_LABEL,
    ambient_enrolled,
    ambient_inbound_bypassed,
    ambient_labeled,
    has_sidecar,
    inbound_uncaptured,
)
from jobs.plan.objects import (
    DEFAULT_TRUST_DOMAIN,
    ClusterSnapshot,
    KubeObject,
    annotations_of,
    labels_of,
    name,
    namespace,
    pod_ready,
    port_key,
    ref,
    service_account,
    spec,
)
from jobs.plan.policy import (
    ClientView,
    DestinationRuleIndex,
    ModeDecision,
    Outcome,
    PeerAuthIndex,
    WorkloadPolicy,
    client_view,
    container_ports,
    dr_host,
    dr_scope,
    dr_tls_modes,
    expect_for,
    in_cluster_host,
    port_protocol,
    resolve_target_port,
    service_ports,
    workload_selector,
)
from probe.model import Endpoint, Expect, Protocol, Source, Target, TargetsFile
from probe.results import EXIT_FAIL, EXIT_OK, Result, Verdict
from probe.spiffe import SpiffeIdError, parse_spiffe_id

CHECK_POLICY = "policy"
CHECK_REQUIRE = {"strict": "require-strict", "sidecar": "require-sidecar"}
REQUIREMENTS = tuple(CHECK_REQUIRE)
ECHO_LABEL = ("app.kubernetes.io/name", "mtlsprobe-echo")
DEFAULT_CLIENT_NAMESPACE = "mtlsprobe"


@dataclass(frozen=True)
class Requirements:
    """Compliance asked for (``--require``), and where the probe's sidecar client runs
    (DestinationRules are looked up from the client's namespace first)."""

    strict: bool = False
    sidecar: bool = False
    client_namespace: str | None = DEFAULT_CLIENT_NAMESPACE

    @classmethod
    def parse(cls, items: Iterable[str], client_namespace: str | None = None) -> Requirements:
        """From ``strict,sidecar`` words; raises ValueError naming an unknown one."""
        words = {w.strip().lower() for item in items for w in item.split(",") if w.strip()}
        unknown = words - set(REQUIREMENTS)
        if unknown:
            raise ValueError(
                f"unknown requirement {sorted(unknown)[0]!r} (known: {', '.join(REQUIREMENTS)})"
            )
        return cls(
            strict="strict" in words,
            sidecar="sidecar" in words,
            client_namespace=client_namespace or DEFAULT_CLIENT_NAMESPACE,
        )


@dataclass(frozen=True, slots=True)
class PodInfo:
    name: str
    namespace: str
    service_account: str
    identity: str
    ip: str | None
    ready: bool
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    has_sidecar: bool
    ambient: bool
    tls_mode_label: str | None
    echo: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def has_proxy(self) -> bool:
        """A sidecar or ztunnel sits in front of the app."""
        return self.has_sidecar or self.ambient


@dataclass(frozen=True, slots=True)
class Inbound:
    """One inbound (pod, target port) and the mode its proxy must enforce."""

    pod: PodInfo
    port: int
    mode: Expect
    expect: Expect
    source: str


@dataclass(frozen=True, slots=True)
class Edge:
    target: str
    service: str
    namespace: str
    host: str
    service_port: int
    protocol: Protocol
    pod: PodInfo
    target_port: int
    server_mode: Expect
    expect: Expect
    mode_source: str
    dr_mode: str | None
    dr_source: str | None
    client: ClientView


@dataclass
class Plan:
    targets_file: TargetsFile
    findings: list[Result] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    requirements: Requirements = field(default_factory=Requirements)
    ports: list[PortCoverage] = field(default_factory=list)
    _builder: _Builder | None = field(default=None, repr=False, compare=False)

    @cached_property
    def inbound(self) -> list[Inbound]:
        return _inbound(self._builder) if self._builder is not None else []

    def exit_code(self) -> int:
        if any(r.verdict == Verdict.FAIL for r in self.findings):
            return EXIT_FAIL
        return EXIT_OK


# ---- building -------------------------------------------------------------------------------


def _finding(target: str, verdict: Verdict, reason: str, **evidence: Any) -> Result:
    return Result(
        check=CHECK_POLICY,
        target=target,
        verdict=verdict,
        reason=reason,
        evidence={k: v for k, v in evidence.items() if v is not None},
    )


@dataclass(frozen=True, slots=True)
class PortCoverage:
    """What the plan could verify at one Service port: ``targets`` (names) carry its
    probed pods; ``routed_elsewhere`` is traffic of this port that goes where no
    probe may go (not a mesh workload); ``why_unverifiable`` is set when no target
    was planned at all. Compliance never passes on such a port (issue 17 rule 2)."""

    name: str  # "<ns>/<svc>:<port>"
    targets: tuple[str, ...]
    routed_elsewhere: tuple[Excluded, ...]
    why_unverifiable: str | None


class _Builder:
    def __init__(self, snap: ClusterSnapshot, req: Requirements) -> None:
        self.snap = snap
        self.req = req
        self.pa = PeerAuthIndex(snap.peerauthentications, snap.root_namespace)
        self.dr = DestinationRuleIndex(
            snap.destinationrules,
            snap.root_namespace,
            snap.cluster_domain,
            default_export_to=snap.default_dr_export_to,
            auto_mtls=snap.enable_auto_mtls,
        )
        self.ns_labels = {name(n): labels_of(n) for n in snap.namespaces}
        self.pods: dict[str, KubeObject] = {}
        self.pods_by_ns: dict[str, list[KubeObject]] = defaultdict(list)
        for p in snap.pods:
            ns = namespace(p)
            if snap.is_target_namespace(ns):
                self.pods[f"{ns}/{name(p)}" if ns else name(p)] = p  # ref(p)
                self.pods_by_ns[ns].append(p)
        self.index = PodIndex(
            self.pods.values(),
            known_addresses(snap.pods, snap.services),
            loopback_ok=snap.loopback_pods,
        )
        self.slices: dict[tuple[str, str], list[KubeObject]] = defaultdict(list)
        for s in snap.endpointslices:
            svc = labels_of(s).get(SLICE_SERVICE_LABEL)
            if svc:
                self.slices[(namespace(s), svc)].append(s)
        self._info: dict[int, PodInfo] = {}  # by id(): pods are not hashable, refs cost
        self._policy: dict[int, WorkloadPolicy] = {}
        self.findings: list[Result] = []
        self.edges: list[Edge] = []
        self.ports: list[PortCoverage] = []

    def policy(self, pod: KubeObject) -> WorkloadPolicy:
        got = self._policy.get(id(pod))
        if got is None:
            pi = self.info(pod)
            got = self.pa.for_workload(pi.namespace, pi.labels)
            self._policy[id(pod)] = got
        return got

    def info(self, pod: KubeObject) -> PodInfo:
        key = id(pod)
        got = self._info.get(key)
        if got is None:
            ns, sa, lbl = namespace(pod), service_account(pod), labels_of(pod)
            ns_lbl = self.ns_labels.get(ns, {})
            ips, _ = pod_ips(pod)
            got = PodInfo(
                name=name(pod),
                namespace=ns,
                service_account=sa,
                identity=f"spiffe://{self.snap.trust_domain}/ns/{ns}/sa/{sa}",
                ip=ips[0] if ips else None,
                ready=pod_ready(pod),
                labels=lbl,
                annotations=annotations_of(pod),
                has_sidecar=has_sidecar(pod),
                ambient=ambient_enrolled(pod, ns_lbl),
                tls_mode_label=lbl.get(TLS_MODE_LABEL),
                echo=lbl.get(ECHO_LABEL[0]) == ECHO_LABEL[1],
            )
            self._info[key] = got
        return got

    def _excluded_findings(self, svc_ref: str, excluded: Sequence[Excluded]) -> None:
        seen: set[tuple[str, str | None, str]] = set()
        for e in excluded:
            key = (e.obj, e.address, e.reason)
            if key in seen:
                continue
            seen.add(key)
            self.findings.append(
                _finding(
                    f"Service {svc_ref}",
                    Verdict.ERROR if e.inconsistent else Verdict.SKIP,
                    e.text(),
                    object=e.obj,
                    address=e.address,
                    notProbed=True,
                )
            )

    def _unverifiable(self, svc: KubeObject, why: str, routed: Sequence[Excluded] = ()) -> None:
        ns, svc_name = namespace(svc), name(svc)
        for sp in service_ports(svc):
            if (sp.get("protocol") or "TCP") != "TCP":
                self._not_captured(svc, sp)
                continue
            base = f"{ns}/{svc_name}:{sp['port']}"
            self.ports.append(PortCoverage(base, (), tuple(routed), why))
            self.findings.append(
                _finding(
                    base,
                    Verdict.SKIP,
                    f"not planned: nothing can be verified here: {why}",
                    notProbed=True,
                )
            )

    def _not_captured(self, svc: KubeObject, sp: Mapping[str, Any]) -> None:
        """A UDP or SCTP Service port: Istio's sidecar captures TCP only (the
        ``-p tcp`` rules of tools/istio-iptables/pkg/capture/run.go; ztunnel proxies
        TCP too) and pkg/config/kube/conversion.go ``ConvertProtocol`` makes a UDP port
        protocol UDP, which no mTLS listener serves. Its traffic is never mutual TLS
        whatever PeerAuthentication says: not probed, and compliance fails there. Named
        ``<ns>/<svc>:<port>/<proto>`` so it never collides with a TCP port of the same
        number (DNS publishes 53/TCP and 53/UDP)."""
        proto = str(sp.get("protocol"))[:16]
        excl = Excluded(
            f"Service {ref(svc)} port {sp['port']}/{proto}",
            None,
            f"protocol {proto!r}: Istio's sidecar and ztunnel capture TCP only, so this "
            "traffic is never mutual TLS whatever the PeerAuthentication says",
        )
        self._excluded_findings(ref(svc), [excl])
        name_ = f"{namespace(svc)}/{name(svc)}:{sp['port']}/{proto.lower()}"
        self.ports.append(PortCoverage(name_, (), (excl,), None))

    # -- targets and edges ----------------------------------------------------------------------

    def plan_service(self, svc: KubeObject) -> list[Target]:
        ns, svc_name = namespace(svc), name(svc)
        if not (dns_label(ns) and dns_label(svc_name)):
            self.findings.append(
                _finding(
                    f"Service {ref(svc)}"[:200],
                    Verdict.ERROR,
                    "namespace or name is not a Kubernetes DNS label: no host or identity "
                    "can be derived; not planned",
                )
            )
            self._unverifiable(svc, "the Service's name is not a valid DNS label")
            return []
        if spec(svc).get("type") == "ExternalName":
            ext = Excluded(
                f"Service {ref(svc)}",
                None,
                f"type ExternalName (to {str(spec(svc).get('externalName'))[:100]!r}): "
                "traffic leaves the mesh",
            )
            self._excluded_findings(ref(svc), [ext])
            self._unverifiable(svc, "an ExternalName Service has no pods", [ext])
            return []
        backends = service_backends(svc, self.index, self.slices.get((ns, svc_name), ()))
        self._excluded_findings(ref(svc), backends.excluded)
        routed = tuple(backends.routed_elsewhere)
        host = f"{svc_name}.{ns}.svc.{self.snap.cluster_domain}"
        targets: list[Target] = []
        planned_ports: set[int] = set()
        for sp in service_ports(svc):
            if (sp.get("protocol") or "TCP") != "TCP":
                self._not_captured(svc, sp)
                continue
            port: int = sp["port"]
            base = f"{ns}/{svc_name}:{port}"
            if port in planned_ports:  # the API server rejects this; YAML may hold it
                self.findings.append(
                    _finding(base, Verdict.ERROR, "port listed twice: the first is planned")
                )
                continue
            planned_ports.add(port)
            protocol = port_protocol(sp)
            found, unresolved = _port_backends(backends.backends, sp)
            dr = self.dr.tls_for(
                host,
                ns,
                port,
                self.req.client_namespace,
                service_mode=self.pa.namespace_mode(ns).mode,
                passthrough_labels=[self.info(p).tls_mode_label for p, _, _ in found]
                if spec(svc).get("clusterIP") == "None"
                else None,
            )
            groups: dict[tuple[str, Expect, bool], list[Endpoint]] = {}
            group_edges: dict[tuple[str, Expect, bool], list[Edge]] = defaultdict(list)
            # One port's edges share the DestinationRule view; the client's view depends
            # only on these few facts of the pod, so it is computed once per combination.
            views: dict[tuple[Expect, bool, str | None, bool, str | None], ClientView] = {}
            infos, policies = self._info, self._policy  # the caches, read inline: 100k edges
            for pod, ip, tport in found:
                pi = infos.get(id(pod)) or self.info(pod)
                decision = (policies.get(id(pod)) or self.policy(pod)).at(tport)
                vkey = (decision.mode, pi.has_proxy, pi.tls_mode_label, pi.ambient, pi.identity)
                view = views.get(vkey)
                if view is None:
                    view = views[vkey] = client_view(
                        dr,
                        decision.mode,
                        pi.has_proxy,
                        pi.tls_mode_label,
                        ambient=pi.ambient,
                        identity=pi.identity,
                    )
                expect, decision = _on_the_wire(pi, tport, decision)
                key = (pi.service_account, expect, pi.echo)
                eps = groups.setdefault(key, [])
                if ip is not None:
                    eps.append(Endpoint(ip, tport))
                group_edges[key].append(
                    Edge(
                        target=base,
                        service=svc_name,
                        namespace=ns,
                        host=host,
                        service_port=port,
                        protocol=protocol,
                        pod=pi,
                        target_port=tport,
                        server_mode=decision.mode,
                        expect=expect,
                        mode_source=decision.source,
                        dr_mode=dr.mode,
                        dr_source=dr.source,
                        client=view,
                    )
                )
            if unresolved:
                self.findings.append(
                    _finding(
                        base,
                        Verdict.SKIP,
                        f"targetPort {sp.get('targetPort')!r} names no container port of pod(s) "
                        f"{', '.join(sorted(unresolved)[:5])}: not planned there",
                        pods=sorted(unresolved),
                    )
                )
            if not groups:
                why = backends.why_none or "no backend pod serves this port"
                if unresolved:
                    why = f"targetPort {sp.get('targetPort')!r} resolves on no backend pod"
                self.ports.append(PortCoverage(base, (), routed, why))
                self.findings.append(
                    _finding(
                        base,
                        Verdict.SKIP,
                        f"not planned: nothing can be verified here: {why}",
                        notProbed=True,
                    )
                )
                continue
            split = len(groups) > 1
            if split:
                sas = sorted({k[0] for k in groups})
                self.findings.append(
                    _finding(
                        base,
                        Verdict.SKIP,
                        f"pods behind this port differ (service accounts {', '.join(sas)}, or "
                        "sidecar/policy): split into one target per group",
                        groups=len(groups),
                    )
                )
            names: list[str] = []
            both_echo = {(k[0], k[1]) for k in groups if k[2]} & {
                (k[0], k[1]) for k in groups if not k[2]
            }
            for key, eps in groups.items():
                sa, expect, echo = key
                tname = f"{base}@{sa}/{expect.value}" if split else base
                if echo and (sa, expect) in both_echo:
                    tname += "/echo"  # target names must stay unique
                names.append(tname)
                edges = group_edges[key]
                if split:
                    edges = [_retarget(e, tname) for e in edges]
                self.edges.extend(edges)
                targets.append(
                    Target(
                        name=tname,
                        host=host,
                        port=port,
                        expect=expect,
                        endpoints=tuple(sorted(set(eps), key=_endpoint_order)),
                        identity=f"spiffe://{self.snap.trust_domain}/ns/{ns}/sa/{sa}",
                        protocol=protocol,
                        echo=echo,
                    )
                )
            self.ports.append(PortCoverage(base, tuple(names), routed, None))
        return targets


def _on_the_wire(pi: PodInfo, port: int, decision: ModeDecision) -> tuple[Expect, ModeDecision]:
    """What inbound ``port`` of the pod must show, and the decision behind it. A port
    its proxy does not capture - a sidecar whose iptables leave it alone
    (``jobs.plan.injection.inbound_uncaptured``), an ambient pod in ingress mode
    (``ambient_inbound_bypassed``) - has no proxy in front of it: plaintext reaches
    the app whatever the PeerAuthentication says (``NONE``; the source says why)."""
    why: str | None = None
    if pi.ambient and ambient_inbound_bypassed(pi.annotations):
        why = f"ztunnel does not capture its inbound traffic ({AMBIENT_BYPASS_INBOUND})"
    elif pi.has_sidecar and not pi.ambient:
        uncaptured = inbound_uncaptured(pi.annotations, port)
        if uncaptured is not None:
            why = f"the sidecar does not capture inbound port {port}: {uncaptured}"
    if why is not None:
        return Expect.NONE, ModeDecision(decision.mode, f"{decision.source}, but {why}")
    return expect_for(decision.mode, pi.has_sidecar, pi.ambient), decision


def _port_backends(
    backends: Sequence[Backend], sp: Mapping[str, Any]
) -> tuple[list[tuple[KubeObject, str | None, int]], list[str]]:
    """(pod, address, target port) of every backend serving service port ``sp`` -
    the slice's port for that port name, else the Service's targetPort resolved on the
    pod - and the pods on which it resolves to no port."""
    found: list[tuple[KubeObject, str | None, int]] = []
    seen: set[tuple[int, str | None, int]] = set()
    unresolved: list[str] = []
    for be in backends:
        tport: int | None
        if be.slice_ports is not None:
            want = str(sp.get("name") or "")
            if want not in be.slice_ports:
                continue  # this slice does not carry this port
            tport = be.slice_ports[want]
            if tport is None:  # "all ports"
                tport = resolve_target_port(sp, be.pod)
        else:
            tport = resolve_target_port(sp, be.pod)
        if tport is None or not 0 < tport < 65536:
            unresolved.append(ref(be.pod))
            continue
        if (id(be.pod), be.ip, tport) not in seen:
            seen.add((id(be.pod), be.ip, tport))
            found.append((be.pod, be.ip, tport))
    return found, unresolved


def _endpoint_order(e: Endpoint) -> tuple[str, int]:
    return (e.host, e.port)


def _retarget(e: Edge, target: str) -> Edge:
    from dataclasses import replace

    return replace(e, target=target)


def _coerce(req: Requirements | Iterable[str] | None) -> Requirements:
    if req is None:
        return Requirements()
    if isinstance(req, Requirements):
        return req
    return Requirements.parse(req)


def mesh_names_problem(snapshot: ClusterSnapshot) -> str | None:
    """Why the snapshot's trust domain or cluster domain cannot go into a targets file
    (identities ``spiffe://<td>/...``, hosts ``<svc>.<ns>.svc.<domain>``), if so."""
    td = snapshot.trust_domain
    try:
        # Parsed as part of an ID so the SPIFFE rules apply; a '/' in ``td`` would make
        # it parse as a shorter trust domain plus path, hence the equality.
        if parse_spiffe_id(f"spiffe://{td}/ns/x/sa/x").trust_domain != td:
            raise SpiffeIdError("it holds a '/'")
    except SpiffeIdError as exc:
        return f"trust domain {td[:100]!r} is not a SPIFFE trust domain ({exc})"
    if not dns_subdomain(snapshot.cluster_domain):
        return f"cluster domain {snapshot.cluster_domain[:100]!r} is not a DNS name"
    return None


def build_plan(
    snapshot: ClusterSnapshot, requirements: Requirements | Iterable[str] | None = None
) -> Plan:
    req = _coerce(requirements)
    b = _Builder(snapshot, req)
    targets: list[Target] = []
    bad_names = mesh_names_problem(snapshot)
    if bad_names is not None:
        # Nothing can carry a valid identity: plan nothing rather than write a targets
        # file `check` rejects (or one that names the wrong mesh).
        b.findings.append(
            _finding("cluster", Verdict.ERROR, f"{bad_names}: nothing planned; pass --trust-domain")
        )
    else:
        seen: set[tuple[str, str]] = set()
        for svc in sorted(snapshot.services, key=lambda s: (namespace(s), name(s))):
            if not snapshot.is_target_namespace(namespace(svc)):
                continue
            if (namespace(svc), name(svc)) in seen:  # YAML can repeat what a cluster cannot
                b.findings.append(
                    _finding(
                        f"Service {ref(svc)}", Verdict.ERROR, "defined twice: the first is planned"
                    )
                )
                continue
            seen.add((namespace(svc), name(svc)))
            targets.extend(b.plan_service(svc))
    findings = [
        *_problem_findings(snapshot),
        *b.findings,
        *_peer_auth_findings(b),
        *_namespace_findings(b),
        *_sidecar_findings(b),
        *_dr_findings(b),
        *_contradictions(b.edges),
        *_compliance(req, targets, b.edges, b.ports),
        _coverage(b),
    ]
    tf = TargetsFile(
        trust_domain=snapshot.trust_domain if bad_names is None else DEFAULT_TRUST_DOMAIN,
        targets=tuple(targets),
        source=Source(),
    )
    from jobs.plan.authz_cases import attach as authz_cases  # AuthorizationPolicy cases
    from jobs.plan.controls import attach  # negative controls (control workloads leave the targets)

    return authz_cases(
        attach(Plan(tf, findings, b.edges, requirements=req, ports=b.ports, _builder=b))
    )


# ---- inbound per (pod, port) -----------------------------------------------------------------


def _inbound(b: _Builder) -> list[Inbound]:
    ports: dict[str, set[int]] = defaultdict(set)
    for e in b.edges:
        ports[e.pod.key].add(e.target_port)
    out: list[Inbound] = []
    for key, pod in sorted(b.pods.items()):
        pi = b.info(pod)
        declared = {
            p["containerPort"]
            for p in container_ports(pod)
            if (p.get("protocol") or "TCP") == "TCP"
        }
        for port in sorted(declared | ports.get(key, set())):
            expect, d = _on_the_wire(pi, port, b.policy(pod).at(port))
            out.append(Inbound(pi, port, d.mode, expect, d.source))
    return out


# ---- findings --------------------------------------------------------------------------------


def _problem_findings(snap: ClusterSnapshot) -> list[Result]:
    out = [
        _finding(p.ref, Verdict.ERROR, f"{p.message}: skipped; the plan may be incomplete")
        for p in snap.problems
    ]
    out.extend(_finding("cluster", Verdict.SKIP, note) for note in snap.notes)
    return out


def _in_scope(b: _Builder, ns: str) -> bool:
    return ns == b.snap.root_namespace or b.snap.is_target_namespace(ns)


def _peer_auth_findings(b: _Builder) -> list[Result]:
    out: list[Result] = []
    # What Istio ignores decides nothing and must not read as if it applied (the
    # "ignored" findings below say why): a same-level loser, a root-namespace selector
    # policy, and the portLevelMtls of a policy without a workload selector.
    shadowed = {id(loser) for loser, _ in b.pa.shadowed}
    for pa in sorted(b.snap.peerauthentications, key=ref):
        selector = workload_selector(pa)
        if not _in_scope(b, namespace(pa)) or id(pa) in shadowed:
            continue
        if selector is not None and namespace(pa) == b.snap.root_namespace:
            continue
        target = f"PeerAuthentication {ref(pa)}"
        mtls = spec(pa).get("mtls")
        mode = mtls.get("mode") if isinstance(mtls, dict) else None
        if mode in ("PERMISSIVE", "DISABLE"):
            what = "accepts plaintext" if mode == "PERMISSIVE" else "turns mTLS off"
            out.append(_finding(target, Verdict.SKIP, f"mode {mode}: {what}", mode=mode))
        plm = spec(pa).get("portLevelMtls")
        if isinstance(plm, dict) and selector is not None:
            for k, v in plm.items():
                pm = v.get("mode") if isinstance(v, dict) else None
                if pm in ("PERMISSIVE", "DISABLE"):
                    out.append(
                        _finding(
                            target,
                            Verdict.SKIP,
                            f"port {port_key(k)} (target port) is {pm}",
                            port=port_key(k),
                            mode=pm,
                        )
                    )
    for pa, why in b.pa.ignored:
        if _in_scope(b, namespace(pa)):
            out.append(_finding(f"PeerAuthentication {ref(pa)}", Verdict.SKIP, why))
    for loser, winner in b.pa.shadowed:
        if _in_scope(b, namespace(loser)):
            out.append(
                _finding(
                    f"PeerAuthentication {ref(loser)}",
                    Verdict.SKIP,
                    f"ignored: the older {ref(winner)} at the same level wins",
                )
            )
    return out


def _namespace_findings(b: _Builder) -> list[Result]:
    out: list[Result] = []
    mesh = b.pa.mesh
    inherited = (
        f"the mesh policy {ref(mesh)} applies"
        if mesh is not None
        else "no mesh policy either: Istio's default PERMISSIVE applies"
    )
    for ns in sorted(b.pods_by_ns):
        if ns != b.snap.root_namespace and not b.pa.has_policy_in(ns):
            out.append(
                _finding(f"namespace {ns}", Verdict.SKIP, f"no PeerAuthentication; {inherited}")
            )
        ns_lbl = b.ns_labels.get(ns, {})
        for pod in b.pods_by_ns[ns]:
            pi = b.info(pod)
            if pi.has_proxy or (DATAPLANE_MODE not in pi.labels and DATAPLANE_MODE not in ns_lbl):
                continue
            if ambient_labeled(pod, ns_lbl):
                out.append(
                    _finding(
                        f"pod {ref(pod)}",
                        Verdict.SKIP,
                        "labelled for ambient but not redirected (no annotation "
                        "ambient.istio.io/redirection=enabled): ztunnel does not capture it",
                    )
                )
    return out


def _sidecar_findings(b: _Builder) -> list[Result]:
    out: list[Result] = []
    for ns in sorted(b.pods_by_ns):
        pods = b.pods_by_ns[ns]
        bare = sorted(name(p) for p in pods if not b.info(p).has_proxy)
        if bare:
            shown = ", ".join(bare[:5]) + (f" and {len(bare) - 5} more" if len(bare) > 5 else "")
            out.append(
                _finding(
                    f"namespace {ns}",
                    Verdict.SKIP,
                    f"{len(bare)} of {len(pods)} pods without a sidecar accept plaintext "
                    f"whatever the policy: {shown}",
                    pods=bare,
                )
            )
    return out


def _dr_findings(b: _Builder) -> list[Result]:
    out: list[Result] = []
    for dr in sorted(b.snap.destinationrules, key=ref):
        host = dr_host(dr, b.snap.cluster_domain)
        if not in_cluster_host(host, b.snap.cluster_domain):
            continue
        for port, mode in dr_tls_modes(dr):
            if mode not in ("DISABLE", "SIMPLE", "MUTUAL"):
                continue
            what = (
                "sidecar clients send plaintext"
                if mode == "DISABLE"
                else "sidecar clients originate TLS with non-mesh certificates, not Istio mTLS"
            )
            where = f" port {port}" if port is not None else ""
            scope = dr_scope(dr, b.snap.root_namespace)
            out.append(
                _finding(
                    f"DestinationRule {ref(dr)}",
                    Verdict.SKIP,
                    f"tls.mode {mode} for in-cluster host {host}{where}: {what} ({scope})",
                    host=host,
                    mode=mode,
                )
            )
    return out


def _contradictions(edges: Sequence[Edge]) -> list[Result]:
    by_target: dict[str, list[Edge]] = defaultdict(list)
    for e in edges:
        if e.client.outcome != Outcome.OK:
            by_target[e.target].append(e)
    out: list[Result] = []
    for target, bad in by_target.items():
        fails = [e for e in bad if e.client.outcome == Outcome.FAIL]
        e = (fails or bad)[0]
        pods = sorted({x.pod.key for x in (fails or bad)})
        out.append(
            Result(
                check=CHECK_POLICY,
                target=target,
                verdict=Verdict.FAIL if fails else Verdict.SKIP,
                reason=(
                    f"sidecar clients will fail: {e.client.reason}"
                    if fails
                    else f"sidecar clients may fail: {e.client.reason}"
                ),
                expected="calls from sidecar clients succeed",
                observed=f"server {e.server_mode.value} at target port {e.target_port}, "
                f"client {e.client.tls}",
                evidence={
                    "pods": pods,
                    "destinationRule": e.dr_source,
                    "modeSource": e.mode_source,
                },
            )
        )
    return out


def _compliance(
    req: Requirements,
    targets: Sequence[Target],
    edges: Sequence[Edge],
    ports: Sequence[PortCoverage] = (),
) -> list[Result]:
    """One result per asked requirement and target, plus one per Service port that
    cannot pass as a whole (issue 17 rule 2: no backend, no compliance pass)."""
    by_target: dict[str, list[Edge]] = defaultdict(list)
    for e in edges:
        by_target[e.target].append(e)
    # A target whose port also sends traffic to a non-workload cannot pass: its
    # port-level failure below stands for it (one verdict per name, never pass+fail).
    partial = {name for pc in ports if pc.routed_elsewhere for name in pc.targets}
    port_names = {pc.name for pc in ports}
    out: list[Result] = []
    folded: dict[tuple[str, str], Result] = {}  # (check, port name): the target's own fail
    for t in targets:
        tedges = by_target.get(t.name, [])
        results = []
        if req.strict:
            results.append(_require_strict(t, tedges))
        if req.sidecar:
            results.append(_require_sidecar(t, tedges))
        for r in results:
            if t.name not in partial:
                out.append(r)
            elif r.verdict != Verdict.PASS:
                if t.name in port_names:
                    folded[(r.check, t.name)] = r  # same name as its port: one verdict
                else:
                    out.append(r)
    for pc in ports:
        if pc.why_unverifiable is None and not pc.routed_elsewhere:
            continue
        for check, expected in (("strict", "STRICT"), ("sidecar", "sidecar")):
            if getattr(req, check):
                name = CHECK_REQUIRE[check]
                out.append(_unverifiable_port(name, expected, pc, folded.get((name, pc.name))))
    return out


def _unverifiable_port(
    check: str, expected: str, pc: PortCoverage, own: Result | None = None
) -> Result:
    """``fail`` when some of the port's traffic provably goes to something that is
    not a mesh workload (an external address, the host network, an address no pod
    of the Service owns); ``error`` when there is simply nothing behind it to verify
    (could not observe). Never ``pass``."""
    routed = pc.routed_elsewhere
    parts: list[str] = [own.reason] if own is not None else []
    if pc.why_unverifiable is not None:
        parts.append(f"nothing can be verified at this port: {pc.why_unverifiable}")
    if routed:
        first = routed[0]
        more = f" (and {len(routed) - 1} more)" if len(routed) > 1 else ""
        parts.append(
            f"its traffic also goes to {first.text().removesuffix('; not probed')}{more}: "
            "not a mesh workload, so the requirement cannot hold"
        )
    return Result(
        check=check,
        target=pc.name,
        verdict=Verdict.FAIL if routed else Verdict.ERROR,
        reason="; ".join(parts),
        expected=expected,
        observed="not a mesh workload" if routed else "unverifiable",
        evidence={
            **(own.evidence if own is not None else {}),
            "excluded": [
                {"object": e.obj, "address": e.address, "reason": e.reason} for e in routed
            ],
        },
    )


def _require_strict(t: Target, edges: Sequence[Edge]) -> Result:
    check = CHECK_REQUIRE["strict"]
    if not edges:  # never planned (no backend, no target); kept closed for callers
        return Result(
            check=check,
            target=t.name,
            verdict=Verdict.ERROR,
            reason="no backend pod: nothing can be verified",
            expected="STRICT",
            observed="unverifiable",
        )
    bad = [e for e in edges if e.expect != Expect.STRICT]
    broken = [e for e in edges if e.client.outcome != Outcome.OK]
    if broken and not bad:
        # STRICT on paper, but the DestinationRule the probe's sidecar uses makes mesh calls
        # fail (or not provably work): nothing verifies the port is mTLS-only, so no pass.
        e = next((x for x in broken if x.client.outcome == Outcome.FAIL), broken[0])
        how = "fail" if e.client.outcome == Outcome.FAIL else "may fail"
        return Result(
            check=check,
            target=t.name,
            verdict=Verdict.FAIL,
            reason=f"STRICT, but calls from sidecar clients {how}: {e.client.reason}",
            expected="STRICT, reachable by mesh clients",
            observed=f"STRICT, client {e.client.tls}",
            evidence={"pods": sorted({x.pod.key for x in broken})},
        )
    if not bad:
        return Result(
            check=check,
            target=t.name,
            verdict=Verdict.PASS,
            reason=f"STRICT ({edges[0].mode_source})",
            expected="STRICT",
            observed="STRICT",
        )
    e = bad[0]
    if e.expect != Expect.NONE:
        why = f"target port {e.target_port} is {e.server_mode.value} by {e.mode_source}"
    elif e.pod.has_proxy:
        why = f"pod {e.pod.key}: {e.mode_source}; plaintext accepted whatever the policy"
    else:
        why = f"pod {e.pod.key} has no sidecar: plaintext accepted whatever the policy"
    return Result(
        check=check,
        target=t.name,
        verdict=Verdict.FAIL,
        reason=why,
        expected="STRICT",
        observed=e.expect.value,
        evidence={"pods": sorted({x.pod.key for x in bad})},
    )


def _require_sidecar(t: Target, edges: Sequence[Edge]) -> Result:
    check = CHECK_REQUIRE["sidecar"]
    bare = sorted({e.pod.key for e in edges if not e.pod.has_proxy})
    if not edges:
        return Result(
            check=check,
            target=t.name,
            verdict=Verdict.ERROR,
            reason="no backend pod: nothing can be verified",
            expected="sidecar",
            observed="unverifiable",
        )
    if bare:
        return Result(
            check=check,
            target=t.name,
            verdict=Verdict.FAIL,
            reason=f"{len(bare)} pod(s) without a sidecar: {', '.join(bare[:5])}",
            expected="sidecar",
            observed="none",
            evidence={"pods": bare},
        )
    return Result(
        check=check,
        target=t.name,
        verdict=Verdict.PASS,
        reason="every pod behind this port has a sidecar or ztunnel",
        expected="sidecar",
        observed="sidecar",
    )


def _pct(n: int, d: int) -> str:
    return f"{n}/{d} ({100 * n / d:.0f}%)" if d else "0/0"


def _coverage(b: _Builder) -> Result:
    """Sidecar coverage over planned pods; STRICT coverage over the (pod, target port)
    pairs Services send to."""
    pods = [b.info(p) for p in b.pods.values()]
    meshed = sum(1 for p in pods if p.has_proxy)
    ports = {(e.pod.key, e.target_port): e for e in b.edges}.values()
    proxied = [e for e in ports if e.pod.has_proxy]
    strict = sum(1 for e in proxied if e.server_mode == Expect.STRICT)
    all_strict = sum(1 for e in ports if e.expect == Expect.STRICT)
    return _finding(
        "mesh",
        Verdict.PASS,
        f"sidecar coverage {_pct(meshed, len(pods))} pods; STRICT coverage "
        f"{_pct(strict, len(proxied))} meshed service ports, "
        f"{_pct(all_strict, len(ports))} of all service ports",
        pods=len(pods),
        podsWithProxy=meshed,
        meshedPorts=len(proxied),
        strictMeshedPorts=strict,
        ports=len(ports),
        strictPorts=all_strict,
    )
