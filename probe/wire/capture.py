"""The capture: an AF_PACKET socket on one interface (optionally inside a network
namespace) with the kernel filter of ``bpf``, read in a thread until stopped, a deadline
or a byte/packet budget, each TCP direction followed by ``stream.Direction``.

Bounded: one receive buffer, a flow table of ``max_flows`` directions each holding a
marker-sized tail, at most ``max_sightings`` sightings. Packets go to disk only with
``pcap_dir`` (debugging).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from probe.wire import bpf
from probe.wire.decode import ARPHRD_LOOPBACK, SYN, decode, frame_start
from probe.wire.netns import in_netns
from probe.wire.record import FlowStat, MarkerSeen, Observation, Summary, addr
from probe.wire.stream import Direction

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ANY = "any"  # every interface of the namespace (a node: veths, bridge, uplink)
SNAPLEN = 262_144  # a GSO super-frame fits whole; a longer one counts as truncated


class CaptureError(Exception):
    """The capture could not start; the message says why, in one line."""


@dataclass(frozen=True)
class CaptureOptions:
    interface: str
    netns: str | None = None
    seconds: float = 60.0
    max_bytes: int = 512 << 20
    max_packets: int = 5_000_000
    max_flows: int = 65_536
    max_sightings: int = 10_000
    pcap_dir: Path | None = None


def open_socket(interface: str, netns: str | None = None) -> socket.socket:
    """An AF_PACKET socket bound to ``interface`` with the filter attached, nothing queued
    from before the filter (a drop-all filter first, then drain, then the real one)."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            bpf.attach(sock, bpf.DROP_ALL)
            if interface != ANY:  # unbound, a packet socket sees every interface
                sock.bind((interface, ETH_P_ALL))
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    sock.recv(1)
            bpf.attach(sock, bpf.assemble(bpf.program(SNAPLEN)))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            bpf.kernel_stats(sock)  # reading resets the counters
        except BaseException:
            sock.close()
            raise
        return sock

    where = f"{interface}" + (f" in network namespace {netns}" if netns else "")
    try:
        return in_netns(netns, make)
    except PermissionError:
        raise CaptureError(
            f"cannot open a packet socket on {where}: needs CAP_NET_RAW (root in the lab, "
            "the capture agent of k8s/overlays/wire in a cluster)"
        ) from None
    except OSError as exc:
        raise CaptureError(f"cannot capture on {where}: {exc.strerror or exc}") from None


class Tracker:
    """Frames in, flows and marker sightings out. Pure apart from the optional pcap."""

    def __init__(self, max_flows: int = 65_536, max_sightings: int = 10_000) -> None:
        self.flows: dict[tuple[bytes, int, bytes, int], Direction] = {}
        self.sightings: list[MarkerSeen] = []
        self.packets = 0
        self.bytes = 0
        self.truncated = 0
        self.flows_dropped = 0
        self.sightings_dropped = 0
        self._max_flows = max_flows
        self._max_sightings = max_sightings

    def feed(self, frame: bytes | memoryview, captured: int, wire_len: int, ethernet: bool) -> None:
        self.packets += 1
        self.bytes += captured
        if wire_len > captured:
            self.truncated += 1
        seg = decode(frame, captured, ethernet)
        if seg is None:
            return
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        d = self.flows.get(key)
        if d is None:
            if len(self.flows) >= self._max_flows:
                self.flows_dropped += 1
                return
            d = self.flows[key] = Direction(seg.encap)
        payload = bytes(frame[seg.start : seg.end])
        seen = d.feed(seg.seq, bool(seg.flags & SYN), payload, seg.missing, self.packets, seg.start)
        for s in seen:
            if len(self.sightings) >= self._max_sightings:
                self.sightings_dropped += 1
                continue
            self.sightings.append(
                MarkerSeen(
                    s.marker,
                    addr(seg.src, seg.sport),
                    addr(seg.dst, seg.dport),
                    s.packet,
                    s.frame_offset,
                    s.stream_offset,
                    d.encap,
                )
            )

    def observation(
        self,
        interface: str,
        netns: str | None,
        kernel_drops: int,
        stopped: str,
        window: tuple[float, float],
    ) -> Observation:
        flows = tuple(
            FlowStat(
                src=addr(k[0], k[1]),
                dst=addr(k[2], k[3]),
                packets=d.packets,
                bytes=d.bytes,
                gaps=d.gaps,
                syn=d.syn,
                tls_records=d.tls.records,
                handshakes=d.tls.handshakes,
                app_after_handshake=d.tls.app_after_handshake,
                app_records=d.tls.app_records,
                not_tls_at=d.tls.not_tls_at,
                encap=d.encap,
            )
            for k, d in self.flows.items()
        )
        summary = Summary(
            interface=interface,
            netns=netns,
            started=window[0],
            ended=window[1],
            packets=self.packets,
            bytes=self.bytes,
            kernel_drops=kernel_drops,
            truncated=self.truncated,
            flows_dropped=self.flows_dropped,
            sightings_dropped=self.sightings_dropped,
            stopped=stopped,
        )
        return Observation(summary, flows, tuple(self.sightings))


class Capture:
    """``start()`` opens the socket (CaptureError if it cannot) and reads in a thread;
    ``stop()`` ends it and returns the observation. A context manager."""

    def __init__(self, options: CaptureOptions) -> None:
        self.options = options
        self._tracker = Tracker(options.max_flows, options.max_sightings)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopped = "stopped"
        self._drops = 0
        self._started = 0.0

    def start(self) -> Capture:
        self._sock = open_socket(self.options.interface, self.options.netns)
        self._started = time.time()
        self._thread = threading.Thread(target=self._loop, name="mtlsprobe-wire", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self) -> None:
        """Block until the capture ends by itself (deadline or budget)."""
        if self._thread is not None:
            self._thread.join()

    def ended(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds; True once the capture ended by itself."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> Observation:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return self._tracker.observation(
            self.options.interface,
            self.options.netns,
            self._drops,
            self._stopped,
            (self._started, time.time()),
        )

    def _loop(self) -> None:
        sock = self._sock
        assert sock is not None
        opts = self.options
        buf = bytearray(SNAPLEN)
        view = memoryview(buf)
        tracker = self._tracker
        deadline = time.monotonic() + opts.seconds
        pcap = _Pcap.open(opts.pcap_dir, opts.interface) if opts.pcap_dir else None
        try:
            while not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    self._stopped = "deadline"
                    break
                if tracker.bytes >= opts.max_bytes:
                    self._stopped = "byte-budget"
                    break
                if tracker.packets >= opts.max_packets:
                    self._stopped = "packet-budget"
                    break
                try:
                    n, address = sock.recvfrom_into(buf, 0, socket.MSG_TRUNC)
                except BlockingIOError:
                    select.select([sock], [], [], min(left, 0.05))
                    continue
                _name, _proto, pkttype, hatype = address[:4]
                if hatype == ARPHRD_LOOPBACK and pkttype == PACKET_OUTGOING:
                    continue  # loopback shows each packet twice
                got = min(n, SNAPLEN)
                tracker.feed(view, got, n, frame_start(hatype))
                if pcap is not None:
                    pcap.write(view[:got], n)
            self._drops += bpf.kernel_stats(sock)[1]
        except OSError as exc:
            self._stopped = f"error: {exc.strerror or exc}"
        finally:
            if pcap is not None:
                pcap.close()


class _Pcap:
    """A classic pcap file (Ethernet link type), only when asked for (--pcap DIR)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    @classmethod
    def open(cls, directory: Path, interface: str) -> _Pcap:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"wire-{interface}-{os.getpid()}-{int(time.time())}.pcap"
        out = path.open("wb")
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, 1))
        return cls(out)

    def write(self, frame: memoryview, wire_len: int) -> None:
        now = time.time()
        sec = int(now)
        self._out.write(struct.pack("<IIII", sec, int((now - sec) * 1e6), len(frame), wire_len))
        self._out.write(frame)

    def close(self) -> None:
        self._out.close()
