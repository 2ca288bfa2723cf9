"""The echo responder (``mtlsprobe serve``): what it reflects, what it hides, and
the bounds that keep garbage and slow clients from hurting it. Real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import probe.echo
from probe.echo import EchoServer, Listen, parse_listen


def raw(addr: tuple[str, int], payload: bytes, timeout: float = 3.0) -> bytes:
    """Send bytes, read until the server closes or stops talking."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(payload)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b"connection: close" not in out.lower():
                    head, _, body = out.partition(b"\r\n\r\n")
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:") and len(body) >= int(
                            line.split(b":")[1]
                        ):
                            return out
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def body_of(resp: bytes) -> dict[str, object]:
    doc = json.loads(resp.partition(b"\r\n\r\n")[2])
    assert isinstance(doc, dict)
    return doc


def test_reflects_request_and_redacts_secrets(echo: tuple[str, int]) -> None:
    req = (
        b"PATCH /x?y=1 HTTP/1.1\r\nHost: echo.ns-a:8080\r\n"
        b"Authorization: Bearer s3cret\r\nProxy-Authorization: Basic cGFzcw==\r\n"
        b"Cookie: a=b\r\nSet-Cookie: c=d\r\n"
        b"X-Forwarded-Client-Cert: By=a;URI=b\r\nX-Forwarded-Client-Cert: By=c;URI=d\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    )
    resp = raw(echo, req)
    assert resp.startswith(b"HTTP/1.1 200")
    doc = body_of(resp)
    assert doc["name"] == "ns-a/echo" and doc["method"] == "PATCH" and doc["path"] == "/x?y=1"
    assert doc["host"] == "echo.ns-a:8080" and doc["listener"] == f"{echo[0]}:{echo[1]}"
    assert doc["body_bytes"] == 3
    headers = doc["headers"]
    assert isinstance(headers, dict)
    assert headers["x-forwarded-client-cert"] == ["By=a;URI=b", "By=c;URI=d"]
    for name in ("authorization", "proxy-authorization", "cookie", "set-cookie"):
        assert headers[name] == ["[redacted]"]
    for secret in (b"s3cret", b"cGFzcw", b"a=b", b"c=d"):
        assert secret not in resp


@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS", "FOO"])
def test_any_method_any_path(echo: tuple[str, int], method: str) -> None:
    resp = raw(echo, f"{method} /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert resp.startswith(b"HTTP/1.1 200"), resp[:80]
    assert body_of(resp)["method"] == method


def test_head_and_keep_alive(echo: tuple[str, int]) -> None:
    with httpx.Client() as c:
        assert c.head(f"http://{echo[0]}:{echo[1]}/").content == b""
        first = c.get(f"http://{echo[0]}:{echo[1]}/a").json()
        second = c.get(f"http://{echo[0]}:{echo[1]}/b").json()
    assert first["remote"] == second["remote"]  # one connection, two requests


def test_chunked_body(echo: tuple[str, int]) -> None:
    req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    req += b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert body_of(raw(echo, req))["body_bytes"] == 5


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"\x16\x03\x01garbage\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nX: " + b"y" * 50_000 + b"\r\n\r\n", b"431"),
        (b"GET /" + b"a" * 50_000 + b" HTTP/1.1\r\n\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", b"413"),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", b"400"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n", b"413"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            b"400",
        ),
    ],
)
def test_garbage_and_limits(echo: tuple[str, int], payload: bytes, status: bytes) -> None:
    resp = raw(echo, payload)
    assert resp.split(b" ", 2)[1] == status, resp[:120]
    # and the server still answers
    assert httpx.get(f"http://{echo[0]}:{echo[1]}/healthz").status_code == 200


def test_slowloris_is_cut_off_by_the_head_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe.echo, "HEAD_TIMEOUT", 0.6)
    srv = EchoServer([Listen("127.0.0.1", 0, "x")])
    with srv, socket.create_connection(srv.addresses[0], timeout=3) as s:
        t = time.monotonic()
        closed = False
        for ch in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                s.sendall(bytes([ch]))
            except OSError:
                closed = True
                break
            s.settimeout(0.15)  # each byte well inside any per-read timeout
            try:
                if s.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:  # the server may reset rather than close
                closed = True
                break
        assert closed
        assert time.monotonic() - t < 10  # the 0.6 s deadline, not the ~15 s drip


def test_workers_bound_connections_in_service() -> None:
    with EchoServer([Listen("127.0.0.1", 0, "x")], workers=2) as srv:
        addr = srv.addresses[0]
        # One accept loop takes connections in arrival order: the two idle ones hold
        # both workers before the third is accepted, however late the loop runs.
        idle = [socket.create_connection(addr) for _ in range(2)]
        try:
            third = socket.create_connection(addr, timeout=0.5)  # sits in the backlog
            third.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            with pytest.raises(TimeoutError):
                third.recv(1)
            idle[0].close()  # frees a worker
            third.settimeout(30)
            assert third.recv(12).startswith(b"HTTP/1.1 200")
            third.close()
        finally:
            for s in idle:
                s.close()


def test_stop_closes_live_connections() -> None:
    srv = EchoServer([Listen("127.0.0.1", 0, "x")]).start()
    s = socket.create_connection(srv.addresses[0], timeout=30)
    # A keep-alive request answered: the server holds this connection now (a guessed
    # sleep could end with it still in the backlog, which stop() resets instead).
    head = raw_keepalive(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    srv.stop()
    assert s.recv(1) == b""
    s.close()


def test_many_addresses_one_process_each_with_its_name() -> None:
    listens = [Listen(f"127.0.0.{i}", 0, f"ns-{i}/echo") for i in range(1, 6)]
    with EchoServer(listens) as srv, httpx.Client() as c:
        for (host, port), listen in zip(srv.addresses, listens, strict=True):
            doc = c.get(f"http://{host}:{port}/").json()
            assert doc["name"] == listen.name and doc["listener"] == f"{host}:{port}"


def test_tcp_mode_echoes_bytes() -> None:
    srv = EchoServer([Listen("127.0.0.1", 0, "tcp", tcp=True)])
    with srv, socket.create_connection(srv.addresses[0], timeout=3) as s:
        s.sendall(b"\x16\x03\x01hello")
        assert s.recv(10) == b"\x16\x03\x01hello"


def test_parse_listen() -> None:
    assert parse_listen("127.0.10.2:8080=ns-a/echo") == Listen("127.0.10.2", 8080, "ns-a/echo")
    assert parse_listen("[::1]:80", default_name="n") == Listen("::1", 80, "n")
    assert parse_listen("0.0.0.0:9", tcp=True).tcp
    for bad in ("8080", "host:", "a:99999", ":80"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def raw_keepalive(s: socket.socket, request: bytes) -> bytes:
    """One request on a kept-alive connection; its whole response (by content-length)."""
    s.sendall(request)
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = s.recv(65536)
        assert chunk, out
        out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, out
        body += chunk
    return head + b"\r\n\r\n" + body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(extra: list[str]) -> tuple[subprocess.Popen[bytes], int, int]:
    """``mtlsprobe serve`` on ports that were free a moment ago. Another process on a
    shared machine may take one in between: that start fails with 'cannot listen' and
    is retried on new ports, so only a real failure fails the test."""
    for _ in range(5):
        http_port, tcp_port = _free_port(), _free_port()
        argv = [sys.executable, "-m", "jobs.cli.main", "serve", *extra]
        argv += ["--listen", f"127.0.0.1:{http_port}", "--listen", f"127.0.0.2:{http_port}=ns-b/b"]
        argv += ["--tcp-listen", f"127.0.0.1:{tcp_port}"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        if b"listening on 3 addresses" in first:
            return proc, http_port, tcp_port
        err = proc.stderr.read()
        proc.wait(timeout=30)
        assert b"cannot listen" in err, (first, err)
    raise AssertionError("five pairs of free ports were all taken")


def test_cli_serve_and_sigterm() -> None:
    proc, http_port, tcp_port = _serve(["--name", "lab/default"])
    try:
        with httpx.Client(timeout=30) as c:
            assert c.get(f"http://127.0.0.1:{http_port}/").json()["name"] == "lab/default"
            assert c.get(f"http://127.0.0.2:{http_port}/").json()["name"] == "ns-b/b"
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=30) as s:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("argv", [["--listen", "nonsense"], ["--workers", "0"]])
def test_cli_usage_errors(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli.main", "serve", *argv], capture_output=True, timeout=10
    )
    assert proc.returncode == 64
    assert len(proc.stderr.strip().splitlines()) == 1


_http_ish = st.lists(
    st.sampled_from(
        [
            b"GET ",
            b"POST ",
            b"/",
            b" HTTP/1.1",
            b"HTTP/1.0",
            b"\r\n",
            b"\n",
            b": ",
            b"Host",
            b"Content-Length",
            b"Transfer-Encoding",
            b"chunked",
            b"0",
            b"-1",
            b"ffffffff",
            b"\x00",
            b"\xff",
            b"\x16\x03\x01",
            b" ",
            b"x" * 300,
        ]
    ),
    max_size=40,
).map(b"".join)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=st.binary(max_size=600) | _http_ish)
def test_garbage_never_kills_it(echo: tuple[str, int], payload: bytes) -> None:
    with socket.create_connection(echo, timeout=3) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    assert out == b"" or out.startswith(b"HTTP/1."), out[:60]
    with socket.create_connection(echo, timeout=3) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(12) == b"HTTP/1.1 200"


def test_headers_and_root_both_reflect_for_the_probe() -> None:
    """The probe GETs /headers by default; older targets and users call /."""
    import httpx

    from probe.reflect import App, parse_reflection

    with EchoServer([Listen("127.0.0.1", 0, "ns-a/echo")]) as srv:
        host, port = srv.addresses[0]
        for path in ("/headers", "/"):
            resp = httpx.get(
                f"http://{host}:{port}{path}",
                headers={"X-Forwarded-Client-Cert": "By=a;URI=b", "x-mtlsprobe-marker": "m1"},
            )
            r = parse_reflection(resp.content)
            assert r is not None and r.app is App.SERVE and r.name == "ns-a/echo"
            assert r.xfcc == ["By=a;URI=b"] and r.values("X-MTLSPROBE-MARKER") == ["m1"]
