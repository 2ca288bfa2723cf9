"""What the lab runs, independent of where it came from.

The scenario YAML goes through the same policy engine as the cluster path
(jobs.plan.planner); its answer is folded into these small records, and the Envoy
configuration and the app processes are generated from them alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ServerMode(StrEnum):
    """Effective PeerAuthentication mode at one inbound (pod, target port)."""

    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"
    DISABLE = "DISABLE"


class CertKind(StrEnum):
    """Which certificate a sidecar presents (lab annotation ``lab.mtlsprobe.dev/cert``)."""

    VALID = "valid"
    EXPIRED = "expired"


class XfccMode(StrEnum):
    """What happens to a client-supplied X-Forwarded-Client-Cert on the way to this
    pod (lab annotation ``lab.mtlsprobe.dev/xfcc``).

    ``append``: Istio's path — the client sidecar's outbound drops it (SANITIZE), the
    inbound appends its own element (APPEND_FORWARD). ``forward-untrusted``: the
    client side forwards it (ALWAYS_FORWARD_ONLY) and the inbound's APPEND_FORWARD
    keeps it, so the forged element reaches the app in front of the genuine one.
    """

    APPEND = "append"
    FORWARD_UNTRUSTED = "forward-untrusted"


@dataclass(frozen=True)
class InboundPort:
    port: int  # the target (container) port
    http: bool  # False: tcp_proxy
    mode: ServerMode
    rbac: str = (
        ""  # Envoy RBAC filters (JSON list) from AuthorizationPolicies (jobs.lab.authz_rbac)
    )


@dataclass(frozen=True)
class PodSpec:
    namespace: str
    name: str
    ip: str  # the pod IP: the sidecar's inbound listeners, or the app itself without a sidecar
    app_ip: str  # where the app listens behind its sidecar (no network namespaces here)
    sidecar: bool
    identity: str  # the SPIFFE ID the sidecar's certificate carries
    ports: tuple[InboundPort, ...]
    cert: CertKind = CertKind.VALID
    xfcc: XfccMode = XfccMode.APPEND

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class UpstreamEndpoint:
    ip: str
    port: int  # target port
    mtls: bool  # what the client sidecar does towards this endpoint (auto-mTLS / DestinationRule)


@dataclass(frozen=True)
class Upstream:
    """One service port, as the probe's own sidecar sees it (Istio: one outbound cluster)."""

    host: str  # svc.ns.svc.cluster.local
    port: int  # the service port
    http: bool
    sans: tuple[str, ...]  # server identities verified exactly (the service's service accounts)
    endpoints: tuple[UpstreamEndpoint, ...]
    forward_client_xfcc: bool = False  # lab only: let a client-supplied XFCC through


@dataclass(frozen=True)
class MeshSpec:
    trust_domain: str
    probe_identity: str
    pods: tuple[PodSpec, ...]
    upstreams: tuple[Upstream, ...]
    # More probe sidecars, one per identity (authz cases from other namespaces/principals).
    extra_probes: tuple[str, ...] = ()
