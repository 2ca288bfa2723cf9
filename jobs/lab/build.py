"""From a scenario's YAML to what the lab runs, through the cluster path's own code:
``jobs.plan.manifests`` (YAML → snapshot, Deployments expanded, injection applied) and
``jobs.plan.planner`` (the policy engine). The lab adds only what a real cluster would
supply itself — pod IPs — and the lab-only annotations (see ``LAB_ANNOTATIONS``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from jobs.lab.addresses import Slot
from jobs.lab.scenarios import Scenario, ScenarioError
from jobs.lab.spec import (
    CertKind,
    InboundPort,
    MeshSpec,
    PodSpec,
    ServerMode,
    Upstream,
    UpstreamEndpoint,
    XfccMode,
)
from jobs.plan.manifests import snapshot_from_documents
from jobs.plan.objects import (
    ClusterSnapshot,
    KubeObject,
    annotations_of,
    name,
    namespace,
    set_pod_ip,
)
from jobs.plan.planner import Edge, Plan, PodInfo, Requirements, build_plan
from probe.constants import PROBE_NAMESPACE, PROBE_SERVICE_ACCOUNT
from probe.model import Expect, Protocol, Target, TargetsFile
from probe.results import Result
from probe.spiffe import istio_identity

PREFIX = "lab.mtlsprobe.dev/"
CLAIM_MODE = PREFIX + "claim-mode"
CERT = PREFIX + "cert"
IDENTITY_SA = PREFIX + "identity-sa"
XFCC = PREFIX + "xfcc"
NETWORK = PREFIX + "network"
LAB_ANNOTATIONS = {
    CLAIM_MODE: "the targets file claims this mode (STRICT|PERMISSIVE|DISABLE|NONE): a stale "
    "expectation (Service or pod)",
    CERT: "'expired': the sidecar presents an expired certificate (pod)",
    IDENTITY_SA: "the sidecar's certificate names this service account instead (pod)",
    XFCC: "'forward-untrusted': the path to this pod forwards a client-supplied XFCC (pod)",
    NETWORK: "'reset': a NetworkPolicy or CNI resets every connection to this pod; the lab "
    "stands a resetting listener in front of its app (pod)",
}


@dataclass(frozen=True)
class LabBuild:
    mesh: MeshSpec
    targets: TargetsFile
    findings: tuple[Result, ...]
    plan: Plan
    # The objects as a cluster would serve them (pods with the lab's IPs): for tests that
    # put the lab behind the fake API server.
    snapshot: ClusterSnapshot | None = None


def _lab_annotations(owner: str, annotations: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in annotations.items() if k.startswith(PREFIX)}
    for key, value in out.items():
        if key not in LAB_ANNOTATIONS:
            raise ScenarioError(f"{owner}: unknown lab annotation {key!r}")
        if key == CLAIM_MODE and value.upper() not in Expect.__members__:
            raise ScenarioError(f"{owner}: {key}: {value!r} is not STRICT|PERMISSIVE|DISABLE|NONE")
        if key == CERT and value not in {k.value for k in CertKind}:
            raise ScenarioError(f"{owner}: {key}: {value!r} (known: valid, expired)")
        if key == XFCC and value not in {x.value for x in XfccMode}:
            raise ScenarioError(f"{owner}: {key}: {value!r} (known: append, forward-untrusted)")
        if key == IDENTITY_SA and not value:
            raise ScenarioError(f"{owner}: {key} is empty")
        if key == NETWORK and value != "reset":
            raise ScenarioError(f"{owner}: {key}: {value!r} (known: reset)")
    return out


def _mark_running(pod: KubeObject) -> None:
    """The lab starts every pod it is given, bare Pods (no status in YAML) included."""
    status = pod.setdefault("status", {})
    status["phase"] = "Running"
    status["conditions"] = [{"type": "Ready", "status": "True"}]


def _server_mode(mode: Expect) -> ServerMode:
    return ServerMode(mode.value) if mode is not Expect.NONE else ServerMode.PERMISSIVE


def build_lab(scenario: Scenario, slot: Slot, require: Sequence[str]) -> LabBuild:
    snap = snapshot_from_documents([(scenario.origin, d) for d in scenario.documents])
    snap.loopback_pods = True  # the lab's pod IPs are 127.B.x.y: let the plan probe them
    app_ips: dict[str, str] = {}
    pod_ann: dict[str, dict[str, str]] = {}
    for i, pod in enumerate(sorted(snap.pods, key=lambda p: (namespace(p), name(p)))):
        key = f"{namespace(pod)}/{name(pod)}"
        set_pod_ip(pod, slot.pod_ip(i))
        _mark_running(pod)
        app_ips[key] = slot.app_ip(i)
        pod_ann[key] = _lab_annotations(f"pod {key}", annotations_of(pod))
    try:
        reqs = Requirements.parse(require, client_namespace=PROBE_NAMESPACE)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    plan = build_plan(snap, reqs)
    td = plan.targets_file.trust_domain
    probe_identity = istio_identity(td, PROBE_NAMESPACE, PROBE_SERVICE_ACCOUNT)
    plan, extra_probes = _authz_identities(snap, plan, probe_identity)

    service_claims: dict[tuple[str, str], str] = {}
    for svc in snap.services:
        ann = _lab_annotations(f"Service {namespace(svc)}/{name(svc)}", annotations_of(svc))
        if CLAIM_MODE in ann:
            service_claims[(namespace(svc), name(svc))] = ann[CLAIM_MODE].upper()

    rbac = _authz_rbac(snap, plan)
    tcp_ports: set[tuple[str, int]] = {
        (e.pod.key, e.target_port) for e in plan.edges if e.protocol is Protocol.TCP
    }
    infos: dict[str, PodInfo] = {}
    ports: dict[str, list[InboundPort]] = defaultdict(list)
    for ib in plan.inbound:
        infos[ib.pod.key] = ib.pod
        if ib.pod.ambient:
            raise ScenarioError(
                f"pod {ib.pod.key} is enrolled in ambient mode: the lab runs sidecars only"
            )
        http = (ib.pod.key, ib.port) not in tcp_ports
        port = InboundPort(ib.port, http, _server_mode(ib.mode))
        if ib.pod.has_sidecar:
            port = replace(port, rbac=rbac(ib.pod, ib.port, http))
        ports[ib.pod.key].append(port)

    pods: list[PodSpec] = []
    for key, info in sorted(infos.items()):
        if info.ip is None:
            continue
        ann = pod_ann.get(key, {})
        sa = ann.get(IDENTITY_SA, info.service_account)
        # The stand-in for a NetworkPolicy that resets everything: a listener with only a
        # TLS filter chain (a STRICT inbound) answers plaintext with a TCP RST, exactly as
        # the enforcing proxy would. The plan still sees a pod without a sidecar.
        reset = ann.get(NETWORK) == "reset"
        pod_ports = tuple(ports[key])
        if reset:
            pod_ports = tuple(replace(p, mode=ServerMode.STRICT) for p in pod_ports)
        pods.append(
            PodSpec(
                namespace=info.namespace,
                name=info.name,
                ip=info.ip,
                app_ip=app_ips[key],
                sidecar=info.has_sidecar or reset,
                identity=istio_identity(td, info.namespace, sa),
                ports=pod_ports,
                cert=CertKind(ann.get(CERT, CertKind.VALID.value)),
                xfcc=XfccMode(ann.get(XFCC, XfccMode.APPEND.value)),
            )
        )

    upstreams = _upstreams(plan.targets_file.targets, plan.edges, pod_ann)
    targets = _targets(plan, service_claims, pod_ann)
    mesh = MeshSpec(
        trust_domain=td,
        probe_identity=probe_identity,
        pods=tuple(pods),
        upstreams=upstreams,
        extra_probes=extra_probes,
    )
    return LabBuild(mesh, targets, tuple(plan.findings), plan, snap)


def _authz_identities(
    snap: ClusterSnapshot, plan: Plan, probe_identity: str
) -> tuple[Plan, tuple[str, ...]]:
    """More probe sidecars, one per identity the AuthorizationPolicies name (so allows by
    principal or namespace are proven, and denies for the others), and the plan's authz
    cases for all of them."""
    from jobs.plan.authz import PolicySet
    from jobs.plan.authz_cases import attach, identities_named

    if not snap.authorizationpolicies:
        return plan, ()
    ps = PolicySet.from_objects(snap.authorizationpolicies, snap.root_namespace)
    named = identities_named(ps, plan.targets_file.trust_domain)
    extra = tuple(i for i in named if i != probe_identity)
    # The lab's apps all reflect requests (the echo responder): cases everywhere.
    tf = plan.targets_file
    plan = replace(
        plan, targets_file=replace(tf, targets=tuple(replace(t, echo=True) for t in tf.targets))
    )
    return attach(plan, snap, [probe_identity, *extra]), extra


def _authz_rbac(snap: ClusterSnapshot, plan: Plan) -> Callable[[PodInfo, int, bool], str]:
    """Envoy RBAC filters per (pod, port) from the scenario's AuthorizationPolicies."""
    from jobs.lab.authz_rbac import UntranslatableError, for_inbound
    from jobs.plan.authz import PolicySet, Workload

    ps = PolicySet.from_objects(snap.authorizationpolicies, snap.root_namespace)

    def filters(pod: PodInfo, port: int, http: bool) -> str:
        if not ps.policies:
            return ""
        stat = f"inbound_{pod.namespace}_{pod.name}_{port}"
        try:
            return for_inbound(
                ps.policies, Workload(pod.namespace, pod.labels), not http, stat, ps.root_namespace
            )
        except UntranslatableError as exc:
            raise ScenarioError(str(exc)) from None

    return filters


def _upstreams(
    targets: Sequence[Target], edges: Sequence[Edge], pod_ann: dict[str, dict[str, str]]
) -> tuple[Upstream, ...]:
    """One outbound cluster per service port, as Istio builds them (a service with no
    ready endpoints still has its cluster: calls get 503 "no healthy upstream")."""
    groups: dict[tuple[str, int], list[Edge]] = {(t.host, t.port): [] for t in targets}
    for e in edges:
        if e.pod.ip is not None:
            groups.setdefault((e.host, e.service_port), []).append(e)
    protocols = {(t.host, t.port): t.protocol for t in targets}
    out: list[Upstream] = []
    for (host, port), group in sorted(groups.items()):
        seen: set[tuple[str, int]] = set()
        endpoints: list[UpstreamEndpoint] = []
        for e in group:
            assert e.pod.ip is not None
            if (e.pod.ip, e.target_port) in seen:
                continue
            seen.add((e.pod.ip, e.target_port))
            endpoints.append(UpstreamEndpoint(e.pod.ip, e.target_port, e.client.mtls))
        out.append(
            Upstream(
                host=host,
                port=port,
                http=all(e.protocol is Protocol.HTTP for e in group)
                and protocols.get((host, port), Protocol.HTTP) is Protocol.HTTP,
                # Istio verifies the server against the service's service accounts.
                sans=tuple(sorted({e.pod.identity for e in group})),
                endpoints=tuple(endpoints),
                forward_client_xfcc=any(
                    pod_ann.get(e.pod.key, {}).get(XFCC) == XfccMode.FORWARD_UNTRUSTED.value
                    for e in group
                ),
            )
        )
    return tuple(out)


def _targets(
    plan: Plan, service_claims: dict[tuple[str, str], str], pod_ann: dict[str, dict[str, str]]
) -> TargetsFile:
    """The planner's targets, with every app known to echo (the lab runs the echo
    responder everywhere) and any claimed (stale) expectation written in."""
    by_target: dict[str, list[Edge]] = defaultdict(list)
    for e in plan.edges:
        by_target[e.target].append(e)
    targets: list[Target] = []
    for t in plan.targets_file.targets:
        edges = by_target.get(t.name, [])
        claim: str | None = None
        for e in edges:
            claim = service_claims.get((e.namespace, e.service)) or pod_ann.get(e.pod.key, {}).get(
                CLAIM_MODE
            )
            if claim:
                break
        t2 = replace(t, echo=True)
        if claim:
            t2 = replace(t2, expect=Expect(claim.upper()))
        targets.append(t2)
    return replace(plan.targets_file, targets=tuple(targets))
