"""The lab's mesh CA: one root per lab, one X.509-SVID per sidecar, written as files
Envoy reads (keys mode 0600, never logged)."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from jobs.lab.spec import CertKind, MeshSpec
from probe.pki import CertificateAuthority, PrivateKey, key_pem, new_key

# RSA keygen (~100 ms each) dominates a large lab; sidecars share a few keys.
# The certificates stay distinct (own serial, SAN and validity), which is what checks see.
KEY_POOL = 4


@dataclass(frozen=True)
class CertFiles:
    chain: Path
    key: Path


@dataclass(frozen=True)
class MeshCerts:
    root: Path
    probe: CertFiles
    pods: dict[str, CertFiles]  # pod key (ns/name) -> files
    extra_probes: dict[str, CertFiles] = field(default_factory=dict)  # identity -> files


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def issue_mesh_certs(mesh: MeshSpec, directory: Path) -> MeshCerts:
    """Create the root and every sidecar's certificate under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = CertificateAuthority.create_root(mesh.trust_domain)
    root = directory / "root-cert.pem"
    _write(root, ca.root_pem(), 0o644)

    keys: list[tuple[PrivateKey, Path]] = []
    sidecars = [p for p in mesh.pods if p.sidecar]
    for i in range(min(KEY_POOL, len(sidecars) + 1)):
        key = new_key("rsa")
        path = directory / f"key-{i}.pem"
        _write(path, key_pem(key), 0o600)
        keys.append((key, path))

    probe_key, probe_key_path = keys[0]
    probe_chain = directory / "probe.pem"
    _write(probe_chain, ca.issue_workload(mesh.probe_identity, key=probe_key).chain_pem(), 0o644)

    now = dt.datetime.now(dt.UTC)
    pods: dict[str, CertFiles] = {}
    for i, pod in enumerate(sidecars):
        key, key_path = keys[(i + 1) % len(keys)]
        if pod.cert is CertKind.EXPIRED:
            issued = ca.issue(
                [pod.identity],
                key=key,
                not_before=now - dt.timedelta(hours=26),
                not_after=now - dt.timedelta(hours=2),
            )
        else:
            issued = ca.issue_workload(pod.identity, key=key)
        chain = directory / f"{pod.namespace}.{pod.name}.pem"
        _write(chain, issued.chain_pem(), 0o644)
        pods[pod.key] = CertFiles(chain=chain, key=key_path)
    extra: dict[str, CertFiles] = {}
    for k, identity in enumerate(mesh.extra_probes):
        chain = directory / f"probe-{k}.pem"
        _write(chain, ca.issue_workload(identity, key=probe_key).chain_pem(), 0o644)
        extra[identity] = CertFiles(chain, probe_key_path)
    return MeshCerts(
        root=root, probe=CertFiles(probe_chain, probe_key_path), pods=pods, extra_probes=extra
    )
