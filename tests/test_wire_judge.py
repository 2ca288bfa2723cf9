"""The wire check's pure parts: decoding (Ethernet/IPv4/IPv6/TCP, VXLAN, Geneve), the
stream follower (markers across segments, TLS framing, holes), the report format and the
judge, including the servers that would make it lie."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from probe.results import Verdict
from probe.wire.capture import Tracker
from probe.wire.decode import decode
from probe.wire.judge import BLIND, Marked, control_seen, judge
from probe.wire.markers import new_marker
from probe.wire.record import Observation, from_jsonl
from tests.wireframes import (
    ETH_V4,
    ETH_V6,
    eth,
    geneve,
    ipv4,
    ipv6,
    tcp,
    tls_record,
    udp,
    v4_segment,
    vxlan,
)

C, S = "10.0.0.1", "10.0.0.2"
SYN = 0x02


def feed(tracker: Tracker, frames: list[bytes]) -> None:
    for f in frames:
        tracker.feed(f, len(f), len(f), True)


def conversation(
    client_bytes: Sequence[bytes], server_bytes: Sequence[bytes] = (), port: int = 443
) -> list[bytes]:
    """A TCP connection from its SYN: client segments, then server segments."""
    frames = [
        v4_segment(C, S, 40000, port, 999, b"", SYN),
        v4_segment(S, C, port, 40000, 4999, b"", SYN | 0x10),
    ]
    seq = 1000
    for b in client_bytes:
        frames.append(v4_segment(C, S, 40000, port, seq, b))
        seq += len(b)
    seq = 5000
    for b in server_bytes:
        frames.append(v4_segment(S, C, port, 40000, seq, b))
        seq += len(b)
    return frames


def observe(frames: list[bytes]) -> Observation:
    t = Tracker()
    feed(t, frames)
    return t.observation("eth0", None, 0, "stopped", (1.0, 2.0))


def tls_flow() -> list[bytes]:
    hello = tls_record(22, os.urandom(200))
    app = tls_record(23, os.urandom(300))
    return conversation(
        [hello, tls_record(20, b"\x01") + app], [tls_record(22, os.urandom(90)), app]
    )


def control_frames(marker: str) -> list[bytes]:
    return [
        v4_segment(C, "10.0.0.9", 41000, 80, 1, b"", SYN),
        v4_segment(C, "10.0.0.9", 41000, 80, 2, f"GET /?{marker} HTTP/1.1\r\n\r\n".encode()),
    ]


CONTROL = "10.0.0.9:80"


def verdicts(
    frames: list[bytes], marker: str, control_marker: str | None = None
) -> tuple[Verdict, str]:
    cm = control_marker or new_marker()
    obs = observe(frames + control_frames(cm))
    ctl = control_seen(obs, Marked("control", (CONTROL,), cm))
    (v,) = judge(obs, ctl, [Marked("t", (f"{S}:443",), marker)])
    return v.verdict, v.reason


def test_tls_flow_passes() -> None:
    v, reason = verdicts(tls_flow(), new_marker())
    assert v is Verdict.PASS, reason
    assert "application-data records after the handshake" in reason


def test_plaintext_marker_fails_with_offset() -> None:
    m = new_marker()
    v, reason = verdicts(conversation([f"GET /?{m} HTTP/1.1\r\n".encode()]), m)
    assert v is Verdict.FAIL
    # 14 Ethernet + 20 IP + 20 TCP + len("GET /?")
    assert f"marker {m} in cleartext on {C}:40000 -> {S}:443, at byte 60 of packet 3" in reason


def test_marker_split_across_segments_is_found() -> None:
    m = new_marker().encode()
    v, reason = verdicts(
        conversation([b"GET /?" + m[:9], m[9:20], m[20:] + b" HTTP/1.1\r\n"]), m.decode()
    )
    assert v is Verdict.FAIL
    assert "split across segments, completed in packet 5" in reason


def test_tls_looking_headers_then_cleartext_marker_fail() -> None:
    """The server that would make a framing-only judge lie: record headers, then the marker."""
    m = new_marker()
    fake = tls_record(22, b"x" * 20) + tls_record(23, b"y" * 10) + m.encode()
    v, reason = verdicts(conversation([tls_record(22, b"h" * 50)], [fake]), m)
    assert v is Verdict.FAIL
    assert m in reason


def test_marker_inside_a_tls_record_body_fails_too() -> None:
    """A record whose body is cleartext is not encryption: the marker inside it is seen."""
    m = new_marker()
    body = f"GET /?{m}".encode()
    v, _ = verdicts(conversation([tls_record(22, b"h" * 30), tls_record(23, body)]), m)
    assert v is Verdict.FAIL


def test_non_tls_bytes_without_marker_fail() -> None:
    v, reason = verdicts(conversation([b"PING\r\n" * 10]), new_marker())
    assert v is Verdict.FAIL
    assert "not TLS records (from stream offset 0)" in reason


def test_zero_packets_is_error_never_pass() -> None:
    v, reason = verdicts([], new_marker())
    assert v is Verdict.ERROR
    assert "no packet of a flow to 10.0.0.2:443 was seen" in reason


def test_control_not_seen_makes_everything_error() -> None:
    m = new_marker()
    obs = observe(tls_flow() + conversation([f"GET /?{m}".encode()], port=8080))
    ctl = control_seen(obs, Marked("control", (CONTROL,), new_marker()))
    assert ctl.verdict is Verdict.ERROR and BLIND in ctl.reason
    got = judge(
        obs, ctl, [Marked("tls", (f"{S}:443",), new_marker()), Marked("plain", (f"{S}:8080",), m)]
    )
    assert [v.verdict for v in got] == [Verdict.ERROR, Verdict.ERROR]
    assert all(BLIND in v.reason for v in got)
    assert got[1].evidence["verdict_if_not_blind"] == "fail"


def test_hole_in_flow_is_error() -> None:
    frames = tls_flow()
    del frames[2]  # the ClientHello segment: 205 bytes never seen
    v, reason = verdicts(frames, new_marker())
    assert v is Verdict.ERROR
    assert "bytes the capture did not see" in reason


def test_truncated_packet_is_a_hole() -> None:
    t = Tracker()
    frames = tls_flow()
    for i, f in enumerate(frames):
        n = len(f) - 100 if i == 2 else len(f)
        t.feed(f, n, len(f), True)
    cm = new_marker()
    feed(t, control_frames(cm))
    obs = t.observation("eth0", None, 0, "stopped", (1.0, 2.0))
    (v,) = judge(
        obs,
        control_seen(obs, Marked("c", (CONTROL,), cm)),
        [Marked("t", (f"{S}:443",), new_marker())],
    )
    assert v.verdict is Verdict.ERROR and "did not see" in v.reason
    assert obs.summary.truncated == 1


def test_kernel_drops_make_it_incomplete() -> None:
    t = Tracker()
    feed(t, tls_flow())
    cm = new_marker()
    feed(t, control_frames(cm))
    obs = t.observation("eth0", None, 3, "stopped", (1.0, 2.0))
    (v,) = judge(
        obs,
        control_seen(obs, Marked("c", (CONTROL,), cm)),
        [Marked("t", (f"{S}:443",), new_marker())],
    )
    assert v.verdict is Verdict.ERROR and "kernel dropped 3 packets" in v.reason


def test_handshake_only_is_not_a_pass() -> None:
    v, reason = verdicts(conversation([tls_record(22, b"h" * 50)]), new_marker())
    assert v is Verdict.ERROR
    assert "no TLS application data" in reason


def test_joined_mid_stream_tls_passes_with_note() -> None:
    frames = [
        v4_segment(C, S, 40000, 443, 7000, tls_record(23, os.urandom(100))),
        v4_segment(C, S, 40000, 443, 7105, tls_record(23, os.urandom(50))),
    ]
    v, reason = verdicts(frames, new_marker())
    assert v is Verdict.PASS, reason
    assert "handshake was not seen" in reason


def test_retransmission_is_not_a_hole_nor_a_second_sighting() -> None:
    m = new_marker()
    frames = conversation([f"GET /?{m}".encode()])
    obs = observe([*frames, frames[-1]])
    assert len(obs.markers) == 1
    assert all(f.gaps == 0 for f in obs.flows)


@pytest.mark.parametrize("wrap", ["vxlan", "geneve-eth", "geneve-ip", "ipv6-outer", "ipv6-inner"])
def test_encapsulations_are_opened(wrap: str) -> None:
    m = new_marker()
    inner_tcp = tcp(40000, 443, 1000, f"GET /?{m}".encode())
    inner_v4 = ipv4(C, S, 6, inner_tcp)
    if wrap == "vxlan":
        frame = eth(
            ipv4("192.168.0.1", "192.168.0.2", 17, udp(5555, 4789, vxlan(eth(inner_v4, ETH_V4)))),
            ETH_V4,
        )
    elif wrap == "geneve-eth":
        frame = eth(
            ipv4(
                "192.168.0.1",
                "192.168.0.2",
                17,
                udp(5555, 6081, geneve(eth(inner_v4, ETH_V4), options=b"\x01" * 8)),
            ),
            ETH_V4,
        )
    elif wrap == "geneve-ip":
        frame = eth(
            ipv4("192.168.0.1", "192.168.0.2", 17, udp(5555, 6081, geneve(inner_v4, ptype=ETH_V4))),
            ETH_V4,
        )
    elif wrap == "ipv6-outer":
        frame = eth(
            ipv6("fd00::1", "fd00::2", 17, udp(5555, 4789, vxlan(eth(inner_v4, ETH_V4)))), ETH_V6
        )
    else:
        frame = eth(
            ipv4(
                "192.168.0.1",
                "192.168.0.2",
                17,
                udp(5555, 4789, vxlan(eth(ipv6("fd00::a", "fd00::b", 6, inner_tcp), ETH_V6))),
            ),
            ETH_V4,
        )
    seg = decode(frame, len(frame), True)
    assert seg is not None
    assert seg.encap == wrap.split("-", maxsplit=1)[0].replace("ipv6", "vxlan")
    obs = observe([frame])
    assert [s.marker for s in obs.markers] == [m]
    if wrap == "ipv6-inner":
        assert obs.markers[0].dst == "[fd00::b]:443"


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00" * 13,
        eth(b"\x45" + b"\x00" * 5, ETH_V4),
        eth(ipv4(C, S, 17, udp(1, 53, b"dns")), ETH_V4),
        eth(ipv4(C, S, 17, udp(1, 4789, b"\x00" * 8 + b"junk")), ETH_V4),  # VXLAN without I flag
        eth(ipv4(C, S, 17, udp(1, 6081, b"\x80" + b"\x00" * 7)), ETH_V4),  # Geneve version 2
        eth(ipv4(C, S, 6, b"\x00" * 10), ETH_V4),  # short TCP header
    ],
)
def test_junk_frames_decode_to_nothing(frame: bytes) -> None:
    assert decode(frame, len(frame), True) is None


def test_report_round_trips_and_rejects_junk() -> None:
    m = new_marker()
    obs = observe(tls_flow() + conversation([f"GET /?{m}".encode()], port=80))
    again = from_jsonl(list(obs.to_jsonl()), "r.jsonl")
    assert again == obs
    lines = list(obs.to_jsonl())
    with pytest.raises(ValueError, match="not complete"):
        from_jsonl(lines[:-1], "r.jsonl")
    with pytest.raises(ValueError, match=r"r.jsonl:1: packet is not a valid int"):
        from_jsonl([lines[0].replace('"packet":', '"packet":-', 1), *lines[1:]], "r.jsonl")
    with pytest.raises(ValueError, match=r"r\.jsonl:1: not JSON"):
        from_jsonl(["{", *lines], "r.jsonl")
    hostile = lines[0].replace(f'"marker":"{m}"', '"marker":"\\u001b[2Jx"')
    with pytest.raises(ValueError, match="marker is not a valid str"):
        from_jsonl([hostile, *lines[1:]], "r.jsonl")
    with pytest.raises(ValueError, match="unknown line type"):
        from_jsonl(['{"type":"x"}'], "r.jsonl")


def test_filter_assembles() -> None:
    from probe.wire import bpf

    code = bpf.assemble(bpf.program(1000))
    assert len(code) % 8 == 0 and len(code) // 8 == len(bpf.program(1000))


def test_endpoints_are_matched_in_one_spelling() -> None:
    from probe.wire.record import canonical

    assert canonical("[fd00:0:0::1]:443") == "[fd00::1]:443"
    assert canonical("[FD00::A]:80") == "[fd00::a]:80"
    assert canonical("10.0.0.2:443") == "10.0.0.2:443"
    assert canonical("echo.ns-a:80") == "echo.ns-a:80"
