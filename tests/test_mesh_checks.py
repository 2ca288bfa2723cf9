"""mesh, xfcc-spoof, self and the echo responder, through stand-ins for the
sidecar and its admin API (real sockets; real Envoy is covered by the lab tests)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from probe.checks.base import RunContext, Settings
from probe.checks.mesh import MeshCheck
from probe.checks.self_cert import SelfCheck
from probe.checks.xfcc_spoof import XfccSpoofCheck
from probe.echo import EchoServer, Listen
from probe.engine import run_checks
from probe.model import Expect, Source, Target, TargetsFile
from probe.pki import CertificateAuthority
from probe.results import Result, Verdict
from tests.sidecar_standin import SidecarBehaviour, admin_handler, http_server, sidecar
from tests.tlsservers import nothing_listening

TD = "cluster.local"
SRC = f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe"
ECHO = f"spiffe://{TD}/ns/ns-a/sa/echo"


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[str, int]]:
    srv = EchoServer([Listen("127.0.0.1", 0, "ns-a/echo")]).start()
    try:
        yield srv.addresses[0]
    finally:
        srv.stop()


def run(
    check: object,
    proxy: str | None,
    *,
    expect: Expect = Expect.STRICT,
    echo: bool = True,
    admin: str | None = None,
    root: Path | None = None,
    identity: str | None = ECHO,
) -> Result:
    target = Target(
        name="ns-a/echo",
        host="echo.ns-a.svc.cluster.local",
        port=8080,
        expect=expect,
        identity=identity,
        echo=echo,
    )
    tf = TargetsFile(
        trust_domain=TD,
        targets=(target,),
        source=Source(identity=SRC, sidecar_proxy=proxy, sidecar_admin=admin),
        root_cert_file=root,
    )
    ctx = RunContext(tf, Settings(timeout=2))
    try:
        (r,) = run_checks([check], ctx)  # type: ignore[list-item]
    finally:
        ctx.close()
    return r


# --- mesh ----------------------------------------------------------------------


def test_mesh_pass_with_exact_identities(echo: tuple[str, int]) -> None:
    b = SidecarBehaviour(upstream=echo)
    with sidecar(b) as proxy:
        r = run(MeshCheck(), proxy)
    assert r.verdict is Verdict.PASS, r
    assert r.evidence["xfcc_trusted"]["URI"] == [SRC]
    assert b.seen_hosts == ["echo.ns-a.svc.cluster.local:8080"]


def test_mesh_wrong_server_identity_fails(echo: tuple[str, int]) -> None:
    b = SidecarBehaviour(upstream=echo, by=f"spiffe://{TD}/ns/ns-a/sa/other")
    with sidecar(b) as proxy:
        r = run(MeshCheck(), proxy)
    assert r.verdict is Verdict.FAIL and "sa/other" in r.reason


def test_mesh_wrong_client_identity_fails(echo: tuple[str, int]) -> None:
    b = SidecarBehaviour(upstream=echo, uri=f"spiffe://{TD}/ns/x/sa/y")
    with sidecar(b) as proxy:
        r = run(MeshCheck(), proxy)
    assert r.verdict is Verdict.FAIL and "URI=" in r.reason


def test_mesh_no_xfcc_fails(echo: tuple[str, int]) -> None:
    with sidecar(SidecarBehaviour(mode="plaintext", upstream=echo)) as proxy:
        r = run(MeshCheck(), proxy)
    assert r.verdict is Verdict.FAIL and "not mTLS" in r.reason


def test_mesh_sidecar_503_fails_with_envoys_words(echo: tuple[str, int]) -> None:
    with sidecar(SidecarBehaviour(mode="503", upstream=echo)) as proxy:
        r = run(MeshCheck(), proxy)
    assert r.verdict is Verdict.FAIL and "reset reason: connection termination" in r.reason


def test_mesh_non_echo_is_status_only(echo: tuple[str, int]) -> None:
    with sidecar(SidecarBehaviour(upstream=echo)) as proxy:
        r = run(MeshCheck(), proxy, echo=False)
    assert r.verdict is Verdict.PASS and "identity not observable" in r.reason


def test_mesh_plaintext_target_passes_on_response(echo: tuple[str, int]) -> None:
    with sidecar(SidecarBehaviour(mode="plaintext", upstream=echo)) as proxy:
        r = run(MeshCheck(), proxy, expect=Expect.NONE)
    assert r.verdict is Verdict.PASS


def test_mesh_proxy_down_is_error() -> None:
    ep = nothing_listening()
    r = run(MeshCheck(), f"http://{ep}")
    assert r.verdict is Verdict.ERROR and "sidecar proxy" in r.reason


# --- xfcc-spoof ------------------------------------------------------------------


def test_spoof_dropped_passes(echo: tuple[str, int]) -> None:
    with sidecar(SidecarBehaviour(upstream=echo)) as proxy:
        r = run(XfccSpoofCheck(), proxy)
    assert r.verdict is Verdict.PASS, r


def test_spoof_forwarded_fails(echo: tuple[str, int]) -> None:
    with sidecar(SidecarBehaviour(mode="forward", upstream=echo)) as proxy:
        r = run(XfccSpoofCheck(), proxy)
    assert r.verdict is Verdict.FAIL and r.observed == "forged XFCC forwarded"


def test_spoof_sidecar_error_is_error(echo: tuple[str, int]) -> None:
    with sidecar(SidecarBehaviour(mode="503", upstream=echo)) as proxy:
        r = run(XfccSpoofCheck(), proxy)
    assert r.verdict is Verdict.ERROR


def test_spoof_skips_non_echo() -> None:
    r = run(XfccSpoofCheck(), None, echo=False)
    assert r.verdict is Verdict.SKIP


# --- self ----------------------------------------------------------------------


def _certs_doc(
    ca: CertificateAuthority, uri: str, nb: dt.datetime, na: dt.datetime
) -> dict[str, object]:
    return {
        "certificates": [
            {
                "ca_cert": [
                    {"path": "<inline>", "serial_number": format(ca.cert.serial_number, "x")}
                ],
                "cert_chain": [
                    {
                        "path": "/etc/certs/cert-chain.pem",
                        "serial_number": "abc",
                        "subject_alt_names": [{"uri": uri}],
                        "days_until_expiration": str((na - dt.datetime.now(dt.UTC)).days),
                        "valid_from": nb.isoformat().replace("+00:00", "Z"),
                        "expiration_time": na.isoformat().replace("+00:00", "Z"),
                    }
                ],
            }
        ]
    }


@pytest.fixture(scope="module")
def mesh_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, Path]:
    ca = CertificateAuthority.create_root(TD, key_type="ec")
    root = tmp_path_factory.mktemp("root") / "root-cert.pem"
    root.write_bytes(ca.root_pem())
    return ca, root


def test_self_from_certs(mesh_ca: tuple[CertificateAuthority, Path]) -> None:
    ca, root = mesh_ca
    now = dt.datetime.now(dt.UTC)
    routes = {
        "/certs": _certs_doc(ca, SRC, now - dt.timedelta(hours=1), now + dt.timedelta(hours=23))
    }
    with http_server(admin_handler(routes)) as admin:
        r = run(SelfCheck(), None, admin=admin, root=root)
    assert r.verdict is Verdict.PASS, r
    assert r.evidence["chain_verified"] is True


def test_self_rotation_stopped_fails(mesh_ca: tuple[CertificateAuthority, Path]) -> None:
    ca, root = mesh_ca
    now = dt.datetime.now(dt.UTC)
    routes = {
        "/certs": _certs_doc(ca, SRC, now - dt.timedelta(hours=22), now + dt.timedelta(hours=2))
    }
    with http_server(admin_handler(routes)) as admin:
        r = run(SelfCheck(), None, admin=admin, root=root)
    assert r.verdict is Verdict.FAIL and ("rotation" in r.reason or "minimum" in r.reason)


def test_self_wrong_identity_fails(mesh_ca: tuple[CertificateAuthority, Path]) -> None:
    ca, root = mesh_ca
    now = dt.datetime.now(dt.UTC)
    routes = {
        "/certs": _certs_doc(ca, f"spiffe://{TD}/ns/x/sa/y", now, now + dt.timedelta(hours=24))
    }
    with http_server(admin_handler(routes)) as admin:
        r = run(SelfCheck(), None, admin=admin, root=root)
    assert r.verdict is Verdict.FAIL and "holds no certificate for" in r.reason


def test_self_from_config_dump(mesh_ca: tuple[CertificateAuthority, Path]) -> None:
    ca, root = mesh_ca
    issued = ca.issue_workload(SRC, key_type="ec")
    dump = {
        "configs": [
            {
                "name": "default",
                "secret": {
                    "name": "default",
                    "tls_certificate": {
                        "certificate_chain": {
                            "inline_bytes": base64.b64encode(issued.chain_pem()).decode()
                        },
                        "private_key": {"inline_bytes": base64.b64encode(b"[redacted]").decode()},
                    },
                },
            }
        ]
    }
    routes = {"/config_dump?resource=dynamic_active_secrets": dump}
    with http_server(admin_handler(routes)) as admin:
        r = run(SelfCheck(), None, admin=admin, root=root)
    assert r.verdict is Verdict.PASS, r
    assert r.evidence["source"] == "config_dump"
    assert "redacted" not in json.dumps(r.to_dict())


def test_self_admin_down_is_error() -> None:
    r = run(SelfCheck(), None, admin=f"http://{nothing_listening()}")
    assert r.verdict is Verdict.ERROR and "unreachable" in r.reason
