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

Where each part lives: the types in ``jobs.plan.model``, targets and edges in
``jobs.plan.builder``, static findings in ``jobs.plan.findings``, ``--require`` in
``jobs.plan.compliance``, negative controls in ``jobs.plan.controls``; this module puts
them together (and re-exports the types).
"""

from __future__ import annotations

from collections.abc import Iterable

from jobs.plan.builder import Builder
from jobs.plan.compliance import compliance
from jobs.plan.controls import attach
from jobs.plan.endpoints import dns_subdomain
from jobs.plan.fields import name, namespace, ref
from jobs.plan.findings import (
    contradictions,
    coverage,
    dr_findings,
    namespace_findings,
    peer_auth_findings,
    problem_findings,
    sidecar_findings,
)
from jobs.plan.model import (
    CHECK_POLICY,
    CHECK_REQUIRE,
    DEFAULT_CLIENT_NAMESPACE,
    ECHO_LABEL,
    REQUIREMENTS,
    Edge,
    Inbound,
    Plan,
    PodInfo,
    PortCoverage,
    Requirements,
    finding,
)
from jobs.plan.objects import DEFAULT_TRUST_DOMAIN, ClusterSnapshot
from probe.model import Source, Target, TargetsFile
from probe.results import Verdict
from probe.spiffe import SpiffeIdError, istio_identity, parse_spiffe_id

__all__ = [
    "CHECK_POLICY",
    "CHECK_REQUIRE",
    "DEFAULT_CLIENT_NAMESPACE",
    "ECHO_LABEL",
    "REQUIREMENTS",
    "Edge",
    "Inbound",
    "Plan",
    "PodInfo",
    "PortCoverage",
    "Requirements",
    "build_plan",
    "mesh_names_problem",
]


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
        if parse_spiffe_id(istio_identity(td, "x", "x")).trust_domain != td:
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
    b = Builder(snapshot, req)
    targets: list[Target] = []
    bad_names = mesh_names_problem(snapshot)
    if bad_names is not None:
        # Nothing can carry a valid identity: plan nothing rather than write a targets
        # file `check` rejects (or one that names the wrong mesh).
        b.findings.append(
            finding("cluster", Verdict.ERROR, f"{bad_names}: nothing planned; pass --trust-domain")
        )
    else:
        seen: set[tuple[str, str]] = set()
        for svc in sorted(snapshot.services, key=lambda s: (namespace(s), name(s))):
            if not snapshot.is_target_namespace(namespace(svc)):
                continue
            if (namespace(svc), name(svc)) in seen:  # YAML can repeat what a cluster cannot
                b.findings.append(
                    finding(
                        f"Service {ref(svc)}", Verdict.ERROR, "defined twice: the first is planned"
                    )
                )
                continue
            seen.add((namespace(svc), name(svc)))
            targets.extend(b.plan_service(svc))
    findings = [
        *problem_findings(snapshot),
        *b.findings,
        *peer_auth_findings(b),
        *namespace_findings(b),
        *sidecar_findings(b),
        *dr_findings(b),
        *(finding(t, Verdict(v), r, **ev) for t, v, r, ev in b.egress.findings()),
        *contradictions(b.edges),
        *compliance(req, targets, b.edges, b.ports),
        coverage(b),
    ]
    tf = TargetsFile(
        trust_domain=snapshot.trust_domain if bad_names is None else DEFAULT_TRUST_DOMAIN,
        targets=tuple(targets),
        source=Source(),
    )
    plan = Plan(tf, findings, b.edges, requirements=req, ports=b.ports, inbound_of=b.inbound)
    from jobs.plan.authz_cases import attach as authz_cases  # AuthorizationPolicy cases

    return authz_cases(
        attach(plan), snapshot
    )  # negative controls (control workloads leave the targets)
