"""Benchmark: CPU of the ``wire`` capture per 10,000 packets, against a baseline measured
in the same run, and its memory per followed flow.

    .venv/bin/python -m benchmarks.bench_wire [--packets 50000] [--append BENCHMARKS.md]

1. Offline (no root): ``Tracker.feed`` (decode, stream, TLS framing, marker search) over
   synthetic frames, against a loop that only touches each frame (the Python floor).
2. Live (root): a veth pair between two network namespaces, a sender process streaming
   TLS-framed records; in this process, on the same AF_PACKET socket with the kernel filter,
   a plain receive loop (the baseline) and the capture's receive + follow, each over the
   same number of packets; CPU is this thread's ``time.thread_time``.
3. Memory: tracemalloc of a Tracker following 10,000 flows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from probe.wire.capture import SNAPLEN, Tracker, open_socket
from probe.wire.decode import frame_start
from tests.test_wire_netns import SERVER_IP, netns_pair
from tests.wireframes import tls_record, v4_segment

PER = 10_000


def offline(n: int, payload: int) -> tuple[float, float]:
    """(baseline, capture) CPU ms per 10,000 frames of ``payload``-byte TLS segments."""
    frames = []
    seqs: dict[int, int] = {}
    for i in range(n):
        flow = i % 100
        body = tls_record(23, b"\xab" * (payload - 5))
        seq = seqs.get(flow, 1000)
        frames.append(v4_segment("10.0.0.1", "10.0.1.1", 30000 + flow, 443, seq, body))
        seqs[flow] = seq + len(body)

    def baseline() -> None:
        total = 0
        for f in frames:
            total += len(f)

    def capture() -> None:
        t = Tracker()
        for f in frames:
            t.feed(f, len(f), len(f), True)

    return _cpu(baseline, n), _cpu(capture, n)


def _cpu(fn: Callable[[], None], n: int, rounds: int = 5) -> float:
    out = []
    for _ in range(rounds):
        t0 = time.thread_time()
        fn()
        out.append((time.thread_time() - t0) * 1000 * PER / n)
    return statistics.median(out)


SENDER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rec = bytes([23, 3, 3, 5, 115]) + b"\\xab" * 1395
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    s.sendall(rec)
"""

SINK = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(8)
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    while c.recv(1 << 20):
        pass
"""


def live(packets: int) -> tuple[float, float, float, int]:
    """(baseline, capture) CPU ms per 10,000 packets, mean captured bytes per packet, drops."""
    with netns_pair() as p:
        sink = subprocess.Popen(
            ["ip", "netns", "exec", p.server_ns, sys.executable, "-c", SINK, SERVER_IP, "9000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        sender = None
        try:
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            sender = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    p.client_ns,
                    sys.executable,
                    "-c",
                    SENDER,
                    SERVER_IP,
                    "9000",
                    "600",
                ]
            )
            sock = open_socket(p.client_if, p.client_ns)
            sock.setblocking(True)
            try:
                buf = bytearray(SNAPLEN)
                view = memoryview(buf)
                results: dict[str, list[float]] = {"base": [], "cap": []}
                sizes: list[int] = []
                for _ in range(3):
                    for mode in ("base", "cap"):
                        t = Tracker()
                        got = 0
                        size = 0
                        t0 = time.thread_time()
                        while got < packets:
                            n, address = sock.recvfrom_into(buf, 0, socket.MSG_TRUNC)
                            got += 1
                            size += n
                            if mode == "cap":
                                t.feed(view, min(n, SNAPLEN), n, frame_start(address[3]))
                        results[mode].append((time.thread_time() - t0) * 1000 * PER / packets)
                        sizes.append(size // packets)
                from probe.wire.bpf import kernel_stats

                drops = kernel_stats(sock)[1]
            finally:
                sock.close()
        finally:
            for proc in (sender, sink):
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=10)
    return (
        statistics.median(results["base"]),
        statistics.median(results["cap"]),
        statistics.mean(sizes),
        drops,
    )


def memory(flows: int) -> float:
    """Bytes per followed flow (tracemalloc), each flow fed one segment with a marker tail."""
    frames = [
        v4_segment("10.0.0.1", "10.0.1.1", 10000 + i % 50000, 443 + i // 50000, 1, b"x" * 600)
        for i in range(flows)
    ]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t = Tracker()
    for f in frames:
        t.feed(f, len(f), len(f), True)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(t.flows) == flows
    return (after - before) / flows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=50_000)
    ap.add_argument("--append", type=Path)
    args = ap.parse_args()
    lines = [
        f"`.venv/bin/python -m benchmarks.bench_wire --packets {args.packets}` on "
        f"{platform.machine()}, {dt.date.today()}, {os.cpu_count()} cores, load average at "
        f"start {os.getloadavg()[0]:.1f}:",
        "",
    ]
    for payload in (1400, 100):
        base, cap = offline(args.packets, payload)
        lines.append(
            f"- offline, {payload}-byte TLS segments over 100 flows: capture "
            f"{cap:.1f} ms CPU per 10,000 packets, touch-only loop {base:.2f} ms"
        )
    if os.geteuid() == 0:
        base, cap, size, drops = live(args.packets)
        lines.append(
            f"- live on a veth (sender streaming 1,400-byte TLS records, mean {size:.0f} "
            f"captured bytes per packet): plain AF_PACKET receive loop {base:.1f} ms CPU per "
            f"10,000 packets, capture (receive + decode + follow) {cap:.1f} ms: "
            f"**{cap / base:.1f}x** the plain loop; kernel drops {drops}"
        )
    else:
        lines.append("- live: skipped (needs root)")
    per_flow = memory(10_000)
    lines.append(f"- memory: {per_flow:.0f} bytes per followed TCP direction (10,000 flows)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with args.append.open("a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
