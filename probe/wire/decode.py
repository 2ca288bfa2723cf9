"""Frames to TCP segments: Ethernet (802.1Q tags skipped) or raw IP, IPv4/IPv6, TCP,
and inside VXLAN (UDP 4789, or 8472 as Linux, flannel and Cilium use) and Geneve (UDP 6081)
to the inner frame or IP header.

Addresses stay bytes (formatting them per packet costs CPU); ``record`` formats them.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from probe.wire.bpf import GENEVE_PORT, VXLAN_LINUX_PORT, VXLAN_PORT

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 0xFFFE  # tun, WireGuard: frames start at the IP header
ARPHRD_RAWIP = 519

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = (0x8100, 0x88A8)
_TEB = 0x6558  # Geneve: the payload is an Ethernet frame
_MAX_DEPTH = 3  # outer + two encapsulations

_H = struct.Struct("!H")
_TCP = struct.Struct("!HHIIBB")
# version/IHL, total length, flags/fragment offset, protocol, src, dst
_IPV4 = struct.Struct("!BxHxxHxB2x4s4s")
_IPV6 = struct.Struct("!4xHBx16s16s")  # payload length, next header, src, dst
_UDP_PORTS = struct.Struct("!HH")


class Segment(NamedTuple):
    """One TCP segment: addresses as bytes, payload as [start, end) of the frame."""

    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    flags: int
    start: int
    end: int
    missing: int  # payload bytes the IP header announces beyond what was captured
    encap: str  # "" or "vxlan" / "geneve" (outermost first, "+" joined)


SYN = 0x02
ACK = 0x10


def frame_start(hatype: int) -> bool:
    """True when frames of this link type start with an Ethernet header."""
    return hatype in (ARPHRD_ETHER, ARPHRD_LOOPBACK)


def decode(frame: bytes | memoryview, length: int, ethernet: bool) -> Segment | None:
    """The TCP segment in ``frame[:length]``, or None (not TCP, a fragment, malformed).
    ``ethernet``: the frame starts with an Ethernet header (else at the IP header)."""
    off = 0
    encap = ""
    for _ in range(_MAX_DEPTH):
        if ethernet:
            if length < off + 14:
                return None
            etype = _H.unpack_from(frame, off + 12)[0]
            off += 14
            while etype in _ETH_VLAN:
                if length < off + 4:
                    return None
                etype = _H.unpack_from(frame, off + 2)[0]
                off += 4
        else:
            if length < off + 1:
                return None
            etype = _ETH_IPV4 if frame[off] >> 4 == 4 else _ETH_IPV6
        got = _ip(frame, off, length, etype)
        if got is None:
            return None
        proto, src, dst, l4, l4_end = got
        if proto == 6:
            return _tcp(frame, l4, l4_end, length, src, dst, encap)
        # UDP: only the tunnel ports get through the kernel filter.
        if l4 + 8 > length:
            return None
        dport = _UDP_PORTS.unpack_from(frame, l4)[1]
        inner = l4 + 8
        if dport in (VXLAN_PORT, VXLAN_LINUX_PORT):
            if inner + 8 > length or not frame[inner] & 0x08:  # the I flag: a valid VNI
                return None
            off, ethernet = inner + 8, True
            encap = f"{encap}+vxlan" if encap else "vxlan"
        elif dport == GENEVE_PORT:
            if inner + 8 > length or frame[inner] >> 6 != 0:
                return None
            opt_len = (frame[inner] & 0x3F) * 4
            ptype = _H.unpack_from(frame, inner + 2)[0]
            off = inner + 8 + opt_len
            if ptype == _TEB:
                ethernet = True
            elif ptype in (_ETH_IPV4, _ETH_IPV6):
                ethernet = False
            else:
                return None
            encap = f"{encap}+geneve" if encap else "geneve"
        else:
            return None
    return None


def _ip(
    frame: bytes | memoryview, off: int, length: int, etype: int
) -> tuple[int, bytes, bytes, int, int] | None:
    """(protocol, src, dst, L4 start, L4 end as the IP header says)."""
    if etype == _ETH_IPV4:
        if length < off + 20:
            return None
        vihl, total, frag, proto, src, dst = _IPV4.unpack_from(frame, off)
        ihl = (vihl & 0x0F) * 4
        if ihl < 20 or frag & 0x3FFF:  # a fragment: its TCP header may be elsewhere
            return None
        return proto, src, dst, off + ihl, off + total
    if etype == _ETH_IPV6:
        if length < off + 40:
            return None
        plen, nxt, src, dst = _IPV6.unpack_from(frame, off)
        return nxt, src, dst, off + 40, off + 40 + plen
    return None


def _tcp(
    frame: bytes | memoryview,
    l4: int,
    l4_end: int,
    length: int,
    src: bytes,
    dst: bytes,
    encap: str,
) -> Segment | None:
    if l4 + 20 > length:
        return None
    sport, dport, seq, _ack, doff, flags = _TCP.unpack_from(frame, l4)
    start = l4 + (doff >> 4) * 4
    if start > l4_end:
        return None
    end = min(l4_end, length)
    return Segment(
        src, dst, sport, dport, seq, flags, start, max(start, end), max(0, l4_end - end), encap
    )
