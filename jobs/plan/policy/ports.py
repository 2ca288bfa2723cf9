"""Service and container ports as Istio reads them: the protocol it selects for a
Service port, and the pod port a Service port sends to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jobs.plan.fields import spec
from probe.constants import PROXY_CONTAINER
from probe.model import Protocol

_HTTP_PROTOCOLS = ("http", "http2", "grpc", "grpc-web", "h2c")
_TCP_PROTOCOLS = ("tcp", "tls", "https", "mongo", "mysql", "redis", "udp")
_APP_PROTOCOL_HTTP = {"http", "http2", "grpc", "grpc-web", "kubernetes.io/h2c", "kubernetes.io/ws"}
# pkg/config/kube/conversion.go ``wellKnownPorts`` (SMTP, DNS, MySQL, MongoDB): a Service
# port with one of these numbers and no recognised protocol name is TCP, not sniffed.
_WELL_KNOWN_TCP_PORTS = frozenset({25, 53, 3306, 27017})


def port_protocol(service_port: Mapping[str, Any]) -> Protocol:
    """Istio's explicit protocol selection: ``appProtocol``, else the port name's prefix
    (``<protocol>[-suffix]``), else TCP on the well-known ports Istio never sniffs
    (pkg/config/kube/conversion.go ``ConvertProtocol``). Other unnamed ports are
    sniffed by Istio; we plan them as HTTP, the protocol its detection exists for."""
    app = service_port.get("appProtocol")
    if isinstance(app, str) and app:
        a = app.lower()
        return Protocol.HTTP if a in _APP_PROTOCOL_HTTP else Protocol.TCP
    port_name = service_port.get("name")
    if isinstance(port_name, str) and port_name:
        prefix = port_name.lower().split("-", 1)[0]
        if port_name.lower().startswith("grpc-web"):
            return Protocol.HTTP
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
    if tp is None:
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
