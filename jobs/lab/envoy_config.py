"""Envoy bootstraps shaped like the sidecars Istio configures (docs/istio-behaviour.md).

Pure functions from the lab's spec to JSON-ready dicts. Two kinds of Envoy:

* workload sidecars: many pods per process, one inbound listener per (pod IP,
  target port) with Istio's filter chains for STRICT / PERMISSIVE / DISABLE and
  each pod's own certificate;
* the probe's sidecar: an HTTP proxy listener routing by Host to one cluster per
  service port, with ISTIO_MUTUAL upstream TLS, Istio's SNI and exact SAN checks,
  and auto-mTLS per endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from jobs.lab.meshca import CertFiles, MeshCerts
from jobs.lab.spec import InboundPort, PodSpec, ServerMode, Upstream
from probe.spiffe import trust_domain_prefix

Json = dict[str, Any]
TYPE_URL = "type.googleapis.com/envoy."  # prefix of every typed_config @type
_T = TYPE_URL

# ALPNs an Istio client sidecar offers; a PERMISSIVE inbound's TLS chains match on these.
ISTIO_MTLS_ALPNS = ("istio-http/1.0", "istio-http/1.1", "istio-h2", "istio-peer-exchange", "istio")
UPSTREAM_HTTP_ALPNS = ("istio-http/1.1", "istio", "http/1.1")
UPSTREAM_TCP_ALPNS = ("istio-peer-exchange", "istio")
ROOT_SECRET = "ROOTCA"
PROBE_SECRET = "default"
XFCC = "x-forwarded-client-cert"

TLS_INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {"@type": _T + "extensions.filters.listener.tls_inspector.v3.TlsInspector"},
}
HTTP_INSPECTOR = {
    "name": "envoy.filters.listener.http_inspector",
    "typed_config": {"@type": _T + "extensions.filters.listener.http_inspector.v3.HttpInspector"},
}
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": _T + "extensions.filters.http.router.v3.Router"},
}
_RAW_BUFFER = {
    "name": "envoy.transport_sockets.raw_buffer",
    "typed_config": {"@type": _T + "extensions.transport_sockets.raw_buffer.v3.RawBuffer"},
}
# Idle keep-alive connections to the app are closed soon: hundreds of inbound clusters
# share a few app processes, whose workers each serve one connection at a time.
_APP_HTTP_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": _T + "extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"idle_timeout": "2s"},
        "explicit_http_config": {"http_protocol_options": {}},
    }
}
_TLS_PARAMS = {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"}


# The outbound catch-all: a request for a host the lab does not serve gets a 502 from the
# sidecar, as a mesh without that service would answer (not a connection to anywhere).
UNKNOWN_HOST: dict[str, object] = {
    "name": "unknown",
    "domains": ["*"],
    "routes": [
        {
            "match": {"prefix": "/"},
            "direct_response": {
                "status": 502,
                "body": {"inline_string": "no such service in the lab mesh\n"},
            },
        }
    ],
}


def _addr(ip: str, port: int) -> Json:
    return {"socket_address": {"address": ip, "port_value": port}}


def _secret_cert(name: str, files: CertFiles) -> Json:
    return {
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"filename": str(files.chain)},
            "private_key": {"filename": str(files.key)},
        },
    }


def _secret_root(certs: MeshCerts) -> Json:
    return {
        "name": ROOT_SECRET,
        "validation_context": {"trusted_ca": {"filename": str(certs.root)}},
    }


def _validation(sans: Json) -> Json:
    return {
        "default_validation_context": {"match_typed_subject_alt_names": [sans]},
        "validation_context_sds_secret_config": {"name": ROOT_SECRET},
    }


def pod_secret_name(pod: PodSpec) -> str:
    return f"pod~{pod.namespace}~{pod.name}"


def _downstream_tls(pod: PodSpec, trust_domain: str, http: bool) -> Json:
    common: Json = {
        "tls_params": _TLS_PARAMS,
        "tls_certificate_sds_secret_configs": [{"name": pod_secret_name(pod)}],
        # Inbound checks only that the client is in the mesh's trust domain.
        "combined_validation_context": _validation(
            {"san_type": "URI", "matcher": {"prefix": trust_domain_prefix(trust_domain)}}
        ),
    }
    if http:
        common["alpn_protocols"] = ["h2", "http/1.1"]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _T + "extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": common,
        },
    }


def _inbound_cluster_name(pod: PodSpec, port: int) -> str:
    return f"inbound|{port}||{pod.key}"


def _inbound_filters(pod: PodSpec, port: InboundPort, stat: str) -> list[Json]:
    cluster = _inbound_cluster_name(pod, port.port)
    # AuthorizationPolicies: RBAC filters before the terminal filter (tcp) or the router.
    rbac: list[Json] = json.loads(port.rbac) if port.rbac else []
    if not port.http:
        return [
            *rbac,
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": _T + "extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": stat,
                    "cluster": cluster,
                },
            },
        ]
    return [
        {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": _T
                + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat,
                "codec_type": "AUTO",
                "server_name": "istio-envoy",
                "forward_client_cert_details": "APPEND_FORWARD",
                "set_current_client_cert_details": {"subject": True, "uri": True, "dns": True},
                "route_config": {
                    "name": cluster,
                    "virtual_hosts": [
                        {
                            "name": "inbound",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                        }
                    ],
                },
                "http_filters": [*rbac, ROUTER],
            },
        }
    ]


def _inbound_listener(pod: PodSpec, port: InboundPort, trust_domain: str) -> Json:
    stat = f"inbound_{pod.namespace}_{pod.name}_{port.port}"
    filters = _inbound_filters(pod, port, stat)
    chains: list[Json] = []
    if port.mode is ServerMode.STRICT:
        chains.append(
            {
                "filter_chain_match": {"transport_protocol": "tls"},
                "transport_socket": _downstream_tls(pod, trust_domain, port.http),
                "filters": filters,
            }
        )
    elif port.mode is ServerMode.PERMISSIVE:
        chains.append(
            {
                "filter_chain_match": {
                    "transport_protocol": "tls",
                    "application_protocols": list(ISTIO_MTLS_ALPNS),
                },
                "transport_socket": _downstream_tls(pod, trust_domain, port.http),
                "filters": filters,
            }
        )
        chains.append(
            {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": filters}
        )
        # TLS without an Istio ALPN is not the mesh's: pass it to the app untouched.
        chains.append(
            {
                "filter_chain_match": {"transport_protocol": "tls"},
                "filters": _inbound_filters(
                    pod, InboundPort(port.port, http=False, mode=port.mode), stat + "_passthrough"
                ),
            }
        )
    else:
        chains.append({"filters": filters})
    listener_filters = [TLS_INSPECTOR]
    if port.http:
        listener_filters.append(HTTP_INSPECTOR)
    return {
        "name": f"{pod.ip}_{port.port}",
        "address": _addr(pod.ip, port.port),
        "listener_filters": listener_filters,
        "filter_chains": chains,
    }


def _static_cluster(name: str, endpoints: list[Json], **extra: Any) -> Json:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        **extra,
    }


def _admin(ip: str, port: int) -> Json:
    return {"address": _addr(ip, port)}


def workload_bootstrap(
    pods: Sequence[PodSpec], certs: MeshCerts, trust_domain: str, admin: tuple[str, int], node: str
) -> Json:
    """One Envoy standing in for the sidecars of ``pods`` (those with a sidecar)."""
    listeners: list[Json] = []
    clusters: list[Json] = []
    secrets: list[Json] = [_secret_root(certs)]
    for pod in pods:
        if not pod.sidecar:
            continue
        secrets.append(_secret_cert(pod_secret_name(pod), certs.pods[pod.key]))
        for port in pod.ports:
            listeners.append(_inbound_listener(pod, port, trust_domain))
            extra: Json = (
                {"typed_extension_protocol_options": _APP_HTTP_OPTIONS} if port.http else {}
            )
            clusters.append(
                _static_cluster(
                    _inbound_cluster_name(pod, port.port),
                    [{"endpoint": {"address": _addr(pod.app_ip, port.port)}}],
                    **extra,
                )
            )
    return {
        "node": {"id": node, "cluster": "mtlsprobe-lab"},
        "admin": _admin(*admin),
        "static_resources": {"listeners": listeners, "clusters": clusters, "secrets": secrets},
    }


def outbound_cluster_name(up: Upstream) -> str:
    """Istio's name, so the mesh check finds this cluster's TLS and connection counters
    (``cluster.<name>.ssl.handshake`` …, probe.clusterstats) here as in a pod."""
    return f"outbound|{up.port}||{up.host}"


def _upstream_tls(up: Upstream) -> Json:
    alpns = UPSTREAM_HTTP_ALPNS if up.http else UPSTREAM_TCP_ALPNS
    sans = [{"san_type": "URI", "matcher": {"exact": san}} for san in up.sans]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": f"outbound_.{up.port}_._.{up.host}",
            "common_tls_context": {
                "tls_params": _TLS_PARAMS,
                "alpn_protocols": list(alpns),
                "tls_certificate_sds_secret_configs": [{"name": PROBE_SECRET}],
                "combined_validation_context": {
                    "default_validation_context": {"match_typed_subject_alt_names": sans},
                    "validation_context_sds_secret_config": {"name": ROOT_SECRET},
                },
            },
        },
    }


def _outbound_cluster(up: Upstream) -> Json:
    endpoints: list[Json] = []
    for ep in up.endpoints:
        entry: Json = {"endpoint": {"address": _addr(ep.ip, ep.port)}}
        if ep.mtls:
            # Istio marks endpoints whose pod has the tlsMode=istio label; auto-mTLS keys on it.
            entry["metadata"] = {
                "filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}
            }
        endpoints.append(entry)
    return _static_cluster(
        outbound_cluster_name(up),
        endpoints,
        transport_socket_matches=[
            {
                "name": "tlsMode-istio",
                "match": {"tlsMode": "istio"},
                "transport_socket": _upstream_tls(up),
            },
            {"name": "tlsMode-disabled", "match": {}, "transport_socket": _RAW_BUFFER},
        ],
    )


def service_domains(host: str, port: int) -> list[str]:
    """Host header forms a client may use for ``svc.ns.svc.cluster.local:port``."""
    parts = host.split(".")
    short = [".".join(parts[:i]) for i in (2, 3)] if len(parts) >= 3 else []
    names = [host, *short]
    out = [f"{n}:{port}" for n in names]
    if port == 80:
        out += names
    return out


def _virtual_inbound(address: tuple[str, int], trust_domain: str) -> Json:
    """The probe pod's own inbound (Istio's virtualInbound, 15006): it serves nothing,
    but like every sidecar it holds the workload certificate in a TLS context, which
    is what the admin ``/certs`` shows."""
    common: Json = {
        "tls_params": _TLS_PARAMS,
        "tls_certificate_sds_secret_configs": [{"name": PROBE_SECRET}],
        "combined_validation_context": _validation(
            {"san_type": "URI", "matcher": {"prefix": trust_domain_prefix(trust_domain)}}
        ),
    }
    hcm: Json = {
        "@type": _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "virtual_inbound",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "none",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}],
                }
            ]
        },
        "http_filters": [ROUTER],
    }
    return {
        "name": "virtualInbound",
        "address": _addr(*address),
        "listener_filters": [TLS_INSPECTOR],
        "filter_chains": [
            {
                "filter_chain_match": {"transport_protocol": "tls"},
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": _T + "extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": True,
                        "common_tls_context": common,
                    },
                },
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
            }
        ],
    }


def probe_bootstrap(
    upstreams: Sequence[Upstream],
    certs: MeshCerts,
    listen: tuple[str, int],
    admin: tuple[str, int],
    node: str,
    inbound: tuple[str, int],
    trust_domain: str,
    cert: CertFiles | None = None,
) -> Json:
    """The probe pod's sidecar: an explicit HTTP proxy (the lab has no iptables capture).
    ``cert``: another probe identity's certificate (default: the probe's)."""
    vhosts: list[Json] = []
    clusters: list[Json] = []
    for up in upstreams:
        if up.http:
            route: Json = {
                "match": {"prefix": "/"},
                "route": {"cluster": outbound_cluster_name(up), "timeout": "10s"},
            }
        else:
            # tcp service ports: an HTTP CONNECT tunnel stands in for iptables capture.
            route = {
                "match": {"connect_matcher": {}},
                "route": {
                    "cluster": outbound_cluster_name(up),
                    "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                },
            }
        vhost: Json = {
            "name": f"{up.host}:{up.port}",
            "domains": service_domains(up.host, up.port),
            "routes": [route],
        }
        if not up.forward_client_xfcc:
            # Istio's outbound leaves XFCC at Envoy's default SANITIZE; done per route
            # here so one lab workload can forward it (see XfccMode.FORWARD_UNTRUSTED).
            vhost["request_headers_to_remove"] = [XFCC]
        vhosts.append(vhost)
        clusters.append(_outbound_cluster(up))
    vhosts.append(UNKNOWN_HOST)
    hcm: Json = {
        "@type": _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "outbound",
        "codec_type": "AUTO",
        "server_name": "istio-envoy",
        "forward_client_cert_details": "ALWAYS_FORWARD_ONLY",
        "route_config": {"name": "outbound", "virtual_hosts": vhosts},
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "http_filters": [ROUTER],
    }
    listener = {
        "name": "outbound",
        "address": _addr(*listen),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    return {
        "node": {"id": node, "cluster": "mtlsprobe-lab"},
        "admin": _admin(*admin),
        "static_resources": {
            "listeners": [listener, _virtual_inbound(inbound, trust_domain)],
            "clusters": clusters,
            "secrets": [_secret_cert(PROBE_SECRET, cert or certs.probe), _secret_root(certs)],
        },
    }
