"""The hand-made mesh spec the lab runtime tests run on real Envoy (no scenario YAML):
one pod per server mode and certificate fault, with the upstreams a probe's sidecar
would have towards them."""

from __future__ import annotations

from collections.abc import Callable

from jobs.lab.addresses import Slot
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

TD = "cluster.local"
PROBE_ID = "spiffe://cluster.local/ns/mtlsprobe/sa/mtlsprobe"


def build_mesh(pod_ip: Callable[[int], str], app_ip: Callable[[int], str]) -> MeshSpec:
    # name, mode, has sidecar, service account on its cert, cert kind, inbound XFCC
    specs: list[tuple[str, ServerMode, bool, str | None, CertKind, XfccMode]] = [
        ("strict", ServerMode.STRICT, True, None, CertKind.VALID, XfccMode.APPEND),
        ("perm", ServerMode.PERMISSIVE, True, None, CertKind.VALID, XfccMode.APPEND),
        ("off", ServerMode.DISABLE, True, None, CertKind.VALID, XfccMode.APPEND),
        ("naked", ServerMode.STRICT, False, None, CertKind.VALID, XfccMode.APPEND),
        ("fwd", ServerMode.STRICT, True, None, CertKind.VALID, XfccMode.FORWARD_UNTRUSTED),
        ("imposter", ServerMode.STRICT, True, "other", CertKind.VALID, XfccMode.APPEND),
        ("expired", ServerMode.STRICT, True, None, CertKind.EXPIRED, XfccMode.APPEND),
    ]
    pods: list[PodSpec] = []
    ups: list[Upstream] = []
    for i, (name, mode, sidecar, sa, cert, xfcc) in enumerate(specs):
        pod = PodSpec(
            namespace="a",
            name=name,
            ip=pod_ip(i),
            app_ip=app_ip(i),
            sidecar=sidecar,
            identity=f"spiffe://{TD}/ns/a/sa/{sa or name}",
            ports=(InboundPort(8080, True, mode), InboundPort(5432, False, mode)),
            cert=cert,
            xfcc=xfcc,
        )
        pods.append(pod)
        mtls = sidecar and mode is not ServerMode.DISABLE
        ups.append(
            Upstream(
                host=f"{name}.a.svc.cluster.local",
                port=80,
                http=True,
                sans=(f"spiffe://{TD}/ns/a/sa/{name}",),
                endpoints=(UpstreamEndpoint(pod.ip, 8080, mtls),),
                forward_client_xfcc=name == "fwd",
            )
        )
    # A DestinationRule DISABLE towards the STRICT pod: the client sends plaintext.
    ups.append(
        Upstream(
            host="strict-dr.a.svc.cluster.local",
            port=80,
            http=True,
            sans=(f"spiffe://{TD}/ns/a/sa/strict",),
            endpoints=(UpstreamEndpoint(pods[0].ip, 8080, False),),
        )
    )
    # A tcp service port on the STRICT pod: reached through a CONNECT tunnel, over mTLS.
    ups.append(
        Upstream(
            host="strict-db.a.svc.cluster.local",
            port=5432,
            http=False,
            sans=(f"spiffe://{TD}/ns/a/sa/strict",),
            endpoints=(UpstreamEndpoint(pods[0].ip, 5432, True),),
        )
    )
    return MeshSpec(TD, PROBE_ID, tuple(pods), tuple(ups))


def small_mesh(slot: Slot) -> MeshSpec:
    """The first two pods and upstreams: enough for tests of bring-up and teardown."""
    full = build_mesh(slot.pod_ip, slot.app_ip)
    return MeshSpec(TD, PROBE_ID, full.pods[:2], full.upstreams[:2])
