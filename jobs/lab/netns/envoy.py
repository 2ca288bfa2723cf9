"""Istio-shaped sidecar bootstraps for pods that are network namespaces (pure).

The loopback lab's bootstraps (jobs.lab.envoy_config) are the source of the TLS, the
filter chains and the clusters; this module reshapes them into what Istio writes for a
pod behind capture (pilot/pkg/networking/core: listener.go, listener_inbound.go):

* ``virtualInbound`` on 15006: listener filters ``original_dst``, ``tls_inspector``,
  ``http_inspector`` (off on tcp ports); the loopback lab's per-port chains, each now
  also matching its ``destination_port`` (the port the caller dialled, recovered from
  SO_ORIGINAL_DST); inbound clusters forward to the pod IP from 127.0.0.6.
* ``virtualOutbound`` on 15001 with ``use_original_dst``: the connection is handed to
  the listener for its original destination - ``0.0.0.0_<port>`` (HTTP, routes by Host)
  or ``<service IP>_<port>`` (tcp), neither bound - or passes through unchanged.
* 15021 ``/healthz/ready`` and 15090 ``/stats/prometheus``. pilot-agent's 15020
  (``/quitquitquit``) is a process of its own in probe pods (jobs.lab.netns.agent).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from jobs.lab.envoy_config import (
    HTTP_INSPECTOR,
    ROUTER,
    TLS_INSPECTOR,
    XFCC,
    outbound_cluster_name,
    probe_bootstrap,
    service_domains,
    workload_bootstrap,
)
from jobs.lab.envoy_config import TYPE_URL as _T
from jobs.lab.meshca import CertFiles, MeshCerts
from jobs.lab.netns.capture import INBOUND_PASSTHROUGH_SOURCE, INBOUND_PORT, OUTBOUND_PORT
from jobs.lab.spec import PodSpec, Upstream

Json = dict[str, Any]
ADMIN_PORT = 15000
HEALTH_PORT = 15021
PROMETHEUS_PORT = 15090
ADMIN_CLUSTER = "envoy_admin"
PASSTHROUGH = "PassthroughCluster"
_HCM = _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ORIGINAL_DST = {
    "name": "envoy.filters.listener.original_dst",
    "typed_config": {"@type": _T + "extensions.filters.listener.original_dst.v3.OriginalDst"},
}


def _addr(ip: str, port: int) -> Json:
    return {"socket_address": {"address": ip, "port_value": port}}


def _tcp_proxy(stat: str, cluster: str) -> Json:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": _T + "extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat,
            "cluster": cluster,
        },
    }


def _hcm(stat: str, vhosts: list[Json], **extra: Any) -> Json:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": stat,
            "route_config": {"name": stat, "virtual_hosts": vhosts},
            "http_filters": [ROUTER],
            **extra,
        },
    }


def _admin_route(path: str, rewrite: str | None = None) -> Json:
    route: Json = {"cluster": ADMIN_CLUSTER, "timeout": "5s"}
    if rewrite is not None:
        route["prefix_rewrite"] = rewrite
    return {"match": {"path": path}, "route": route}


def _agent_listeners() -> list[Json]:
    """What a pod's sidecar serves besides traffic: readiness (Istio routes 15021 to
    pilot-agent, which asks Envoy) and Prometheus stats."""

    def listener(name: str, ip: str, port: int, routes: list[Json]) -> Json:
        vhost = {"name": name, "domains": ["*"], "routes": routes}
        return {
            "name": name,
            "address": _addr(ip, port),
            "filter_chains": [{"filters": [_hcm(name, [vhost])]}],
        }

    return [
        listener(
            "health", "0.0.0.0", HEALTH_PORT, [_admin_route("/healthz/ready", rewrite="/ready")]
        ),
        listener(
            "prometheus",
            "0.0.0.0",
            PROMETHEUS_PORT,
            [_admin_route("/stats/prometheus")],
        ),
    ]


def _admin_cluster() -> Json:
    return {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _addr("127.0.0.1", ADMIN_PORT)}}]}
            ],
        },
    }


def _passthrough_cluster() -> Json:
    return {
        "name": PASSTHROUGH,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
    }


def _port_of(listener: Json) -> int:
    return int(listener["address"]["socket_address"]["port_value"])


def _is_http(listener: Json) -> bool:
    return any(
        f.get("name") == HTTP_INSPECTOR["name"] for f in listener.get("listener_filters", [])
    )


def virtual_inbound(per_port: Sequence[Json]) -> Json:
    """One listener on 15006 from per-(pod IP, port) listeners: their chains, each
    matched on the original destination port as well."""
    chains: list[Json] = []
    tcp_ports: list[int] = []
    for lst in per_port:
        port = _port_of(lst)
        if not _is_http(lst):
            tcp_ports.append(port)
        for chain in lst["filter_chains"]:
            c = copy.deepcopy(chain)
            c["filter_chain_match"] = {**c.get("filter_chain_match", {}), "destination_port": port}
            chains.append(c)
    http_inspector: Json = copy.deepcopy(HTTP_INSPECTOR)  # gets filter_disabled below
    if tcp_ports:
        # As Istio does on ports it knows are not HTTP: no sniffing there.
        rules: list[Json] = [
            {"destination_port_range": {"start": p, "end": p + 1}} for p in sorted(tcp_ports)
        ]
        http_inspector["filter_disabled"] = (
            rules[0] if len(rules) == 1 else {"or_match": {"rules": rules}}
        )
    return {
        "name": "virtualInbound",
        "address": _addr("0.0.0.0", INBOUND_PORT),
        "listener_filters": [_ORIGINAL_DST, TLS_INSPECTOR, http_inspector],
        "filter_chains": chains,
    }


def _bootstrap(node: str, listeners: list[Json], clusters: list[Json], secrets: list[Json]) -> Json:
    return {
        "node": {"id": node, "cluster": "mtlsprobe-lab"},
        "admin": {"address": _addr("127.0.0.1", ADMIN_PORT)},
        "static_resources": {
            "listeners": listeners + _agent_listeners(),
            "clusters": [*clusters, _admin_cluster()],
            "secrets": secrets,
        },
    }


def workload_sidecar(pod: PodSpec, certs: MeshCerts, trust_domain: str) -> Json:
    """The sidecar of one workload pod (its namespace's only Envoy)."""
    base = workload_bootstrap([pod], certs, trust_domain, ("127.0.0.1", ADMIN_PORT), pod.key)
    res = base["static_resources"]
    clusters = copy.deepcopy(res["clusters"])
    for c in clusters:
        # Istio's inbound clusters dial the pod IP from 127.0.0.6 (exempt from capture).
        c["upstream_bind_config"] = {
            "source_address": {"address": INBOUND_PASSTHROUGH_SOURCE, "port_value": 0}
        }
    listeners = [virtual_inbound(res["listeners"])] if res["listeners"] else []
    return _bootstrap(pod.key, listeners, clusters, res["secrets"])


def _outbound_vhost(up: Upstream, vip: str) -> Json:
    vhost: Json = {
        "name": f"{up.host}:{up.port}",
        "domains": [*service_domains(up.host, up.port), f"{vip}:{up.port}"]
        + ([vip] if up.port == 80 else []),
        "routes": [
            {
                "match": {"prefix": "/"},
                "route": {"cluster": outbound_cluster_name(up), "timeout": "10s"},
            }
        ],
    }
    if not up.forward_client_xfcc:
        # Istio's outbound leaves XFCC at Envoy's default SANITIZE (per route here, so
        # one lab workload can forward it: XfccMode.FORWARD_UNTRUSTED).
        vhost["request_headers_to_remove"] = [XFCC]
    return vhost


# Istio's ``allow_any`` virtual host (outboundTrafficPolicy ALLOW_ANY, the default): a
# request for a host no Service names, e.g. a pod IP, goes on to its original destination
# in plaintext, as it does from a real pod (the wire check's plaintext control call).
_ALLOW_ANY_HOST = {
    "name": "allow_any",
    "domains": ["*"],
    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": PASSTHROUGH}}],
}


def outbound_listeners(upstreams: Sequence[Upstream], vips: Mapping[str, str]) -> list[Json]:
    """``virtualOutbound`` and the per-port listeners it hands connections to."""
    http_by_port: dict[int, list[Upstream]] = defaultdict(list)
    out: list[Json] = []
    for up in upstreams:
        if up.http:
            http_by_port[up.port].append(up)
            continue
        vip = vips[up.host]
        out.append(
            {
                "name": f"{vip}_{up.port}",
                "address": _addr(vip, up.port),
                "bind_to_port": False,
                "filter_chains": [
                    {"filters": [_tcp_proxy(outbound_cluster_name(up), outbound_cluster_name(up))]}
                ],
            }
        )
    for port, ups in sorted(http_by_port.items()):
        vhosts = [_outbound_vhost(up, vips[up.host]) for up in ups] + [_ALLOW_ANY_HOST]
        hcm = _hcm(
            str(port),
            vhosts,
            codec_type="AUTO",
            server_name="istio-envoy",
            forward_client_cert_details="ALWAYS_FORWARD_ONLY",
        )
        out.append(
            {
                "name": f"0.0.0.0_{port}",
                "address": _addr("0.0.0.0", port),
                "bind_to_port": False,
                "filter_chains": [{"filters": [hcm]}],
            }
        )
    out.insert(
        0,
        {
            "name": "virtualOutbound",
            "address": _addr("0.0.0.0", OUTBOUND_PORT),
            "use_original_dst": True,
            "filter_chains": [{"filters": [_tcp_proxy(PASSTHROUGH, PASSTHROUGH)]}],
        },
    )
    return out


def probe_sidecar(
    upstreams: Sequence[Upstream],
    vips: Mapping[str, str],
    certs: MeshCerts,
    trust_domain: str,
    cert: CertFiles | None = None,
) -> Json:
    """The probe pod's sidecar: transparent outbound, its own (empty) inbound; ``cert``:
    another probe identity's certificate (default: the probe's)."""
    base = probe_bootstrap(
        upstreams,
        certs,
        ("127.0.0.1", OUTBOUND_PORT),
        ("127.0.0.1", ADMIN_PORT),
        "probe-sidecar",
        ("0.0.0.0", INBOUND_PORT),
        trust_domain,
        cert,
    )
    res = base["static_resources"]
    inbound = next(lst for lst in res["listeners"] if lst["name"] == "virtualInbound")
    inbound = copy.deepcopy(inbound)
    inbound["listener_filters"] = [_ORIGINAL_DST, *inbound.get("listener_filters", [])]
    listeners = [*outbound_listeners(upstreams, vips), inbound]
    return _bootstrap(
        "probe-sidecar", listeners, [*res["clusters"], _passthrough_cluster()], res["secrets"]
    )
