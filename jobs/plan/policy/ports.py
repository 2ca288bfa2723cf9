"""Service and container ports as Istio reads them: the protocol it selects for a
Service port, and the pod port a Service port sends to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jobs.plan.fields import spec
from probe.constants import PROXY_CONTAINER
from probe.model import Protocol

# pkg/config/protocol/instance.go ``Parse`` (case-insensitive), split by how the plan
# probes them: ``IsHTTP`` (HTTP, HTTP2, HTTP_PROXY, GRPC, GRPCWeb) and ``IsTCP`` (TCP,
# HTTPS, TLS, Mongo, Redis, MySQL); UDP on a TCP port is planned as TCP, as before.
# Anything else is ``Unsupported``: Istio sniffs the protocol.
_HTTP_PROTOCOLS = frozenset({"http", "http2", "http_proxy", "grpc", "grpc-web"})
_TCP_PROTOCOLS = frozenset({"tcp", "tls", "https", "mongo", "mysql", "redis", "udp"})
# ConvertProtocol's Kubernetes-standard appProtocol values (exact, case-sensitive).
_K8S_APP_PROTOCOLS = {
    "kubernetes.io/h2c": Protocol.HTTP,  # HTTP2
    "kubernetes.io/ws": Protocol.HTTP,
    "kubernetes.io/wss": Protocol.TCP,  # HTTPS: TLS the sidecar passes through
}
# pkg/config/kube/conversion.go ``wellKnownPorts`` (SMTP, DNS, MySQL, MongoDB): a Service
# port with one of these numbers and no recognised protocol name is TCP, not sniffed.
_WELL_KNOWN_TCP_PORTS = frozenset({25, 53, 3306, 27017})


def port_protocol(service_port: Mapping[str, Any]) -> Protocol:
    """Istio's protocol selection (pkg/config/kube/conversion.go ``ConvertProtocol``):
    ``appProtocol`` when set - then the port name is not read at all - else the port
    name; either is parsed by its prefix before the first ``-`` (``grpc-web`` whole).
    An unrecognised value means Istio sniffs the protocol (HTTP in our plan, the
    protocol its detection exists for), except on the well-known TCP ports."""
    app = service_port.get("appProtocol")
    text = app if isinstance(app, str) and app else service_port.get("name")
    if isinstance(text, str) and text:
        # Only appProtocol can hold these (a port name cannot contain '/').
        k8s = _K8S_APP_PROTOCOLS.get(text)
        if k8s is not None:
            return k8s
        if text[:8].lower() == "grpc-web":
            return Protocol.HTTP
        prefix = text.split("-", 1)[0].lower()
        if prefix in _HTTP_PROTOCOLS:
            return Protocol.HTTP
        if prefix in _TCP_PROTOCOLS:
            return Protocol.TCP
    if service_port.get("port") in _WELL_KNOWN_TCP_PORTS:
        return Protocol.TCP  # ConvertProtocol: no protocol from the name, a well-known port
    return Protocol.HTTP


def container_ports(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Declared ports of the app containers (the sidecar's own ports excluded)."""
    out: list[Mapping[str, Any]] = []
    for c in spec(pod).get("containers") or ():
        if type(c) is dict and c.get("name") != PROXY_CONTAINER:
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
    if tp is None or tp == "" or (type(tp) is int and tp == 0):
        # core/v1 SetDefaults_Service: an unset, 0 or "" targetPort is the port itself.
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


def service_selector(service: Mapping[str, Any]) -> dict[str, str] | None:
    sel = spec(service).get("selector")
    if not isinstance(sel, dict) or not sel:
        return None
    return {str(k): str(v) for k, v in sel.items()}


def service_ports(service: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    return [p for p in spec(service).get("ports") or [] if isinstance(p, dict)]
