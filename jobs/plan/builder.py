"""Building a plan: from the snapshot's Services, EndpointSlices and pods to targets
and edges - one ``Edge`` per (target, pod, target port), with the server's mode from
PeerAuthentication, the client's view from DestinationRules and what the wire must show.

Only pods of the Service itself are planned (``jobs.plan.endpoints`` decides which
addresses are mesh workloads); everything else behind a Service becomes a finding that
names the object (evidence ``notProbed``), and a port with nothing probed behind it gets
no target, only a ``PortCoverage`` that says why (``jobs.plan.compliance`` never passes
there). Pure: no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from itertools import starmap
from typing import Any

from jobs.plan.endpoints import (
    SLICE_SERVICE_LABEL,
    Backend,
    Excluded,
    PodIndex,
    ServiceBackends,
    dns_label,
    known_addresses,
    service_backends,
)
from jobs.plan.fields import (
    KubeObject,
    annotations_of,
    labels_of,
    meta,
    name,
    namespace,
    pod_ready,
    ref,
    service_account,
    spec,
)
from jobs.plan.injection import (
    AMBIENT_BYPASS_INBOUND,
    CAPTURE_ANNOTATIONS,
    ambient_enrolled,
    ambient_inbound_bypassed,
    has_sidecar,
    inbound_uncaptured,
    pod_revision,
    requested_revision,
)
from jobs.plan.meshconfig import REV_LABEL, MeshSettings, RevisionMesh, mesh_configmap_name
from jobs.plan.model import (
    ECHO_LABEL,
    Edge,
    Inbound,
    PodInfo,
    PortCoverage,
    Requirements,
    finding,
)
from jobs.plan.objects import DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN, ClusterSnapshot
from jobs.plan.policy import (
    EXPORT_TO,
    ClientView,
    DestinationRuleIndex,
    ModeDecision,
    PeerAuthIndex,
    SidecarIndex,
    WorkloadPolicy,
    client_view,
    container_ports,
    expect_for,
    port_protocol,
    resolve_target_port,
    service_ports,
)
from jobs.plan.policy.destinationrules import PROBE_CLIENT_LABELS
from probe.constants import TLS_MODE_LABEL
from probe.model import Endpoint, Expect, Target
from probe.results import Result, Verdict
from probe.spiffe import istio_identity

_NO_CAPTURE_ANNOTATIONS = (None,) * len(CAPTURE_ANNOTATIONS)

# A group of pods behind one port that must behave alike: (service account, what the
# wire must show, echo app) - one target each.
_GroupKey = tuple[str, Expect, bool]
# What an edge's pod shows at one port: (expect, decision, client view) and its group's
# endpoint and edge lists.
_EdgeSide = tuple[Expect, ModeDecision, ClientView, list[tuple[str, int]], list[Edge]]


def in_revision(objs: Sequence[KubeObject], revision: str) -> list[KubeObject]:
    """The Istio config objects istiod of ``revision`` reads: pilot/pkg/config/kube/crdclient
    ``inRevision`` (pkg/config/model.go ``LabelsInRevision``) keeps those without an
    ``istio.io/rev`` label or labelled with its revision (the chart's REVISION, "default"
    for the default one); the others are invisible to it."""
    return [o for o in objs if labels_of(o).get(REV_LABEL, revision) == revision]


class Builder:
    """The state of one plan being built: indexes over the snapshot, per-pod caches, and
    the findings, edges and port coverage gathered so far."""

    def __init__(self, snap: ClusterSnapshot, req: Requirements) -> None:
        self.snap = snap
        self.req = req
        self.ns_labels = {name(n): labels_of(n) for n in snap.namespaces}
        # The probe's own sidecar: its revision (its istiod reads the DestinationRules and
        # Sidecars of that revision only) and whether the plan can speak for it.
        probe_revision, probe_problem = self._probe_revision()
        self.pa = PeerAuthIndex(
            in_revision(snap.peerauthentications, snap.revisions.plan), snap.root_namespace
        )
        self.dr = DestinationRuleIndex(
            in_revision(snap.destinationrules, probe_revision),
            snap.root_namespace,
            snap.cluster_domain,
            default_export_to=snap.default_dr_export_to,
            auto_mtls=snap.enable_auto_mtls,
        )
        self.pods: dict[str, KubeObject] = {}
        self.pods_by_ns: dict[str, list[KubeObject]] = defaultdict(list)
        for p in snap.pods:
            ns = namespace(p)
            if snap.is_target_namespace(ns):
                self.pods[f"{ns}/{name(p)}" if ns else name(p)] = p  # ref(p)
                self.pods_by_ns[ns].append(p)
        # The probe's own sidecar: which services its Sidecar resource lets it reach.
        self.egress = SidecarIndex(
            snap.sidecars,
            snap.root_namespace,
            req.client_namespace,
            snap.outbound_mode,
            snap.mesh_config,
            planned=self.pods_by_ns.__contains__,
            default_service_export_to=snap.default_service_export_to,
            revision=probe_revision,
        )
        self.egress.client_unknown = probe_problem
        self._meshes: dict[int, RevisionMesh | None] = {}
        self._mesh_by_revision: dict[tuple[str, bool], RevisionMesh] = {}
        self._revisions_noted: set[str] = set()
        self._plan_rev = snap.revisions.plan
        self._pa_by_root: dict[tuple[str, str], PeerAuthIndex] = {
            (snap.root_namespace, snap.revisions.plan): self.pa
        }
        self.index = PodIndex(
            self.pods.values(),
            known_addresses(snap.pods, snap.services),
            loopback_ok=snap.loopback_pods,
            workload_problem=self._revision_problem,
        )
        self.slices: dict[tuple[str, str], list[KubeObject]] = defaultdict(list)
        for s in snap.endpointslices:
            svc = labels_of(s).get(SLICE_SERVICE_LABEL)
            if svc:
                self.slices[(namespace(s), svc)].append(s)
        self._info: dict[int, PodInfo] = {}  # by id(): pods are not hashable, refs cost
        self._policy: dict[int, WorkloadPolicy] = {}
        self._identities: dict[tuple[str, str], str] = {}
        self._capture: dict[int, tuple[object, ...] | None] = {}
        self._pod_keys: dict[int, tuple[PodInfo, int | None]] = {}  # _plan_port's, by id(pod)
        self._workload_ids: dict[tuple[object, ...], int] = {}
        self._wire: dict[tuple[object, ...], tuple[Expect, ModeDecision]] = {}
        self.findings: list[Result] = []
        self.edges: list[Edge] = []
        self.ports: list[PortCoverage] = []

    def _probe_revision(self) -> tuple[str, str | None]:
        """The revision of the probe's own sidecar, and why it cannot be planned with the
        plan's mesh config, if it cannot: its namespace's labels send the probe pods (labelled
        ``sidecar.istio.io/inject=true``) to another revision's webhook
        (``requested_revision``), and that revision's client-side settings (trust domain,
        defaultServiceExportTo, defaultDestinationRuleExportTo, enableAutoMtls: what the
        probe's sidecar reads) are unknown or not the plan's."""
        ns = self.req.client_namespace
        rv = self.snap.revisions
        if ns is None or ns not in self.ns_labels:
            return rv.plan, None
        probe = {"metadata": {"namespace": ns, "labels": dict(PROBE_CLIENT_LABELS)}, "spec": {}}
        requested = requested_revision(probe, self.ns_labels[ns])
        if requested is None:
            return rv.plan, (
                f"namespace {ns}'s labels select no injection webhook for the probe pods: "
                "they would run without a sidecar"
            )
        rm = rv.mesh_of(requested, self.snap.plan_mesh())
        if rm.revision == rv.plan:
            return rv.plan, None
        lead = (
            f"the probe pods in namespace {ns} get a sidecar of control-plane revision "
            f"{rm.revision!r}, not the plan's {rv.plan!r}"
        )
        if rm.settings is None:
            return (
                rm.revision,
                f"{lead}, whose mesh config is unknown ({rm.why}); plan with --revision",
            )

        def client_side(m: MeshSettings) -> tuple[object, ...]:
            return (
                m.trust_domain or DEFAULT_TRUST_DOMAIN,
                m.default_service_export_to or ("*",),
                m.default_dr_export_to or ("*",),
                True if m.enable_auto_mtls is None else m.enable_auto_mtls,
            )

        mine = (
            self.snap.trust_domain,
            self.snap.default_service_export_to,
            self.snap.default_dr_export_to,
            self.snap.enable_auto_mtls,
        )
        if client_side(rm.settings) != mine:
            return rm.revision, (
                f"{lead}, whose mesh config differs in what the probe's sidecar reads "
                "(trust domain, defaultServiceExportTo, defaultDestinationRuleExportTo or "
                f"enableAutoMtls); plan with --revision {rm.revision}"
            )
        return rm.revision, None

    def mesh(self, pod: KubeObject) -> RevisionMesh | None:
        """The mesh config of the revision whose sidecar runs in ``pod`` (None: no
        sidecar), as ``jobs.plan.meshconfig.Revisions`` resolves it."""
        key = id(pod)
        if key in self._meshes:
            return self._meshes[key]
        pi = self.info(pod)  # has_sidecar once per pod
        got = pod_revision(pod, self.ns_labels.get(pi.namespace, {}), pi.has_sidecar)
        rm = None
        if got is not None:
            # A handful of revisions for every pod: resolve each (name, tag-free) once.
            rm = self._mesh_by_revision.get(got)
            if rm is None:
                rm = self._mesh_by_revision[got] = self.snap.revisions.mesh_of(
                    got[0], self.snap.plan_mesh(), is_tag_free=got[1]
                )
        self._meshes[key] = rm
        if rm is not None and rm.settings is not None and rm.revision != self._plan_rev:
            self._note_revision(rm.revision, rm.settings)
        return rm

    def _note_revision(self, revision: str, settings: MeshSettings) -> None:
        """Say once which mesh config another revision's pods are planned with."""
        if revision == self.snap.revisions.plan or revision in self._revisions_noted:
            return
        self._revisions_noted.add(revision)
        rv = self.snap.revisions
        self.findings.append(
            finding(
                f"revision {revision}",
                Verdict.SKIP,
                f"sidecars of control-plane revision {revision!r} are planned with its own "
                f"mesh config ({rv.istio_namespace}/{mesh_configmap_name(revision)}): trust "
                f"domain {settings.trust_domain or DEFAULT_TRUST_DOMAIN}, root namespace "
                f"{settings.root_namespace or DEFAULT_ROOT_NAMESPACE}",
            )
        )

    def _revision_problem(self, pod: KubeObject) -> Excluded | None:
        """Fail closed on a sidecar whose control plane's mesh config is unknown, or
        whose trust domain is not the plan's (the targets file has one trust domain, and
        that proxy's inbound accepts only peers of its own)."""
        rm = self.mesh(pod)
        if rm is None or rm.revision == self.snap.revisions.plan:
            return None
        what = f"its sidecar is of control-plane revision {rm.revision!r}"
        if rm.settings is None:
            return Excluded(
                f"Pod {ref(pod)}",
                None,
                f"{what}, whose mesh config is unknown ({rm.why}): what its proxy "
                "enforces cannot be planned",
                inconsistent=True,
                unknown=True,
            )
        td = rm.settings.trust_domain or DEFAULT_TRUST_DOMAIN
        if td != self.snap.trust_domain:
            return Excluded(
                f"Pod {ref(pod)}",
                None,
                f"{what}, whose trust domain {td!r} is not the plan's "
                f"{self.snap.trust_domain!r}: its identity cannot be checked in this plan "
                "(and its inbound accepts only peers of its own trust domain)",
                inconsistent=True,
                unknown=True,
            )
        return None

    def interception(self, pod: KubeObject) -> str | None:
        """The pod's revision's mesh-wide default interception mode, if it sets one."""
        rm = self.mesh(pod)
        if rm is None or rm.settings is None:
            return self.snap.interception_mode
        return rm.settings.interception_mode

    def _peer_auth(self, pod: KubeObject) -> PeerAuthIndex:
        """PeerAuthentication as the pod's own istiod reads it: the mesh-wide level is
        its revision's ``rootNamespace``."""
        rm = self.mesh(pod)
        if rm is None or rm.settings is None or rm.revision == self.snap.revisions.plan:
            return self.pa
        root = rm.settings.root_namespace or DEFAULT_ROOT_NAMESPACE
        got = self._pa_by_root.get((root, rm.revision))
        if got is None:
            got = self._pa_by_root[(root, rm.revision)] = PeerAuthIndex(
                in_revision(self.snap.peerauthentications, rm.revision), root
            )
        return got

    def policy(self, pod: KubeObject) -> WorkloadPolicy:
        got = self._policy.get(id(pod))
        if got is None:
            pi = self.info(pod)
            got = self._peer_auth(pod).for_workload(pi.namespace, pi.labels)
            self._policy[id(pod)] = got
        return got

    def identity(self, ns: str, sa: str) -> str:
        """``istio_identity`` in the plan's trust domain, once per service account."""
        got = self._identities.get((ns, sa))
        if got is None:
            got = self._identities[(ns, sa)] = istio_identity(self.snap.trust_domain, ns, sa)
        return got

    def info(self, pod: KubeObject) -> PodInfo:
        key = id(pod)
        got = self._info.get(key)
        if got is None:
            got = self._info[key] = self._pod_info(pod)
        return got

    def _pod_info(self, pod: KubeObject) -> PodInfo:
        # What name(), namespace(), labels_of() and annotations_of() answer, read off one
        # metadata mapping: this runs for every planned pod.
        md = meta(pod)
        ns, pod_name = md.get("namespace"), md.get("name")
        ns = ns if type(ns) is str else ""
        lbl, ann = md.get("labels"), md.get("annotations")
        lbl = dict(lbl) if type(lbl) is dict else {}
        sa = service_account(pod)
        ips, _ = self.index.addresses(pod)
        sidecar = has_sidecar(pod)
        return PodInfo(
            name=pod_name if type(pod_name) is str else "",
            namespace=ns,
            service_account=sa,
            identity=self.identity(ns, sa),
            ip=ips[0] if ips else None,
            ready=pod_ready(pod),
            labels=lbl,
            annotations=dict(ann) if type(ann) is dict else {},
            has_sidecar=sidecar,
            # ambient_enrolled(pod, ...) is False for any pod with a sidecar
            ambient=not sidecar and ambient_enrolled(pod, self.ns_labels.get(ns, {})),
            tls_mode_label=lbl.get(TLS_MODE_LABEL),
            echo=lbl.get(ECHO_LABEL[0]) == ECHO_LABEL[1],
        )

    def on_the_wire(
        self, pod: KubeObject, pi: PodInfo, port: int, decision: ModeDecision
    ) -> tuple[Expect, ModeDecision]:
        """``on_the_wire`` for the pod, computed once per (what it reads of the pod, port,
        decision): the pods of one workload share their capture annotations, so 100,000
        edges ask a handful of distinct questions."""
        key = id(pod)
        if key in self._capture:
            capture = self._capture[key]
        else:
            capture = self._capture[key] = self._capture_key(pod, pi)
        if capture is None:
            return on_the_wire(pi, port, decision, self.interception(pod))
        # By id(decision): the decisions live in this builder's policy caches (and the
        # PeerAuthIndex's) as long as the memo, so an id never names another decision.
        wkey = (capture, port, id(decision))
        got = self._wire.get(wkey)
        if got is None:
            got = self._wire[wkey] = on_the_wire(pi, port, decision, self.interception(pod))
        return got

    def _workload_key(self, pod: KubeObject, pi: PodInfo) -> int | None:
        """Everything an edge's server mode, client view, wire and group read of its pod,
        as a small number: pods with equal numbers get equal answers at a port (an int,
        so an edge hashes two numbers, not the whole tuple). None: not memoized."""
        capture = self._capture_key(pod, pi)
        got = None
        if capture is not None:
            # By id(policy): the policy caches hold every WorkloadPolicy for the build.
            facts = (
                id(self.policy(pod)),
                capture,
                pi.has_proxy,
                pi.tls_mode_label,
                pi.ambient,
                pi.identity,
                pi.service_account,
                pi.echo,
            )
            got = self._workload_ids.setdefault(facts, len(self._workload_ids))
        return got

    def _capture_key(self, pod: KubeObject, pi: PodInfo) -> tuple[object, ...] | None:
        """Everything ``on_the_wire`` reads besides the port and the decision; None
        (not memoized) when an annotation it reads is not a string."""
        values = tuple(map(pi.annotations.get, CAPTURE_ANNOTATIONS))
        if values != _NO_CAPTURE_ANNOTATIONS and any(
            v is not None and type(v) is not str for v in values
        ):
            return None
        return (pi.has_sidecar, pi.ambient, self.interception(pod), values)

    def _excluded_findings(self, svc_ref: str, excluded: Sequence[Excluded]) -> None:
        seen: set[tuple[str, str | None, str]] = set()
        for e in excluded:
            key = (e.obj, e.address, e.reason)
            if key in seen:
                continue
            seen.add(key)
            self.findings.append(
                finding(
                    f"Service {svc_ref}",
                    Verdict.ERROR if e.inconsistent else Verdict.SKIP,
                    e.text(),
                    object=e.obj,
                    address=e.address,
                    notProbed=True,
                )
            )

    def _no_target(self, base: str, why: str, routed: Sequence[Excluded] = ()) -> None:
        """A TCP Service port that gets no target: its coverage and a finding say why."""
        self.ports.append(PortCoverage(base, (), tuple(routed), why))
        self.findings.append(
            finding(
                base,
                Verdict.SKIP,
                f"not planned: nothing can be verified here: {why}",
                notProbed=True,
            )
        )

    def _unverifiable(self, svc: KubeObject, why: str, routed: Sequence[Excluded] = ()) -> None:
        for sp in self._tcp_ports(svc):
            self._no_target(f"{namespace(svc)}/{name(svc)}:{sp['port']}", why, routed)

    def _tcp_ports(self, svc: KubeObject) -> Iterator[Mapping[str, Any]]:
        """The Service's TCP ports; the others are recorded on the way (``_not_captured``)."""
        for sp in service_ports(svc):
            if (sp.get("protocol") or "TCP") == "TCP":
                yield sp
            else:
                self._not_captured(svc, sp)

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
                finding(
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
        targets: list[Target] = []
        planned_ports: set[int] = set()
        twice: set[int] = set()
        for sp in self._tcp_ports(svc):
            if sp["port"] in planned_ports:  # the API server rejects this; YAML may hold it
                self.findings.append(
                    finding(
                        f"{ns}/{svc_name}:{sp['port']}",
                        Verdict.ERROR,
                        "port listed twice: the first is planned",
                    )
                )
                twice.add(sp["port"])
                continue
            planned_ports.add(sp["port"])
            targets.extend(self._plan_port(svc, sp, backends))
        if twice:
            self._listed_twice(svc, twice)
        return targets

    def _listed_twice(self, svc: KubeObject, ports: set[int]) -> None:
        """A port number listed twice (the API server refuses such a Service: which entry
        a cluster would run is unknown): compliance errors on the whole port."""
        names = {f"{namespace(svc)}/{name(svc)}:{p}" for p in ports}
        dup = Excluded(
            f"Service {ref(svc)}",
            None,
            "lists this port more than once (the API server rejects that): which entry "
            "applies is unknown",
            unknown=True,
        )
        self.ports = [
            replace(pc, routed_elsewhere=(*pc.routed_elsewhere, dup))
            if pc.name in names and pc.why_unverifiable is None
            else pc
            for pc in self.ports
        ]

    def _plan_port(
        self, svc: KubeObject, sp: Mapping[str, Any], backends: ServiceBackends
    ) -> list[Target]:
        """The edges of one TCP Service port, grouped into targets (``_targets``)."""
        ns, svc_name, port = namespace(svc), name(svc), sp["port"]
        base = f"{ns}/{svc_name}:{port}"
        host = f"{svc_name}.{ns}.svc.{self.snap.cluster_domain}"
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
        hidden = self.egress.hide(
            base, ns, host, port, f"Service {ref(svc)}", annotations_of(svc).get(EXPORT_TO)
        )
        groups: dict[_GroupKey, list[tuple[str, int]]] = {}
        group_edges: dict[_GroupKey, list[Edge]] = defaultdict(list)
        # One port's edges share the DestinationRule view; the client's view depends
        # only on these few facts of the pod, so it is computed once per combination.
        views: dict[tuple[Expect, bool, str | None, bool, str | None], ClientView] = {}

        def side(pod: KubeObject, pi: PodInfo, tport: int) -> _EdgeSide:
            decision = self.policy(pod).at(tport)
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
                if hidden is not None:  # the probe's sidecar never has this port in scope
                    view = views[vkey] = self.egress.view(
                        base, hidden, host, port, decision.mode, pi.has_proxy
                    )
            expect, decision = self.on_the_wire(pod, pi, tport, decision)
            key = (pi.service_account, expect, pi.echo)  # the group (target) of the edge
            return expect, decision, view, groups.setdefault(key, []), group_edges[key]

        # Pods of one workload get the same answer at a target port (``_workload_key``).
        sides: dict[tuple[int, int], _EdgeSide] = {}
        pod_keys = self._pod_keys  # read inline: 100,000 edges
        dr_mode, dr_source = dr.mode, dr.source
        for pod, ip, tport in found:
            pk = pod_keys.get(id(pod))
            if pk is None:
                pi = self.info(pod)
                pk = pod_keys[id(pod)] = (pi, self._workload_key(pod, pi))
            pi, wk = pk
            got = None if wk is None else sides.get((wk, tport))
            if got is None:
                got = side(pod, pi, tport)
                if wk is not None:
                    sides[(wk, tport)] = got
            expect, decision, view, eps, edges = got
            if ip is not None:
                eps.append((ip, tport))
            edges.append(
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
                    dr_mode=dr_mode,
                    dr_source=dr_source,
                    client=view,
                )
            )
        if unresolved:
            self.findings.append(
                finding(
                    base,
                    Verdict.SKIP,
                    f"targetPort {sp.get('targetPort')!r} names no container port of pod(s) "
                    f"{', '.join(sorted(unresolved)[:5])}: not planned there",
                    pods=sorted(unresolved),
                )
            )
        routed = tuple(backends.routed_elsewhere)
        if not groups:
            why = backends.why_none or "no backend pod serves this port"
            if unresolved:
                why = f"targetPort {sp.get('targetPort')!r} resolves on no backend pod"
            self._no_target(base, why, routed)
            return []
        targets = self._targets(base, groups, group_edges)
        self.ports.append(PortCoverage(base, tuple(t.name for t in targets), routed, None))
        return targets

    def _targets(
        self,
        base: str,
        groups: Mapping[_GroupKey, list[tuple[str, int]]],
        group_edges: Mapping[_GroupKey, list[Edge]],
    ) -> list[Target]:
        """One target per group of pods that must behave alike (service account, what the
        wire shows, echo); named ``base`` when there is one group."""
        split = len(groups) > 1
        if split:
            sas = sorted({k[0] for k in groups})
            self.findings.append(
                finding(
                    base,
                    Verdict.SKIP,
                    f"pods behind this port differ (service accounts {', '.join(sas)}, or "
                    "sidecar/policy): split into one target per group",
                    groups=len(groups),
                )
            )
        both_echo = {(k[0], k[1]) for k in groups if k[2]} & {
            (k[0], k[1]) for k in groups if not k[2]
        }
        targets: list[Target] = []
        for key, eps in groups.items():
            sa, expect, echo = key
            tname = f"{base}@{sa}/{expect.value}" if split else base
            if echo and (sa, expect) in both_echo:
                tname += "/echo"  # target names must stay unique
            edges = group_edges[key]
            if split:
                edges = [replace(e, target=tname) for e in edges]
            self.edges.extend(edges)
            first = edges[0]
            targets.append(
                Target(
                    name=tname,
                    host=first.host,
                    port=first.service_port,
                    expect=expect,
                    # (ip, port) pairs sort as Endpoints do (by host, then port).
                    endpoints=tuple(starmap(Endpoint, sorted(set(eps)))),
                    identity=self.identity(first.namespace, sa),
                    protocol=first.protocol,
                    echo=echo,
                )
            )
        return targets

    def inbound(self) -> list[Inbound]:
        """One ``Inbound`` per (pod, port) of every planned pod: declared TCP container
        ports and the target ports Services send to."""
        ports: dict[str, set[int]] = defaultdict(set)
        for e in self.edges:
            ports[e.pod.key].add(e.target_port)
        out: list[Inbound] = []
        for key, pod in sorted(self.pods.items()):
            pi = self.info(pod)
            declared = {
                p["containerPort"]
                for p in container_ports(pod)
                if (p.get("protocol") or "TCP") == "TCP"
            }
            for port in sorted(declared | ports.get(key, set())):
                expect, d = self.on_the_wire(pod, pi, port, self.policy(pod).at(port))
                out.append(Inbound(pi, port, d.mode, expect, d.source))
        return out


def on_the_wire(
    pi: PodInfo, port: int, decision: ModeDecision, mesh_mode: str | None = None
) -> tuple[Expect, ModeDecision]:
    """What inbound ``port`` of the pod must show, and the decision behind it. A port
    its proxy does not capture - a sidecar whose iptables leave it alone
    (``jobs.plan.injection.inbound_uncaptured``), an ambient pod in ingress mode
    (``ambient_inbound_bypassed``) - has no proxy in front of it: plaintext reaches
    the app whatever the PeerAuthentication says (``NONE``; the source says why)."""
    why: str | None = None
    if pi.ambient and ambient_inbound_bypassed(pi.annotations):
        why = f"ztunnel does not capture its inbound traffic ({AMBIENT_BYPASS_INBOUND})"
    elif pi.has_sidecar and not pi.ambient:
        uncaptured = inbound_uncaptured(pi.annotations, port, mesh_mode)
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
    want = str(sp.get("name") or "")
    for be in backends:
        tport: int | None
        if be.slice_ports is not None:
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
