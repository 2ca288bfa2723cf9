"""The kernel filter of the capture: classic BPF attached with SO_ATTACH_FILTER.

Written by hand because it is a dozen instructions: the kept capture libraries (libpcap
bindings) would add a C library to the probe image for one compiled expression. The
filter keeps TCP over IPv4/IPv6 and UDP to the VXLAN (4789, 8472) and Geneve ports, drops
the rest in the kernel, and loads relative to the network header (``SKF_NET_OFF``) and the skb's
protocol, so it works on Ethernet, loopback and raw-IP devices alike.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass

SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_STATISTICS = 6

VXLAN_PORT = 4789  # IANA
VXLAN_LINUX_PORT = 8472  # the Linux kernel's default, used by flannel and Cilium
GENEVE_PORT = 6081

# Opcodes (linux/filter.h).
_LD, _LDX, _ALU, _JMP, _RET, _MISC = 0x00, 0x01, 0x04, 0x05, 0x06, 0x07
_W, _H, _B = 0x00, 0x08, 0x10
_ABS, _IND = 0x20, 0x40
_AND, _LSH = 0x50, 0x60
_JEQ = 0x10
_TAX = 0x00
_SKF_AD_PROTOCOL = (-0x1000) & 0xFFFFFFFF
_NET = -0x100000  # SKF_NET_OFF: offsets from the network header


@dataclass(frozen=True)
class Insn:
    code: int
    k: int = 0
    jt: str | int = 0  # a label, or 0 (next instruction)
    jf: str | int = 0

    def pack(self, here: int, labels: dict[str, int]) -> bytes:
        def rel(target: str | int) -> int:
            if isinstance(target, int):
                return target
            off = labels[target] - here - 1
            if not 0 <= off < 256:
                raise ValueError(f"jump to {target} out of range")
            return off

        return struct.pack("HBBI", self.code, rel(self.jt), rel(self.jf), self.k & 0xFFFFFFFF)


def _net(k: int) -> int:
    return (_NET + k) & 0xFFFFFFFF


def program(snaplen: int) -> list[tuple[str | None, Insn]]:
    """(label, instruction) pairs of the filter; ``snaplen`` bytes of a kept frame."""
    ldb = _LD | _B | _ABS
    ldh = _LD | _H | _ABS
    jeq = _JMP | _JEQ
    return [
        (None, Insn(_LD | _W | _ABS, _SKF_AD_PROTOCOL)),
        (None, Insn(jeq, 0x0800, "v4", 0)),
        (None, Insn(jeq, 0x86DD, "v6", "drop")),
        ("v4", Insn(ldb, _net(9))),
        (None, Insn(jeq, socket.IPPROTO_TCP, "accept", 0)),
        (None, Insn(jeq, socket.IPPROTO_UDP, 0, "drop")),
        (None, Insn(ldb, _net(0))),
        (None, Insn(_ALU | _AND, 0x0F)),
        (None, Insn(_ALU | _LSH, 2)),
        (None, Insn(_MISC | _TAX)),
        (None, Insn(_LD | _H | _IND, _net(2))),  # UDP destination port
        (None, Insn(jeq, VXLAN_PORT, "accept", 0)),
        (None, Insn(jeq, VXLAN_LINUX_PORT, "accept", 0)),
        (None, Insn(jeq, GENEVE_PORT, "accept", "drop")),
        ("v6", Insn(ldb, _net(6))),  # next header (extension headers are not followed)
        (None, Insn(jeq, socket.IPPROTO_TCP, "accept", 0)),
        (None, Insn(jeq, socket.IPPROTO_UDP, 0, "drop")),
        (None, Insn(ldh, _net(42))),
        (None, Insn(jeq, VXLAN_PORT, "accept", 0)),
        (None, Insn(jeq, VXLAN_LINUX_PORT, "accept", 0)),
        (None, Insn(jeq, GENEVE_PORT, "accept", "drop")),
        ("accept", Insn(_RET, snaplen)),
        ("drop", Insn(_RET, 0)),
    ]


def assemble(prog: list[tuple[str | None, Insn]]) -> bytes:
    labels = {label: i for i, (label, _) in enumerate(prog) if label}
    return b"".join(insn.pack(i, labels) for i, (_, insn) in enumerate(prog))


DROP_ALL = assemble([(None, Insn(_RET, 0))])


def attach(sock: socket.socket, code: bytes) -> None:
    """SO_ATTACH_FILTER with ``code`` (packed sock_filter array)."""
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def kernel_stats(sock: socket.socket) -> tuple[int, int]:
    """(packets, drops) the kernel counted since the last read (PACKET_STATISTICS)."""
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    packets, drops = struct.unpack("II", raw)
    return packets, drops
