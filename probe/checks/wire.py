"""``wire``: the bytes of the probe's mesh calls are TLS on the network, and a marker
they carry never appears in cleartext; a plaintext control call must be seen.

One session per run (the first target's item runs it, the others wait for it): start the
capture, make one marked call per target through the sidecar and one marked plaintext
call to the control, stop, judge (``probe.wire.judge``). Calls run concurrently so the
session stays inside one check's deadline. In a probe pod of ``mtlsprobe run``
(``--wire-claim``) there is no capture here: the calls are made and each result is a
pending ``error`` carrying what was sent, which run judges from the node agent's report.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from probe.checks.base import Check, Scope, make_result
from probe.model import DEFAULT_ECHO_PATH, ControlKind, Endpoint, Expect, Protocol
from probe.results import Result, Verdict
from probe.wire.judge import BLIND, Marked, WireVerdict, control_seen, judge
from probe.wire.markers import HEADER, new_marker
from probe.wire.options import INSTALL_HINT, WireOptions, options
from probe.wire.record import canonical

if TYPE_CHECKING:
    from probe.checks.base import RunContext
    from probe.model import Target
    from probe.wire.record import Observation

SETTLE = 0.3  # seconds the capture keeps running after the last call (packets in flight)
REPORT_POLL = 0.1


class WireCheck(Check):
    name = "wire"
    scope = Scope.TARGET
    summary = "the mesh call's bytes are TLS records on the wire, its marker never cleartext"

    def skip_reason(self, ctx: RunContext, target: Target | None) -> str | None:
        if not options(ctx).configured:
            return f"no packet capture configured: install it with {INSTALL_HINT}"
        if target is not None and target.expect in (Expect.NONE, Expect.DISABLE):
            return f"expect {target.expect.value}: plaintext on the wire is what policy says"
        if target is not None and not target.endpoints:
            return "no endpoints listed: the capture needs the pod IP:port of the flow"
        return None

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        assert target is not None
        session: _Session = ctx.shared("wire-session", lambda: _Session(ctx, self))
        v, ev = session.verdict(target)
        return make_result(
            self.name,
            target,
            None,
            v.verdict,
            v.reason,
            expected="TLS records, marker never in cleartext",
            observed={
                Verdict.PASS: "tls",
                Verdict.FAIL: "cleartext",
            }.get(v.verdict, v.evidence.get("error", "not-observed")),
            evidence={**v.evidence, **ev},
        )


@dataclass
class _Call:
    marked: Marked
    target: Target | None
    note: dict[str, Any] = field(default_factory=dict)


class _Session:
    def __init__(self, ctx: RunContext, check: WireCheck) -> None:
        self._ctx = ctx
        self._check = check
        self._lock = threading.Lock()
        self._done: dict[str, tuple[WireVerdict, dict[str, Any]]] | None = None

    def verdict(self, target: Target) -> tuple[WireVerdict, dict[str, Any]]:
        with self._lock:
            if self._done is None:
                self._done = self._run()
        return self._done.get(
            target.name,
            (WireVerdict(Verdict.ERROR, "not part of the wire session"), {}),
        )

    def _run(self) -> dict[str, tuple[WireVerdict, dict[str, Any]]]:
        ctx = self._ctx
        targets = [t for t in ctx.targets.targets if self._check.skip_reason(ctx, t) is None]
        calls = [
            _Call(Marked(t.name, tuple(canonical(str(e)) for e in t.endpoints), new_marker()), t)
            for t in targets
        ]
        control = _control(ctx)
        if control is None:
            v = WireVerdict(
                Verdict.ERROR,
                f"{BLIND}: the targets file lists no plaintext control (a target without a "
                "sidecar, under controls:) to prove it",
                {"error": "no-control"},
            )
            return {c.marked.name: (v, {}) for c in calls}
        opts = options(ctx)
        if opts.claim:
            return _claims(ctx, control, calls)
        try:
            obs = _observe(ctx, opts, [control, *calls])
        except _NoObservation as exc:
            v = WireVerdict(Verdict.ERROR, str(exc), {"error": "capture-failed"})
            return {c.marked.name: (v, c.note) for c in calls}
        seen = control_seen(obs, control.marked)
        verdicts = judge(obs, seen, [c.marked for c in calls])
        extra = {"control": control.marked.name, "control_call": control.note}
        return {
            c.marked.name: (v, {**extra, "call": c.note})
            for c, v in zip(calls, verdicts, strict=True)
        }


class _NoObservation(Exception):
    pass


def _control(ctx: RunContext) -> _Call | None:
    for c in ctx.targets.controls:
        if c.kind is ControlKind.PLAINTEXT and c.target.endpoints:
            eps = tuple(canonical(str(e)) for e in c.target.endpoints[:1])
            return _Call(Marked(c.target.name, eps, new_marker()), c.target)
    return None


def _claims(
    ctx: RunContext, control: _Call, calls: list[_Call]
) -> dict[str, tuple[WireVerdict, dict[str, Any]]]:
    """``--wire-claim``: make the calls, judge nothing; each target's result is ``error``
    (pending) and carries what was sent, for ``mtlsprobe run`` to judge from the node
    capture agent's report."""
    from probe.wire.claim import KEY, PENDING, Claim

    t0 = time.time()
    _make_calls(ctx, [control, *calls])
    t1 = time.time() + SETTLE  # packets still in flight belong to the calls
    pending = WireVerdict(Verdict.ERROR, PENDING, {"error": "capture-pending"})
    out: dict[str, tuple[WireVerdict, dict[str, Any]]] = {}
    for c in calls:
        claim = Claim(
            c.marked.marker,
            c.marked.endpoints,
            control.marked.name,
            control.marked.marker,
            control.marked.endpoints,
            t0,
            t1,
        )
        out[c.marked.name] = (
            pending,
            {
                KEY: claim.to_dict(),
                "control": control.marked.name,
                "call": c.note,
                "control_call": control.note,
            },
        )
    return out


def _observe(ctx: RunContext, opts: WireOptions, calls: list[_Call]) -> Observation:
    """Capture (local) or read the agent's report around the calls."""
    if opts.interface is not None:
        from probe.wire.capture import Capture, CaptureError, CaptureOptions

        budget = ctx.settings.timeout * 2 + 5
        cap = Capture(
            CaptureOptions(opts.interface, netns=opts.netns, seconds=budget, pcap_dir=opts.pcap_dir)
        )
        try:
            cap.start()
        except CaptureError as exc:
            raise _NoObservation(f"no capture: {exc}") from None
        try:
            _make_calls(ctx, calls)
            time.sleep(SETTLE)
        finally:
            obs = cap.stop()
        if obs.summary.stopped != "stopped":
            # A deadline or budget ended it while calls were still being made.
            raise _NoObservation(
                f"the capture on {opts.interface} ended before the calls did "
                f"({obs.summary.stopped}): their packets were not all seen"
            )
        return obs
    assert opts.report is not None
    t0 = time.time()
    _make_calls(ctx, calls)
    t1 = time.time()
    return _read_report(opts, ctx.settings.timeout, t0, t1)


def _read_report(opts: WireOptions, timeout: float, t0: float, t1: float) -> Observation:
    from probe.wire.record import MAX_BYTES, from_jsonl

    assert opts.report is not None
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            with opts.report.open("rb") as f:
                raw = f.read(MAX_BYTES + 1)
            if len(raw) > MAX_BYTES:
                raise _NoObservation(f"the capture report {opts.report} is over {MAX_BYTES} bytes")
            obs = from_jsonl(raw.decode(errors="replace").splitlines(), str(opts.report))
            break
        except (OSError, ValueError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise _NoObservation(f"no complete capture report within {timeout:g}s: {last}")
        time.sleep(REPORT_POLL)
    if obs.summary.started > t0 or obs.summary.ended < t1:
        raise _NoObservation(
            f"the capture report {opts.report} does not cover the calls (it ran "
            f"{obs.summary.started:.3f}-{obs.summary.ended:.3f}, the calls "
            f"{t0:.3f}-{t1:.3f})"
        )
    return obs


def _make_calls(ctx: RunContext, calls: list[_Call]) -> None:
    with ThreadPoolExecutor(max_workers=max(1, min(ctx.settings.concurrency, len(calls)))) as ex:
        list(ex.map(lambda c: _call(ctx, c), calls))


def _call(ctx: RunContext, c: _Call) -> None:
    """One marked call; what happened goes into ``note`` (the verdict is the capture's)."""
    t = c.target
    assert t is not None
    via_sidecar = t.expect is not Expect.NONE  # the control has no sidecar: called directly
    marker = c.marked.marker
    try:
        if t.protocol is Protocol.TCP:
            c.note["reply_bytes"] = _tcp_call(ctx, t, marker, via_sidecar)
        else:
            c.note["status"] = _http_call(ctx, t, marker, via_sidecar)
    except Exception as exc:
        c.note["call_error"] = f"{type(exc).__name__}: {exc}"[:300]


def _http_call(ctx: RunContext, t: Target, marker: str, via_sidecar: bool) -> int:
    from probe.checks.common import http_client

    client = http_client(ctx, via_sidecar=via_sidecar)
    path = t.echo_path or DEFAULT_ECHO_PATH
    sep = "&" if "?" in path else "?"
    if via_sidecar:
        url = f"http://{t.host}:{t.port}{path}{sep}{marker}"
    else:
        url = f"http://{t.endpoints[0]}{path}{sep}{marker}"
    # A new connection each call: its handshake is then inside the capture.
    resp = client.get(url, headers={HEADER: marker, "connection": "close"})
    return resp.status_code


def _tcp_call(ctx: RunContext, t: Target, marker: str, via_sidecar: bool) -> int:
    from probe.netio import connect

    timeout = ctx.settings.timeout
    proxy = ctx.targets.source.sidecar_proxy if via_sidecar else None
    dest = Endpoint(t.host, t.port) if via_sidecar else t.endpoints[0]
    if proxy is not None:
        sock = connect(Endpoint.parse(proxy.split("://", 1)[-1].rstrip("/")), timeout)
    else:
        sock = connect(dest, timeout)
    try:
        if proxy is not None and not _tunnel(sock, str(dest)):
            return 0
        sock.sendall(f"{marker}\n".encode())
        got = b""
        with contextlib.suppress(OSError):
            while len(got) < len(marker):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
        return len(got)
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def _tunnel(sock: socket.socket, authority: str) -> bool:
    """HTTP CONNECT through the lab's explicit sidecar proxy (in a pod the sidecar captures
    the connection): True when the proxy answered 200. ``sock`` has an I/O timeout."""
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 16384:
        chunk = sock.recv(1)  # byte by byte: what follows the head is the tunnel's
        if not chunk:
            return False
        head += chunk
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    return len(parts) >= 2 and parts[1] == b"200"


# ---- mtlsprobe run: the capture agent is opt-in -----------------------------------------------


def not_launched(names: list[str]) -> list[str]:
    """The checks ``run`` hands to its probe Jobs as asked: all but ``wire``, which joins
    the sidecar Job only when the node capture agent is installed (``jobs.launch.wire``)."""
    return [n for n in names if n != WireCheck.name]
