"""The wire capture for real: two network namespaces joined by a veth pair (and VXLAN /
Geneve links over it), a real TLS server and a plaintext server in one, the client in the
other, the capture on the client's veth. Needs root (namespaces, AF_PACKET); skipped,
with the reason, otherwise. Every namespace is deleted in ``finally``."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from probe.results import Verdict
from probe.wire.capture import Capture, CaptureOptions
from probe.wire.judge import BLIND, Marked, control_seen, judge
from probe.wire.markers import HEADER, new_marker
from probe.wire.netns import in_netns
from probe.wire.record import Observation
from tests.tlsservers import (
    MeshPKI,
    Server,
    plaintext_http,
    read_request,
    tcp_echo,
    tls_handler,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="SKIPPED LOUDLY: wire capture tests need root and iproute2 (network namespaces, "
    "veth, AF_PACKET); run them as root",
)

_ids = itertools.count()
CLIENT_IP, SERVER_IP = "10.231.0.1", "10.231.0.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Pair:
    client_ns: str
    server_ns: str
    client_if: str
    server_if: str


@contextlib.contextmanager
def netns_pair() -> Iterator[Pair]:
    tag = f"{os.getpid() % 100000}x{next(_ids)}"
    p = Pair(f"mpw-c{tag}", f"mpw-s{tag}", f"mwc{tag}", f"mws{tag}")
    made = subprocess.run(["ip", "netns", "add", p.client_ns], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"SKIPPED LOUDLY: cannot create network namespaces here: {made.stderr.strip()}")
    try:
        ip("netns", "add", p.server_ns)
        ip("link", "add", p.client_if, "type", "veth", "peer", "name", p.server_if)
        ip("link", "set", p.client_if, "netns", p.client_ns)
        ip("link", "set", p.server_if, "netns", p.server_ns)
        for ns, dev, addr in (
            (p.client_ns, p.client_if, CLIENT_IP),
            (p.server_ns, p.server_if, SERVER_IP),
        ):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield p
    finally:
        for ns in (p.client_ns, p.server_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", p.client_if], capture_output=True, timeout=10)


def tunnel(p: Pair, kind: str) -> tuple[str, str]:
    """A VXLAN or Geneve link between the namespaces over the veth: inner (client, server) IPs."""
    inner = ("10.232.0.1", "10.232.0.2")
    for ns, local, remote, addr in (
        (p.client_ns, CLIENT_IP, SERVER_IP, inner[0]),
        (p.server_ns, SERVER_IP, CLIENT_IP, inner[1]),
    ):
        if kind == "vxlan":
            ip(
                "-n",
                ns,
                "link",
                "add",
                "tun0",
                "type",
                "vxlan",
                "id",
                "42",
                "local",
                local,
                "remote",
                remote,
                "dstport",
                "4789",
            )
        else:
            made = subprocess.run(
                [
                    "ip",
                    "-n",
                    ns,
                    "link",
                    "add",
                    "tun0",
                    "type",
                    "geneve",
                    "id",
                    "42",
                    "remote",
                    remote,
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if made.returncode != 0:
                pytest.skip(f"this kernel cannot make a geneve link: {made.stderr.strip()}")
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "tun0")
        ip("-n", ns, "link", "set", "tun0", "up")
    return inner


@contextlib.contextmanager
def server_in(ns: str, handle: Callable[[socket.socket], None], host: str) -> Iterator[Server]:
    srv = in_netns(ns, lambda: Server(handle, host=host))
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> MeshPKI:
    return MeshPKI(tmp_path_factory.mktemp("wirepki"))


def tls_server(pki: MeshPKI) -> Callable[[socket.socket], None]:
    issued = pki.ca.issue_workload(pki.identity("ns-a", "echo"), key_type="ec")
    return tls_handler(pki, issued, require_client=False)


def client_call(ns: str, host: str, port: int, chunks: list[bytes], *, use_tls: bool) -> bytes:
    sock = in_netns(ns, lambda: socket.create_connection((host, port), timeout=5))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn: socket.socket = sock
    if use_tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = ctx.wrap_socket(sock)
    try:
        for i, c in enumerate(chunks):
            if i:
                time.sleep(0.05)  # its own segment
            conn.sendall(c)
        return read_request(conn)
    finally:
        conn.close()


def request(marker: str) -> bytes:
    return f"GET /headers?{marker} HTTP/1.1\r\nHost: x\r\n{HEADER}: {marker}\r\n\r\n".encode()


def capture(p: Pair, interface: str | None = None) -> Capture:
    return Capture(CaptureOptions(interface or p.client_if, netns=p.client_ns, seconds=20)).start()


def judged(obs: Observation, control: Marked, marked: list[Marked]) -> list[tuple[Verdict, str]]:
    ctl = control_seen(obs, control)
    return [(v.verdict, v.reason) for v in judge(obs, ctl, marked)]


def settle(cap: Capture) -> Observation:
    time.sleep(0.2)
    return cap.stop()


def run_scenario(
    p: Pair, pki: MeshPKI, server_ip: str, interface: str | None = None, *, control: bool = True
) -> tuple[list[tuple[Verdict, str]], Observation, dict[str, str]]:
    m = {"tls": new_marker(), "plain": new_marker(), "control": new_marker()}
    with (
        server_in(p.server_ns, tls_server(pki), server_ip) as tls_srv,
        server_in(p.server_ns, plaintext_http, server_ip) as plain_srv,
    ):
        cap = capture(p, interface)
        try:
            client_call(
                p.client_ns, server_ip, tls_srv.endpoint.port, [request(m["tls"])], use_tls=True
            )
            client_call(
                p.client_ns,
                server_ip,
                plain_srv.endpoint.port,
                [request(m["plain"])],
                use_tls=False,
            )
            if control:
                client_call(
                    p.client_ns,
                    server_ip,
                    plain_srv.endpoint.port,
                    [request(m["control"])],
                    use_tls=False,
                )
        finally:
            obs = settle(cap)
        out = judged(
            obs,
            Marked("control", (str(plain_srv.endpoint),), m["control"]),
            [
                Marked("tls", (str(tls_srv.endpoint),), m["tls"]),
                Marked("plain", (str(plain_srv.endpoint),), m["plain"]),
            ],
        )
    return out, obs, m


def test_tls_passes_plaintext_fails_with_offset(pki: MeshPKI) -> None:
    with netns_pair() as p:
        (tls, plain), obs, m = run_scenario(p, pki, SERVER_IP)
    assert tls[0] is Verdict.PASS, tls[1]
    assert plain[0] is Verdict.FAIL, plain[1]
    assert f"marker {m['plain']} in cleartext on {CLIENT_IP}:" in plain[1]
    # Ethernet 14 + IPv4 20 + TCP with timestamps 32 + len("GET /headers?") 13
    assert "at byte 79 of packet" in plain[1]
    assert obs.summary.kernel_drops == 0


def test_wrong_interface_is_error_for_all(pki: MeshPKI) -> None:
    with netns_pair() as p:
        results, _, _ = run_scenario(p, pki, SERVER_IP, interface="lo")
    assert [v for v, _ in results] == [Verdict.ERROR, Verdict.ERROR]
    assert all(BLIND in r for _, r in results)


def test_control_not_seen_makes_all_error(pki: MeshPKI) -> None:
    with netns_pair() as p:
        results, _, _ = run_scenario(p, pki, SERVER_IP, control=False)
    assert [v for v, _ in results] == [Verdict.ERROR, Verdict.ERROR]
    assert all(BLIND in r for _, r in results)


def test_marker_split_across_two_segments(pki: MeshPKI) -> None:
    m, cm = new_marker(), new_marker()
    with netns_pair() as p, server_in(p.server_ns, plaintext_http, SERVER_IP) as srv:
        where = str(srv.endpoint)
        cap = capture(p)
        try:
            raw = request(m)
            cut = raw.index(m.encode()) + 10
            client_call(
                p.client_ns, SERVER_IP, srv.endpoint.port, [raw[:cut], raw[cut:]], use_tls=False
            )
            client_call(p.client_ns, SERVER_IP, srv.endpoint.port, [request(cm)], use_tls=False)
        finally:
            obs = settle(cap)
    (got,) = judged(obs, Marked("c", (where,), cm), [Marked("t", (where,), m)])
    assert got[0] is Verdict.FAIL
    assert "split across segments" in got[1]


@pytest.mark.parametrize("kind", ["vxlan", "geneve"])
def test_encapsulated_traffic_is_decoded(pki: MeshPKI, kind: str) -> None:
    with netns_pair() as p:
        _, inner_server = tunnel(p, kind)
        (tls, plain), _, _ = run_scenario(p, pki, inner_server)
    assert tls[0] is Verdict.PASS, tls[1]
    assert f"inside {kind}" in tls[1]
    assert plain[0] is Verdict.FAIL and f"inside {kind}" in plain[1]


def test_kernel_filter_drops_what_is_not_tcp_or_a_tunnel() -> None:
    with netns_pair() as p:
        cap = capture(p)
        try:
            s = in_netns(p.client_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            for _ in range(20):
                s.sendto(b"x" * 100, (SERVER_IP, 53))
            s.close()
            subprocess.run(
                ["ip", "netns", "exec", p.client_ns, "ping", "-c", "2", "-i", "0.2", SERVER_IP],
                capture_output=True,
                timeout=10,
            )
        finally:
            obs = settle(cap)
    assert obs.summary.packets == 0


# ---- mtlsprobe check --checks wire, end to end ------------------------------------------


def mini_sidecar(ns: str, tls_ports: set[int]) -> type[BaseHTTPRequestHandler]:
    """A stand-in for the probe's sidecar: an HTTP proxy that originates TLS to the
    upstream on ``tls_ports`` and plaintext elsewhere (a DestinationRule DISABLE edge)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            rest = self.path.split("://", 1)[1]
            authority, _, path = rest.partition("/")
            host, _, port = authority.rpartition(":")
            sock: socket.socket = in_netns(
                ns, lambda: socket.create_connection((host, int(port)), timeout=5)
            )
            if int(port) in tls_ports:
                sock = ctx.wrap_socket(sock)
            head = "".join(
                f"{k}: {v}\r\n" for k, v in self.headers.items() if k.lower() != "connection"
            )
            sock.sendall(f"GET /{path} HTTP/1.1\r\n{head}connection: close\r\n\r\n".encode())
            got = read_request(sock)
            sock.close()
            self.send_response(200 if got.startswith(b"HTTP/1.1 200") else 502)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_CONNECT(self) -> None:
            host, _, port = self.path.rpartition(":")
            sock: socket.socket = in_netns(
                ns, lambda: socket.create_connection((host, int(port)), timeout=5)
            )
            if int(port) in tls_ports:
                sock = ctx.wrap_socket(sock)
            self.send_response(200)
            self.end_headers()
            self.wfile.flush()
            line = self.rfile.readline(4096)
            sock.sendall(line)
            reply = sock.recv(4096)
            sock.close()
            self.wfile.write(reply)
            self.wfile.flush()

        def log_message(self, *a: object) -> None:
            pass

    return Handler


def tcp_echo_app(conn: ssl.SSLSocket) -> None:
    conn.sendall(conn.recv(4096))


def test_check_end_to_end(pki: MeshPKI, tmp_path: Path) -> None:
    issued = pki.ca.issue_workload(pki.identity("ns-a", "tcp"), key_type="ec")
    tls_echo = tls_handler(pki, issued, require_client=False, app=tcp_echo_app)
    with (
        netns_pair() as p,
        server_in(p.server_ns, tls_server(pki), SERVER_IP) as tls_srv,
        server_in(p.server_ns, plaintext_http, SERVER_IP) as plain_srv,
        server_in(p.server_ns, tls_echo, SERVER_IP) as tcp_tls,
        server_in(p.server_ns, tcp_echo, SERVER_IP) as tcp_plain,
    ):
        proxy = in_netns(
            p.client_ns,
            lambda: ThreadingHTTPServer(
                ("127.0.0.1", 0),
                mini_sidecar(p.client_ns, {tls_srv.endpoint.port, tcp_tls.endpoint.port}),
            ),
        )
        t = threading.Thread(target=proxy.serve_forever, daemon=True)
        t.start()
        try:
            targets = tmp_path / "targets.yaml"
            targets.write_text(
                json.dumps(
                    {
                        "trustDomain": "cluster.local",
                        "source": {"sidecarProxy": f"http://127.0.0.1:{proxy.server_address[1]}"},
                        "targets": [
                            {
                                "name": "ns-a/tls",
                                "host": SERVER_IP,
                                "port": tls_srv.endpoint.port,
                                "endpoints": [str(tls_srv.endpoint)],
                                "expect": "STRICT",
                            },
                            {
                                "name": "ns-a/disabled",
                                "host": SERVER_IP,
                                "port": plain_srv.endpoint.port,
                                "endpoints": [str(plain_srv.endpoint)],
                                "expect": "STRICT",
                            },
                            {
                                "name": "ns-a/tcp-tls",
                                "host": SERVER_IP,
                                "port": tcp_tls.endpoint.port,
                                "endpoints": [str(tcp_tls.endpoint)],
                                "expect": "STRICT",
                                "protocol": "tcp",
                            },
                            {
                                "name": "ns-a/tcp-disabled",
                                "host": SERVER_IP,
                                "port": tcp_plain.endpoint.port,
                                "endpoints": [str(tcp_plain.endpoint)],
                                "expect": "STRICT",
                                "protocol": "tcp",
                            },
                            {
                                "name": "ns-b/naked",
                                "host": SERVER_IP,
                                "port": plain_srv.endpoint.port,
                                "endpoints": [str(plain_srv.endpoint)],
                                "expect": "NONE",
                            },
                        ],
                        "controls": [
                            {
                                "name": "ctl/naked",
                                "kind": "plaintext",
                                "host": SERVER_IP,
                                "port": plain_srv.endpoint.port,
                                "endpoints": [str(plain_srv.endpoint)],
                            }
                        ],
                    }
                )
            )

            def check(*wire: str) -> tuple[int, dict[str, dict[str, str]]]:
                proc = subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        p.client_ns,
                        sys.executable,
                        "-m",
                        "jobs.cli.main",
                        "check",
                        "-f",
                        str(targets),
                        "--checks",
                        "wire",
                        *wire,
                        "-o",
                        "json",
                        "--timeout",
                        "10",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    cwd=Path(__file__).parent.parent,
                )
                doc = json.loads(proc.stdout)
                return proc.returncode, {r["target"]: r for r in doc["results"]}

            code, by = check("--wire-interface", p.client_if)
            assert by["ns-a/tls"]["verdict"] == "pass", by["ns-a/tls"]
            assert by["ns-a/disabled"]["verdict"] == "fail", by["ns-a/disabled"]
            assert "in cleartext" in by["ns-a/disabled"]["reason"]
            assert by["ns-a/tcp-tls"]["verdict"] == "pass", by["ns-a/tcp-tls"]
            assert by["ns-a/tcp-disabled"]["verdict"] == "fail", by["ns-a/tcp-disabled"]
            assert by["ns-b/naked"]["verdict"] == "skip"
            assert code == 1
            code, by = check("--wire-interface", "lo")
            meshed = ("ns-a/tls", "ns-a/disabled", "ns-a/tcp-tls", "ns-a/tcp-disabled")
            assert {by[n]["verdict"] for n in meshed} == {"error"}
            assert code == 2

            # The agent's way: a separate wire-capture process writes its report; the check
            # judges from it (the report's window must cover the calls).
            report = tmp_path / "report.jsonl"
            agent = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    p.client_ns,
                    sys.executable,
                    "-m",
                    "jobs.cli.main",
                    "wire-capture",
                    "-i",
                    p.client_if,
                    "--seconds",
                    "8",
                    "--out",
                    str(report),
                ],
                stderr=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).parent.parent,
            )
            try:
                assert agent.stderr is not None
                assert "capturing on" in agent.stderr.readline()
                code, by = check("--wire-report", str(report))
            finally:
                agent.terminate()
                agent.wait(timeout=20)
            assert by["ns-a/tls"]["verdict"] == "pass", by["ns-a/tls"]
            assert by["ns-a/tcp-disabled"]["verdict"] == "fail", by["ns-a/tcp-disabled"]
            assert code == 1
        finally:
            proxy.shutdown()
            proxy.server_close()


def test_ipv6_flows_are_followed(pki: MeshPKI) -> None:
    """IPv6 on the veth: a TLS flow passes, a plaintext marker fails, with v6 addresses."""
    m, cm, mt = new_marker(), new_marker(), new_marker()
    with netns_pair() as p:
        for ns, dev, addr in (
            (p.client_ns, p.client_if, "fd00:231::1"),
            (p.server_ns, p.server_if, "fd00:231::2"),
        ):
            ip("-n", ns, "addr", "add", f"{addr}/64", "dev", dev, "nodad")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        issued = pki.ca.issue_workload(pki.identity("ns-a", "v6"), key_type="ec")
        cert, key = pki.files(issued, str(pki.tmp / "v6"))
        ctx.load_cert_chain(cert, key)

        def listener() -> socket.socket:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.bind(("fd00:231::2", 0))
            s.listen(8)
            return s

        tls_l, plain_l = in_netns(p.server_ns, listener), in_netns(p.server_ns, listener)

        def serve(sock: socket.socket, use_tls: bool, count: int) -> None:
            for _ in range(count):
                c, _ = sock.accept()
                conn: socket.socket = ctx.wrap_socket(c, server_side=True) if use_tls else c
                read_request(conn)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                conn.close()

        threads = [
            threading.Thread(target=serve, args=(tls_l, True, 1), daemon=True),
            threading.Thread(target=serve, args=(plain_l, False, 2), daemon=True),
        ]
        for t in threads:
            t.start()
        tls_ep = f"[fd00:231::2]:{tls_l.getsockname()[1]}"
        plain_ep = f"[fd00:231::2]:{plain_l.getsockname()[1]}"
        cap = capture(p)
        try:
            client_call(
                p.client_ns, "fd00:231::2", tls_l.getsockname()[1], [request(mt)], use_tls=True
            )
            client_call(
                p.client_ns, "fd00:231::2", plain_l.getsockname()[1], [request(m)], use_tls=False
            )
            client_call(
                p.client_ns, "fd00:231::2", plain_l.getsockname()[1], [request(cm)], use_tls=False
            )
        finally:
            obs = settle(cap)
            for t in threads:
                t.join(timeout=5)
            tls_l.close()
            plain_l.close()
    (tls, plain) = judged(
        obs,
        Marked("c", (plain_ep,), cm),
        [Marked("tls", (tls_ep,), mt), Marked("plain", (plain_ep,), m)],
    )
    assert tls[0] is Verdict.PASS, tls[1]
    assert plain[0] is Verdict.FAIL and "[fd00:231::1]:" in plain[1], plain[1]
