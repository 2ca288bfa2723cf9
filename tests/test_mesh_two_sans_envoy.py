"""A server sidecar whose certificate carries two URI SANs, on real Envoy: Envoy writes
one ``By=`` per URI SAN into the element it appends, so the trusted element names two
identities and the mesh check fails it (not an X.509-SVID), even though one of them is
the expected one. The client side is a second listener of the same Envoy acting as the
probe's sidecar (explicit HTTP proxy, Istio-named outbound cluster, upstream mTLS)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.lab.addresses import acquire_slot
from probe.checks.base import RunContext, Settings
from probe.checks.mesh import MeshCheck
from probe.checks.xfcc_spoof import XfccSpoofCheck
from probe.engine import run_checks
from probe.model import Endpoint, Expect, Source, Target, TargetsFile
from probe.pki import CertificateAuthority
from probe.reflect import App
from probe.results import Verdict
from tests.reflect_apps import handler, serving
from tests.strict_envoy import envoy_running

pytestmark = pytest.mark.envoy

TD = "cluster.local"
SRC = f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe"
ECHO = f"spiffe://{TD}/ns/ns-a/sa/echo"
OTHER = f"spiffe://{TD}/ns/ns-a/sa/other"
HOST = "echo.ns-a.svc.cluster.local"
_T = "type.googleapis.com/envoy.extensions."
_ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": _T + "filters.http.router.v3.Router"},
}


def _addr(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def _hcm(stat: str, cluster: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _T + "filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": stat,
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                    }
                ]
            },
            "http_filters": [_ROUTER],
            **extra,
        },
    }


def _common(cert: Path, key: Path, root: Path) -> dict[str, Any]:
    return {
        "tls_certificates": [
            {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
        ],
        "validation_context": {"trusted_ca": {"filename": str(root)}},
    }


@contextlib.contextmanager
def two_san_mesh(tmp_path: Path, app: tuple[str, int]) -> Iterator[str]:
    ca = CertificateAuthority.create_root(TD, key_type="ec")
    files: dict[str, Path] = {}
    for name, issued in (
        ("server", ca.issue([ECHO, OTHER], key_type="ec")),
        ("client", ca.issue_workload(SRC, key_type="ec")),
    ):
        files[name + ".crt"] = tmp_path / f"{name}.crt"
        files[name + ".key"] = tmp_path / f"{name}.key"
        files[name + ".crt"].write_bytes(issued.chain_pem())
        files[name + ".key"].write_bytes(issued.key_pem())
    root = tmp_path / "root.pem"
    root.write_bytes(ca.root_pem())
    slot = acquire_slot()
    try:
        server = Endpoint(slot.pod_ip(0), 8080)
        proxy = Endpoint(slot.control_ip, 15001)
        admin = Endpoint(slot.control_ip, 15098)
        outbound = f"outbound|8080||{HOST}"
        server_tls = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _T + "transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": _common(files["server.crt"], files["server.key"], root),
            },
        }
        client_tls = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _T + "transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": _common(files["client.crt"], files["client.key"], root),
            },
        }
        config = {
            "admin": {"address": _addr(admin.host, admin.port)},
            "static_resources": {
                "listeners": [
                    {
                        "name": "inbound",
                        "address": _addr(server.host, server.port),
                        "filter_chains": [
                            {
                                "transport_socket": server_tls,
                                "filters": [
                                    _hcm(
                                        "inbound",
                                        "app",
                                        forward_client_cert_details="APPEND_FORWARD",
                                        set_current_client_cert_details={
                                            "subject": True,
                                            "uri": True,
                                            "dns": True,
                                        },
                                    )
                                ],
                            }
                        ],
                    },
                    {
                        "name": "outbound",
                        "address": _addr(proxy.host, proxy.port),
                        "filter_chains": [{"filters": [_hcm("outbound", outbound)]}],
                    },
                ],
                "clusters": [
                    {
                        "name": name,
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        "load_assignment": {
                            "cluster_name": name,
                            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr}}]}],
                        },
                        **extra,
                    }
                    for name, addr, extra in (
                        ("app", _addr(*app), {}),
                        (
                            outbound,
                            _addr(server.host, server.port),
                            {"transport_socket": client_tls},
                        ),
                    )
                ],
            },
        }
        with envoy_running(config, admin, slot.base_id(14), tmp_path):
            yield f"http://{proxy}"
    finally:
        slot.release()


def test_two_uri_sans_on_the_server_fail_mesh(tmp_path: Path) -> None:
    with serving(handler(App.HTTPBIN)) as app, two_san_mesh(tmp_path, app) as proxy:
        target = Target("ns-a/echo", HOST, 8080, Expect.STRICT, identity=ECHO, echo=True)
        tf = TargetsFile(TD, (target,), Source(identity=SRC, sidecar_proxy=proxy))
        ctx = RunContext(tf, Settings(timeout=3))
        try:
            mesh, spoof = run_checks([MeshCheck(), XfccSpoofCheck()], ctx)
        finally:
            ctx.close()
    assert mesh.verdict is Verdict.FAIL, mesh
    assert mesh.evidence["xfcc_trusted"]["By"] == [ECHO, OTHER]  # what real Envoy wrote
    assert mesh.evidence["xfcc_trusted"]["URI"] == [SRC]
    assert "By= appears 2 times" in mesh.reason and "X.509-SVID" in mesh.reason
    # the forged header never got through (this Envoy's outbound sanitizes XFCC)
    assert spoof.verdict is Verdict.PASS, spoof
