"""What a sidecar client does towards one endpoint - the TLS it sends and whether the
call can work - from the DestinationRule view (``DrTls``), the server's mode and the
endpoint's proxy and labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from jobs.plan.policy.destinationrules import DrTls
from probe.constants import TLS_MODE_LABEL
from probe.model import Expect


class ClientTls:
    ISTIO_MTLS = "istio-mtls"
    PLAINTEXT = "plaintext"
    SIMPLE = "simple-tls"
    MUTUAL = "mutual-tls"
    BLOCKED = "blocked"  # the client's sidecar never sends it on (jobs.plan.policy.sidecar)


class Outcome:
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ClientView:
    """A sidecar client's call to one endpoint: what it sends and whether it can work."""

    tls: str  # ClientTls value
    mtls: bool  # Istio mTLS (the server sees the client's SPIFFE identity)
    outcome: str  # Outcome value
    reason: str


def plaintext_view(why: str, has_proxy: bool, server_mode: Expect) -> ClientView:
    """The client sends plaintext: a sidecar-fronted STRICT port refuses it."""
    if has_proxy and server_mode == Expect.STRICT:
        return ClientView(
            ClientTls.PLAINTEXT,
            False,
            Outcome.FAIL,
            f"{why}: plaintext to a STRICT port, clients get 503",
        )
    return ClientView(ClientTls.PLAINTEXT, False, Outcome.OK, why)


@lru_cache(maxsize=256)  # pure, and called once per edge with few distinct arguments
def client_view(
    dr: DrTls,
    server_mode: Expect,
    has_proxy: bool,
    tls_mode_label: str | None,
    ambient: bool = False,
    identity: str | None = None,
) -> ClientView:
    """Auto-mTLS (mesh ``enableAutoMtls``, default on): mTLS only to endpoints labelled
    ``security.istio.io/tlsMode: istio`` (or captured by ztunnel), and not to a DISABLE
    port; the label decides, not whether a proxy is really there. An explicit
    DestinationRule TLS mode overrides auto-mTLS; with auto-mTLS off and no TLS set the
    client sends plaintext (cluster_tls.go ``buildUpstreamTLSSettings``). A STRICT server
    requires a client certificate chaining to the mesh root (Envoy
    ``require_client_certificate``), so SIMPLE (no certificate) always fails there, and
    MUTUAL with certificates of its own fails unless they are Istio's. ISTIO_MUTUAL
    with ``subjectAltNames`` checks the server's certificate against those names only,
    exactly: a server ``identity`` not among them fails the handshake. ``has_proxy``:
    sidecar or ztunnel."""
    mode = dr.mode
    by = f" ({dr.source})" if dr.source else ""
    if mode is not None and dr.plaintext is not None:
        return plaintext_view(f"{mode}{by}: {dr.plaintext}", has_proxy, server_mode)
    if mode is None:
        if dr.auto_off is not None:
            return plaintext_view(f"no TLS set{by} and {dr.auto_off}", has_proxy, server_mode)
        labelled = tls_mode_label == "istio" or ambient
        if dr.eds_mode is not None:
            # pilot/pkg/xds/endpoints/mtls_checker.go checkMtlsEnabled: a DR mode, even one
            # the port entry hid from the cluster, decides which endpoints get mTLS.
            if not (labelled and dr.eds_mode == "ISTIO_MUTUAL"):
                why = (
                    f"auto-mTLS{by}, but Istio marks endpoints by the top-level tls mode "
                    f"{dr.eds_mode}, so none gets mTLS"
                )
                return plaintext_view(why, has_proxy, server_mode)
            if has_proxy and server_mode == Expect.DISABLE:
                return ClientView(
                    ClientTls.ISTIO_MTLS,
                    True,
                    Outcome.FAIL,
                    f"auto-mTLS{by} marked by the top-level ISTIO_MUTUAL, to a DISABLE port",
                )
        if labelled and (server_mode != Expect.DISABLE or dr.eds_mode is not None):
            if has_proxy:
                return ClientView(ClientTls.ISTIO_MTLS, True, Outcome.OK, "auto-mTLS")
            return ClientView(
                ClientTls.ISTIO_MTLS,
                True,
                Outcome.FAIL,
                f"auto-mTLS: endpoint labelled {TLS_MODE_LABEL}=istio but has no sidecar",
            )
        why = (
            "auto-mTLS: server port is DISABLE"
            if labelled
            else f"auto-mTLS: endpoint not labelled {TLS_MODE_LABEL}=istio"
        )
        return plaintext_view(why, has_proxy, server_mode)
    if mode == "ISTIO_MUTUAL":
        if not has_proxy:
            return ClientView(
                ClientTls.ISTIO_MTLS,
                True,
                Outcome.FAIL,
                f"ISTIO_MUTUAL{by} to a workload without a sidecar: TLS to a plaintext app fails",
            )
        if server_mode == Expect.DISABLE:
            return ClientView(
                ClientTls.ISTIO_MTLS,
                True,
                Outcome.FAIL,
                f"ISTIO_MUTUAL{by} to a DISABLE port: the server takes plaintext only",
            )
        if dr.sans is not None and identity is not None and identity not in dr.sans:
            return ClientView(
                ClientTls.ISTIO_MTLS,
                True,
                Outcome.FAIL,
                f"ISTIO_MUTUAL{by} accepts only the server names {', '.join(dr.sans)[:200]}, "
                f"not {identity}: the client's SAN check fails, clients get 503",
            )
        return ClientView(ClientTls.ISTIO_MTLS, True, Outcome.OK, f"ISTIO_MUTUAL{by}")
    if mode == "DISABLE":
        return plaintext_view(f"DISABLE{by}", has_proxy, server_mode)
    kind = ClientTls.SIMPLE if mode == "SIMPLE" else ClientTls.MUTUAL
    strict = has_proxy and server_mode == Expect.STRICT
    if strict and mode == "SIMPLE":
        return ClientView(
            kind,
            False,
            Outcome.FAIL,
            f"SIMPLE{by} sends no client certificate and a STRICT port requires one: "
            "the handshake fails, clients get 503",
        )
    if strict and not dr.istio_certs:
        return ClientView(
            kind,
            False,
            Outcome.FAIL,
            f"MUTUAL{by} presents its own certificate, not one from the mesh CA, and a "
            "STRICT port accepts only mesh certificates: the handshake fails, clients get 503",
        )
    return ClientView(
        kind,
        False,
        Outcome.UNKNOWN,
        f"{mode}{by}: TLS with non-mesh certificates; a sidecar server rejects it unless "
        "its certificates come from the mesh CA",
    )
