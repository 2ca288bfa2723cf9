"""Istio policy semantics as pure functions: what a (pod, target port) must do, and what
a sidecar client does towards it.

No I/O here: everything takes the raw objects of a ``ClusterSnapshot`` and returns small
immutable answers, each carrying the object that decided it so reports can say *why*.
docs/istio-behaviour.md summarises the rules; each module names the Istio sources.

- ``peerauth``: PeerAuthentication composition (workload > namespace > mesh, oldest wins,
  ``UNSET`` inherits, ``portLevelMtls`` by target port) - the server's mode.
- ``destinationrules``: which DestinationRule a sidecar client uses for a host, as
  istiod resolves it (client namespace, service namespace, root namespace; exportTo,
  workloadSelector, merging, ``portLevelSettings`` by service port) - the client's TLS.
- ``client``: ``client_view``, what a sidecar client sends to one endpoint and whether
  the call can work.
- ``sidecar``: Sidecar resources - which services the probe's own sidecar reaches, and
  what it does with the others (BlackHoleCluster / PassthroughCluster).
- ``ports``: Istio's protocol selection for a Service port, and target port resolution.
"""

from jobs.plan.policy.client import ClientTls, ClientView, Outcome, client_view
from jobs.plan.policy.destinationrules import (
    PROBE_CLIENT_LABELS,
    DestinationRuleIndex,
    DrTls,
    dr_host,
    dr_scope,
    dr_tls_modes,
    in_cluster_host,
)
from jobs.plan.policy.peerauth import (
    ModeDecision,
    PeerAuthIndex,
    WorkloadPolicy,
    expect_for,
    selects,
    workload_selector,
)
from jobs.plan.policy.ports import (
    container_ports,
    port_protocol,
    resolve_target_port,
    service_ports,
    service_selector,
)
from jobs.plan.policy.sidecar import EXPORT_TO_ANNOTATION as EXPORT_TO
from jobs.plan.policy.sidecar import SidecarIndex

__all__ = [
    "EXPORT_TO",
    "PROBE_CLIENT_LABELS",
    "ClientTls",
    "ClientView",
    "DestinationRuleIndex",
    "DrTls",
    "ModeDecision",
    "Outcome",
    "PeerAuthIndex",
    "SidecarIndex",
    "WorkloadPolicy",
    "client_view",
    "container_ports",
    "dr_host",
    "dr_scope",
    "dr_tls_modes",
    "expect_for",
    "in_cluster_host",
    "port_protocol",
    "resolve_target_port",
    "selects",
    "service_ports",
    "service_selector",
    "workload_selector",
]
