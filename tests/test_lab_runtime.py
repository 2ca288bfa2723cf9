"""The lab's Envoy configuration against the wire facts (docs/istio-behaviour.md), with real
Envoy and a hand-made mesh spec; and teardown leaves no process behind."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobs.lab.addresses import acquire_slot
from jobs.lab.runtime import Lab
from jobs.lab.spec import PodSpec
from jobs.lab.supervisor import LabError, pid_alive, stop_pids_file
from tests.labmesh import PROBE_ID, TD, build_mesh, small_mesh
from tests.procs import all_gone, kill_groups

pytestmark = pytest.mark.envoy

FORGED = "By=spiffe://cluster.local/ns/shop/sa/api;URI=spiffe://cluster.local/ns/evil/sa/evil"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    slot = acquire_slot()
    mesh = build_mesh(slot.pod_ip, slot.app_ip)
    with Lab(mesh, slot, tmp_path_factory.mktemp("lab")) as running:
        yield running


@pytest.fixture(scope="module")
def client(lab: Lab) -> Iterator[httpx.Client]:
    with httpx.Client(proxy=lab.proxy_url, timeout=5) as c:
        yield c


def _pod(lab: Lab, name: str) -> PodSpec:
    return next(p for p in lab.mesh.pods if p.name == name)


def _plain_get(ip: str, port: int) -> int | str:
    try:
        return httpx.get(f"http://{ip}:{port}/", timeout=3).status_code
    except httpx.ReadError:
        return "reset"
    except httpx.RemoteProtocolError:
        return "closed"


@pytest.mark.parametrize(
    ("name", "want"),
    [("strict", "reset"), ("perm", 200), ("off", 200), ("naked", 200)],
)
def test_plaintext_per_mode(lab: Lab, name: str, want: int | str) -> None:
    assert _plain_get(_pod(lab, name).ip, 8080) == want


def test_tcp_port_strict_refuses_plaintext_permissive_echoes(lab: Lab) -> None:
    def exchange(ip: str) -> bytes:
        with socket.create_connection((ip, 5432), timeout=3) as s:
            s.sendall(b"ping\n")
            try:
                return s.recv(100)
            except ConnectionResetError:
                return b"reset"

    assert exchange(_pod(lab, "strict").ip) in (b"", b"reset")
    assert exchange(_pod(lab, "perm").ip) == b"ping\n"


def _xfcc(resp: httpx.Response) -> str | None:
    values: list[str] = resp.json()["headers"].get("x-forwarded-client-cert", [])
    return ",".join(values) if values else None


def test_mesh_call_proves_mtls_in_xfcc(client: httpx.Client) -> None:
    resp = client.get("http://strict.a.svc.cluster.local/")
    assert resp.status_code == 200
    last = (_xfcc(resp) or "").split(",")[-1]
    assert f"By=spiffe://{TD}/ns/a/sa/strict" in last
    assert f"URI={PROBE_ID}" in last
    assert 'Subject=""' in last
    assert resp.headers["server"] == "istio-envoy"


def test_short_host_forms_route_too(client: httpx.Client) -> None:
    assert client.get("http://strict.a:80/").status_code == 200
    assert client.get("http://nowhere.a.svc.cluster.local/").status_code == 502


def test_disable_port_gets_plaintext_from_the_mesh(client: httpx.Client) -> None:
    resp = client.get("http://off.a.svc.cluster.local/")
    assert resp.status_code == 200
    assert _xfcc(resp) is None


def test_destination_rule_disable_against_strict_is_503(client: httpx.Client) -> None:
    resp = client.get("http://strict-dr.a.svc.cluster.local/")
    assert resp.status_code == 503
    assert "connection termination" in resp.text


@pytest.mark.parametrize("name", ["imposter", "expired"])
def test_wrong_or_expired_server_cert_is_refused_by_the_client_sidecar(
    client: httpx.Client, name: str
) -> None:
    resp = client.get(f"http://{name}.a.svc.cluster.local/")
    assert resp.status_code == 503
    assert "remote connection failure" in resp.text


def test_sidecar_outbound_sanitizes_forged_xfcc(client: httpx.Client) -> None:
    resp = client.get(
        "http://strict.a.svc.cluster.local/", headers={"x-forwarded-client-cert": FORGED}
    )
    xfcc = _xfcc(resp) or ""
    assert "evil" not in xfcc
    assert xfcc.count("By=") == 1


def test_forward_untrusted_path_lets_forged_xfcc_reach_the_app(client: httpx.Client) -> None:
    resp = client.get(
        "http://fwd.a.svc.cluster.local/", headers={"x-forwarded-client-cert": FORGED}
    )
    elements = (_xfcc(resp) or "").split(",")
    assert elements[0] == FORGED
    assert elements[-1].startswith(f"By=spiffe://{TD}/ns/a/sa/fwd;")


def test_admin_certs_show_probe_identity(lab: Lab) -> None:
    doc = httpx.get(f"{lab.admin_url}/certs", timeout=3).json()
    uris = {
        san.get("uri")
        for entry in doc["certificates"]
        for cert in entry["cert_chain"]
        for san in cert["subject_alt_names"]
    }
    assert uris == {PROBE_ID}


def test_key_files_are_private(lab: Lab) -> None:
    keys = list((lab.workdir / "certs").glob("key-*.pem"))
    assert keys
    assert all(k.stat().st_mode & 0o777 == 0o600 for k in keys)
    assert (lab.workdir / "certs" / "root-cert.pem").read_bytes().startswith(b"-----BEGIN")


# --- teardown -----------------------------------------------------------------


def test_teardown_when_the_body_raises(tmp_path: Path) -> None:
    slot = acquire_slot()
    pids: list[int] = []
    with (
        pytest.raises(RuntimeError),
        Lab(small_mesh(slot), slot, tmp_path) as lab,
    ):
        pids = lab.pids()
        assert len(pids) == 3 and all(pid_alive(p) for p in pids)
        raise RuntimeError("test body failed")
    assert pids and not any(pid_alive(p) for p in pids)
    assert not (tmp_path / "pids").exists()


def test_bringup_failure_names_the_log_and_cleans_up(tmp_path: Path) -> None:
    slot = acquire_slot()
    mesh = small_mesh(slot)
    # Something else already holds the first pod's inbound port: Envoy cannot bind.
    blocker = socket.socket()
    # SO_REUSEADDR: an earlier test's TIME_WAIT on this address must not fail the bind.
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind((mesh.pods[0].ip, 8080))
    blocker.listen()
    try:
        lab = Lab(mesh, slot, tmp_path, ready_timeout=15)
        with pytest.raises(LabError, match=r"sidecars-0.*exited|sidecars-0.*log"):
            lab.__enter__()
        assert not any(pid_alive(p) for p in lab.pids())
    finally:
        blocker.close()
    leftovers = (tmp_path / "pids").exists()
    assert not leftovers


def test_keep_survives_then_down_stops_everything(tmp_path: Path) -> None:
    slot = acquire_slot()
    with Lab(small_mesh(slot), slot, tmp_path, keep=True) as lab:
        pids = lab.pids()
    try:
        assert all(pid_alive(p) for p in pids)
        assert stop_pids_file(tmp_path) == pids
        assert not any(pid_alive(p) for p in pids)
    finally:
        kill_groups(pids)


_CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from jobs.lab.addresses import Slot, acquire_slot
from jobs.lab.runtime import Lab
from tests.labmesh import small_mesh
slot = acquire_slot()
with Lab(small_mesh(slot), slot, Path({wd!r})) as lab:
    print("READY", *lab.pids(), flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_no_process_survives_the_parent_dying(tmp_path: Path, how: str) -> None:
    """Ctrl-C and SIGTERM unwind through teardown; SIGKILL is covered by PDEATHSIG."""
    code = _CHILD.format(repo=str(Path(__file__).parent.parent), wd=str(tmp_path))
    if how == "SIGTERM":
        code = (
            "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n" + code
        )
    if how == "SIGINT":
        # A shell's background jobs inherit SIGINT ignored, and Python then installs no
        # KeyboardInterrupt handler: give the child the disposition a terminal gives it.
        code = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n" + code
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    pids: list[int] = []
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("READY"), line
        pids = [int(x) for x in line.split()[1:]]
        assert all(pid_alive(p) for p in pids)
        child.send_signal(getattr(signal, how))
        child.wait(timeout=60)
        assert all_gone(pids), f"left running after {how}"
    finally:
        if child.poll() is None:
            child.kill()
        kill_groups(pids)


def test_configs_are_json_envoy_reads(lab: Lab) -> None:
    boot = json.loads((lab.workdir / "sidecars-0.json").read_text())
    names = {lst["name"] for lst in boot["static_resources"]["listeners"]}
    assert f"{_pod(lab, 'strict').ip}_8080" in names
    assert f"{_pod(lab, 'naked').ip}_8080" not in names


def test_tcp_service_through_the_sidecar_via_connect(lab: Lab) -> None:
    host, port = lab.proxy_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        target = "strict-db.a.svc.cluster.local:5432"
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1024)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        s.sendall(b"over mtls\n")
        assert s.recv(100) == b"over mtls\n"
