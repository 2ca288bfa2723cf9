"""Frames built by hand for the wire tests: Ethernet, IPv4/IPv6, TCP, UDP, VXLAN, Geneve."""

from __future__ import annotations

import ipaddress
import struct

ETH_V4 = 0x0800
ETH_V6 = 0x86DD


def eth(payload: bytes, etype: int) -> bytes:
    return (
        b"\x02\x00\x00\x00\x00\x01"
        + b"\x02\x00\x00\x00\x00\x02"
        + struct.pack("!H", etype)
        + payload
    )


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        1,
        0x4000,  # DF
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + payload


def ipv6(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), proto, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def tcp(sport: int, dport: int, seq: int, payload: bytes, flags: int = 0x18) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def vxlan(inner_frame: bytes, vni: int = 42) -> bytes:
    return struct.pack("!BxxxI", 0x08, vni << 8) + inner_frame


def geneve(inner: bytes, ptype: int = 0x6558, options: bytes = b"") -> bytes:
    assert len(options) % 4 == 0
    return (
        struct.pack("!BBH", len(options) // 4, 0, ptype)
        + struct.pack("!I", 42 << 8)
        + options
        + inner
    )


def v4_segment(
    src: str, dst: str, sport: int, dport: int, seq: int, payload: bytes, flags: int = 0x18
) -> bytes:
    return eth(ipv4(src, dst, 6, tcp(sport, dport, seq, payload, flags)), ETH_V4)


def tls_record(ctype: int, body: bytes) -> bytes:
    return struct.pack("!BBBH", ctype, 3, 3, len(body)) + body
