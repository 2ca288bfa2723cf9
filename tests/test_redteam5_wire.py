"""Red-team round 5 for the wire judge, with crafted packet streams (pure).

Liars tried:
- a TLS-framed flow whose retransmitted segment (same sequence numbers as bytes
  already seen) carries the marker in cleartext: the packet on the wire shows it, but
  the stream follower dropped retransmitted bytes unsearched; before round 5 this
  passed ("TLS on the wire").
- ``17 03 03`` record headers around a cleartext marker split across segments: fail.
- an out-of-order segment carrying the marker (it arrives after a later one): fail.
- the marker split across out-of-order segments: never a pass (a hole first).
"""

from __future__ import annotations

import os

from probe.results import Verdict
from probe.wire.capture import Tracker
from probe.wire.judge import Marked, control_seen, judge
from probe.wire.markers import new_marker
from probe.wire.record import Observation
from tests.wireframes import tls_record, v4_segment

C, S = "10.0.0.1", "10.0.0.2"
SYN = 0x02


def _observe(frames: list[bytes]) -> Observation:
    t = Tracker()
    for f in frames:
        t.feed(f, len(f), len(f), True)
    return t.observation("eth0", None, 0, "stopped", (1.0, 2.0))


def _verdict(flow: list[bytes], marker: str) -> tuple[Verdict, str]:
    control = new_marker()
    frames = [
        v4_segment(C, "10.0.0.9", 41000, 80, 1, b"", SYN),
        v4_segment(C, "10.0.0.9", 41000, 80, 2, f"GET /?{control} HTTP/1.1\r\n\r\n".encode()),
        *flow,
    ]
    obs = _observe(frames)
    ctl = control_seen(obs, Marked("control", ("10.0.0.9:80",), control))
    assert ctl.verdict is Verdict.PASS, ctl.reason
    (v,) = judge(obs, ctl, [Marked("ns-a/echo", (f"{S}:443",), marker)])
    return v.verdict, v.reason


def _handshake() -> list[bytes]:
    return [
        v4_segment(C, S, 40000, 443, 999, b"", SYN),
        v4_segment(S, C, 443, 40000, 4999, b"", SYN | 0x10),
        v4_segment(C, S, 40000, 443, 1000, tls_record(22, os.urandom(200))),
        v4_segment(S, C, 443, 40000, 5000, tls_record(22, os.urandom(90))),
    ]


def test_marker_in_a_retransmitted_segment_fails() -> None:
    marker = new_marker()
    app = tls_record(23, os.urandom(300))
    seq = 1000 + 205
    leak = (b"\x17\x03\x03\x01\x2c" + f"GET /?{marker} HTTP/1.1\r\n".encode()).ljust(len(app), b"x")
    flow = [
        *_handshake(),
        v4_segment(C, S, 40000, 443, seq, app),
        v4_segment(C, S, 40000, 443, seq, leak),  # same sequence numbers: a retransmission
        v4_segment(S, C, 443, 40000, 5095, tls_record(23, os.urandom(50))),
    ]
    verdict, reason = _verdict(flow, marker)
    assert verdict is Verdict.FAIL, reason
    assert marker in reason


def test_marker_in_a_retransmission_with_new_bytes_after_fails() -> None:
    marker = new_marker()
    first = tls_record(23, os.urandom(100))
    seq = 1000 + 205
    again = first[:60] + f"{marker}".encode() + first[60 + len(marker) :] + b"\x17\x03\x03\x00\x00"
    flow = [
        *_handshake(),
        v4_segment(C, S, 40000, 443, seq, first),
        v4_segment(C, S, 40000, 443, seq, again),
    ]
    verdict, reason = _verdict(flow, marker)
    assert verdict is Verdict.FAIL, reason


def _cleartext_marker_record() -> tuple[str, bytes, int]:
    """A marked cleartext request framed as one TLS application-data record, and an
    offset that cuts the marker in two."""
    marker = new_marker()
    body = b"GET /?" + marker.encode() + b" HTTP/1.1\r\n\r\n"
    record = b"\x17\x03\x03" + len(body).to_bytes(2, "big") + body
    return marker, record, 5 + 6 + 10  # header, "GET /?", 10 bytes into the marker


def test_record_headers_around_a_split_cleartext_marker_fail() -> None:
    marker, record, cut = _cleartext_marker_record()
    seq = 1000 + 205
    flow = [
        *_handshake(),
        v4_segment(C, S, 40000, 443, seq, record[:cut]),
        v4_segment(C, S, 40000, 443, seq + cut, record[cut:]),
    ]
    verdict, reason = _verdict(flow, marker)
    assert verdict is Verdict.FAIL, reason


def test_marker_in_an_out_of_order_segment_fails() -> None:
    marker = new_marker()
    a = tls_record(23, os.urandom(100))
    b = tls_record(23, b"pad " + marker.encode() + b" pad")
    c = tls_record(23, os.urandom(100))
    seq = 1000 + 205
    flow = [
        *_handshake(),
        v4_segment(C, S, 40000, 443, seq, a),
        v4_segment(C, S, 40000, 443, seq + len(a) + len(b), c),  # ahead of b
        v4_segment(C, S, 40000, 443, seq + len(a), b),  # late: holds the marker
    ]
    verdict, reason = _verdict(flow, marker)
    assert verdict is Verdict.FAIL, reason


def test_marker_split_across_out_of_order_segments_never_passes() -> None:
    marker, record, cut = _cleartext_marker_record()
    seq = 1000 + 205
    flow = [
        *_handshake(),
        v4_segment(C, S, 40000, 443, seq + cut, record[cut:]),
        v4_segment(C, S, 40000, 443, seq, record[:cut]),
    ]
    verdict, reason = _verdict(flow, marker)
    assert verdict is not Verdict.PASS, reason


def _other_client_tls() -> list[bytes]:
    """A whole TLS connection to the endpoint from 10.0.0.7, not the probe's host."""
    o = "10.0.0.7"
    return [
        v4_segment(o, S, 40001, 443, 999, b"", SYN),
        v4_segment(S, o, 443, 40001, 4999, b"", SYN | 0x10),
        v4_segment(o, S, 40001, 443, 1000, tls_record(22, os.urandom(200))),
        v4_segment(S, o, 443, 40001, 5000, tls_record(22, os.urandom(90))),
        v4_segment(o, S, 40001, 443, 1205, tls_record(23, os.urandom(300))),
        v4_segment(S, o, 443, 40001, 5095, tls_record(23, os.urandom(300))),
    ]


def test_another_clients_tls_is_no_pass_for_the_probes_unseen_call() -> None:
    """The marked call took a path the capture did not see; another client's mTLS
    connection to the same endpoint was captured. Before round 5: pass ("TLS on the
    wire: 10.0.0.7:40001 -> ..."), resting on someone else's flow."""
    verdict, reason = _verdict(_other_client_tls(), new_marker())
    assert verdict is Verdict.ERROR, reason
    assert "none from 10.0.0.1" in reason, reason


def test_the_probes_own_tls_flow_next_to_another_clients_passes() -> None:
    own = [
        *_handshake(),
        v4_segment(C, S, 40000, 443, 1205, tls_record(23, os.urandom(300))),
    ]
    verdict, reason = _verdict([*_other_client_tls(), *own], new_marker())
    assert verdict is Verdict.PASS, reason
    assert "10.0.0.1:40000" in reason, reason
