"""Builders for Kubernetes/Istio objects in the shapes the API server stores them."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]
T0 = "2026-01-01T00:00:00Z"


def namespace(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels or {}, "creationTimestamp": T0},
    }


def pod(
    name: str,
    ns: str,
    labels: dict[str, str] | None = None,
    *,
    ip: str | None = "10.0.0.1",
    sa: str = "default",
    ports: list[tuple[str, int]] | None = None,
    sidecar: bool = True,
    annotations: dict[str, str] | None = None,
    ready: bool = True,
) -> Obj:
    """A pod; ``sidecar=True`` makes it look injected (status annotation, tlsMode label,
    istio-proxy container), as the API server returns injected pods."""
    lbl = dict(labels or {})
    ann = dict(annotations or {})
    containers: list[Obj] = [
        {
            "name": "app",
            "image": "app",
            "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in (ports or [])],
        }
    ]
    if sidecar:
        lbl["security.istio.io/tlsMode"] = "istio"
        ann["sidecar.istio.io/status"] = '{"containers":["istio-proxy"]}'
        containers.append({"name": "istio-proxy", "image": "proxyv2"})
    status: Obj = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": lbl,
            "annotations": ann,
            "creationTimestamp": T0,
        },
        "spec": {"serviceAccountName": sa, "containers": containers},
        "status": status,
    }


def service(
    name: str,
    ns: str,
    selector: dict[str, str] | None,
    ports: list[Obj],
) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": T0},
        "spec": {"selector": selector, "ports": ports, "type": "ClusterIP"},
    }


def sport(port: int, target: int | str | None = None, name: str = "http", **kw: Any) -> Obj:
    out: Obj = {"name": name, "port": port, "protocol": "TCP", **kw}
    if target is not None:
        out["targetPort"] = target
    return out


def peer_auth(
    name: str,
    ns: str,
    mode: str | None = None,
    *,
    selector: dict[str, str] | None = None,
    ports: dict[Any, str | None] | None = None,
    created: str = T0,
    version: str = "v1",
) -> Obj:
    spec: Obj = {}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    if ports is not None:
        spec["portLevelMtls"] = {k: ({"mode": v} if v else {}) for k, v in ports.items()}
    return {
        "apiVersion": f"security.istio.io/{version}",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
        "spec": spec,
    }


def dest_rule(
    name: str,
    ns: str,
    host: str,
    mode: str | None = None,
    *,
    port_modes: dict[int, str] | None = None,
    export_to: list[str] | None = None,
    created: str = T0,
) -> Obj:
    tp: Obj = {}
    if mode:
        tp["tls"] = {"mode": mode}
    if port_modes:
        tp["portLevelSettings"] = [
            {"port": {"number": p}, "tls": {"mode": m}} for p, m in port_modes.items()
        ]
    spec: Obj = {"host": host, "trafficPolicy": tp}
    if export_to is not None:
        spec["exportTo"] = export_to
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
        "spec": spec,
    }


def endpoint_slice(
    name: str,
    ns: str,
    service_name: str,
    endpoints: list[tuple[str, str, bool]],
    ports: list[tuple[str, int]],
) -> Obj:
    """``endpoints``: (ip, pod name, ready); ``ports``: (service port name, target port)."""
    return slice_of(
        name,
        ns,
        service_name,
        [
            {
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod_name},
            }
            for ip, pod_name, ready in endpoints
        ],
        ports,
    )


def slice_of(
    name: str,
    ns: str,
    service_name: str,
    endpoints: list[Obj],
    ports: list[tuple[str, int]],
    *,
    address_type: str = "IPv4",
    created: str | None = T0,
) -> Obj:
    """An EndpointSlice of ``endpoints`` as written (any shape); ``created=None``
    leaves out the creationTimestamp."""
    metadata: Obj = {
        "name": name,
        "namespace": ns,
        "labels": {"kubernetes.io/service-name": service_name},
    }
    if created is not None:
        metadata["creationTimestamp"] = created
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
    }


def configmap(name: str, ns: str, data: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": T0},
        "data": data,
    }


FAKE_ROOT_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def small_mesh() -> list[Obj]:
    """A cluster wide-STRICT from istio-system, with an injected ``shop`` (Service cart,
    three pods), a PERMISSIVE ``legacy`` without sidecars (Service rep) and kube-dns."""
    objs = [
        namespace("istio-system"),
        namespace("kube-system"),
        namespace("shop", {"istio-injection": "enabled"}),
        namespace("legacy"),
        configmap("istio", "istio-system", {"mesh": "trustDomain: example.org\n"}),
        configmap("istio-ca-root-cert", "istio-system", {"root-cert.pem": FAKE_ROOT_PEM}),
        peer_auth("default", "istio-system", "STRICT"),
        peer_auth("default", "legacy", "PERMISSIVE"),
        pod("coredns", "kube-system", {"k8s-app": "dns"}, ip="10.0.9.1", sidecar=False),
        service("dns", "kube-system", {"k8s-app": "dns"}, [sport(53, 53, name="dns")]),
    ]
    objs += [
        pod(f"cart-{i}", "shop", {"app": "cart"}, ip=f"10.0.1.{i + 1}", sa="cart") for i in range(3)
    ]
    objs.append(service("cart", "shop", {"app": "cart"}, [sport(80, 8080)]))
    objs.append(pod("rep", "legacy", {"app": "rep"}, ip="10.0.2.1", sa="rep", sidecar=False))
    objs.append(service("rep", "legacy", {"app": "rep"}, [sport(8080, 8080)]))
    return objs


def echo_service(port: int, ips: list[str]) -> list[Obj]:
    """Service ns-a/echo on ``port`` backed by sidecar-less pods ``echo-<i>`` at
    ``ips``, with its EndpointSlice."""
    pods = [
        pod(f"echo-{i}", "ns-a", {"app": "echo"}, ip=ip, sidecar=False, ports=[("http", port)])
        for i, ip in enumerate(ips)
    ]
    endpoints = [(ip, f"echo-{i}", True) for i, ip in enumerate(ips)]
    return [
        service("echo", "ns-a", {"app": "echo"}, [sport(80, port)]),
        *pods,
        endpoint_slice("echo-x", "ns-a", "echo", endpoints, [("http", port)]),
    ]
