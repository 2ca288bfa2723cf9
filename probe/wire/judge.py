"""The ``wire`` verdicts, pure: an ``Observation`` and what was marked -> verdicts.

Per target (the probe's marked call to a service, which reaches one of its endpoints):

- ``fail``: the target's marker, or any marker on a flow to one of its endpoints, was
  seen in cleartext (the packet and offset are quoted); or a flow to it that was followed
  from its SYN carries bytes that are not TLS records.
- ``error``: the capture is blind (the control's plaintext marker was not seen), or
  incomplete (kernel drops, a full flow table, stopped early), or no packet of a flow to
  an endpoint was seen (wrong interface, encapsulation not opened), or a flow has holes,
  or no TLS application data after a handshake was seen. Never a pass on absence.
- ``pass``: flows to the endpoints were seen whole, they are TLS records with
  application data after a handshake, and no marker appears in cleartext.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from probe.results import Verdict
from probe.wire.record import FlowStat, MarkerSeen, Observation

BLIND = "the capture is blind: it did not see the control's plaintext"


@dataclass(frozen=True)
class Marked:
    """A marked call: who (``name``), to which endpoints (``ip:port``), from which client
    addresses (empty: any), with which marker."""

    name: str
    endpoints: tuple[str, ...]
    marker: str
    clients: tuple[str, ...] = ()


@dataclass(frozen=True)
class WireVerdict:
    verdict: Verdict
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)
    #: The control's verdict only: the host its plaintext came from (the probe's).
    client: str | None = None


def _host(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


def _touches(f: FlowStat | MarkerSeen, m: Marked) -> bool:
    if f.dst in m.endpoints:
        client = f.src
    elif f.src in m.endpoints:
        client = f.dst
    else:
        return False
    return not m.clients or _host(client) in m.clients


def _from(f: FlowStat, m: Marked, host: str) -> bool:
    """The flow's client side (the end that is not one of ``m``'s endpoints) is ``host``."""
    return _host(f.src if f.dst in m.endpoints else f.dst) == host


def _quote(s: MarkerSeen) -> str:
    where = (
        f"at byte {s.frame_offset} of packet {s.packet}"
        if s.frame_offset is not None
        else f"split across segments, completed in packet {s.packet}"
    )
    via = f" inside {s.encap}" if s.encap else ""
    return (
        f"marker {s.marker} in cleartext on {s.src} -> {s.dst}{via}, {where} "
        f"(stream offset {s.stream_offset})"
    )


def _sighting(s: MarkerSeen) -> dict[str, Any]:
    return {
        "marker": s.marker,
        "flow": f"{s.src} -> {s.dst}",
        "packet": s.packet,
        "frame_offset": s.frame_offset,
        "stream_offset": s.stream_offset,
        "encap": s.encap,
    }


def control_seen(obs: Observation, control: Marked) -> WireVerdict:
    """The negative control: its plaintext marker must be seen on a flow to it."""
    seen = [s for s in obs.markers if s.marker == control.marker and _touches(s, control)]
    if seen:
        s = seen[0]
        return WireVerdict(
            Verdict.PASS,
            f"the capture sees plaintext: {_quote(s)}",
            {"sighting": _sighting(s)},
            client=_host(s.dst if s.src in control.endpoints else s.src),
        )
    flows = [f for f in obs.flows if _touches(f, control)]
    why = (
        f"{len(flows)} flow(s) to it were seen but not its marker in cleartext"
        if flows
        else f"no packet to {', '.join(control.endpoints)} was seen on {obs.summary.interface}"
    )
    return WireVerdict(Verdict.ERROR, f"{BLIND} ({control.name}: {why})", {"flows": len(flows)})


def judge(obs: Observation, control: WireVerdict, marked: Sequence[Marked]) -> list[WireVerdict]:
    """One verdict per ``marked`` call, given the control's verdict (``control_seen``)."""
    return [_one(obs, control, m) for m in marked]


def _one(obs: Observation, control: WireVerdict, m: Marked) -> WireVerdict:
    leaks = [s for s in obs.markers if s.marker == m.marker or _touches(s, m)]
    flows = [f for f in obs.flows if _touches(f, m)]
    ev: dict[str, Any] = {
        "interface": obs.summary.interface,
        "marker": m.marker,
        "flows": [_flow(f) for f in flows[:20]],
    }
    if control.verdict is not Verdict.PASS:
        if leaks:
            ev["sighting"] = _sighting(leaks[0])
            ev["verdict_if_not_blind"] = "fail"
        return WireVerdict(Verdict.ERROR, control.reason, {**ev, "error": "capture-blind"})
    if leaks:
        return WireVerdict(
            Verdict.FAIL,
            _quote(leaks[0]),
            {**ev, "sighting": _sighting(leaks[0]), "sightings": len(leaks)},
        )
    plain = [f for f in flows if f.syn and f.not_tls_at is not None and f.dst in m.endpoints]
    if plain:
        f = plain[0]
        return WireVerdict(
            Verdict.FAIL,
            f"{f.src} -> {f.dst} carries bytes that are not TLS records "
            f"(from stream offset {f.not_tls_at})",
            ev,
        )
    if not obs.summary.complete:
        return WireVerdict(
            Verdict.ERROR,
            f"the capture is incomplete: {obs.summary.incomplete_reason()}",
            {**ev, "error": "capture-incomplete"},
        )
    if not flows:
        return WireVerdict(
            Verdict.ERROR,
            f"no packet of a flow to {', '.join(m.endpoints)} was seen on "
            f"{obs.summary.interface} (wrong interface, an encapsulation the capture cannot "
            "open, or the call took another path)",
            {**ev, "error": "flow-not-seen"},
        )
    holes = [f for f in flows if f.gaps]
    if holes:
        f = holes[0]
        return WireVerdict(
            Verdict.ERROR,
            f"{f.src} -> {f.dst} has {f.gaps} bytes the capture did not see: the marker "
            "could be there",
            {**ev, "error": "flow-incomplete"},
        )
    # A pass rests on the probe's own call: only flows from the host the control's
    # plaintext came from count as its TLS. Another client's TLS to the same endpoint
    # says nothing about a call whose flow the capture did not see.
    mine = (
        flows
        if m.clients or control.client is None
        else [f for f in flows if _from(f, m, control.client)]
    )
    if not mine:
        return WireVerdict(
            Verdict.ERROR,
            f"flows to {', '.join(m.endpoints)} were seen, but none from {control.client} "
            "(where the control's plaintext came from): the marked call's own flow was not "
            "seen (it took another path), only other clients' traffic",
            {**ev, "error": "flow-not-seen", "probe_host": control.client},
        )
    flows = mine
    tls = [f for f in flows if f.app_after_handshake and f.not_tls_at is None]
    # A connection the client's sidecar opened before the capture (a pooled one) shows no
    # handshake; consecutive well-framed records with application data still are TLS.
    joined = [
        f
        for f in flows
        if not f.syn and f.tls_records >= 2 and f.app_records and f.not_tls_at is None
    ]
    if not tls and joined:
        f = joined[0]
        return WireVerdict(
            Verdict.PASS,
            f"TLS on the wire: {f.src} -> {f.dst}{' inside ' + f.encap if f.encap else ''} "
            f"carries {f.tls_records} well-framed TLS records ({f.app_records} application "
            "data; the connection predates the capture, so its handshake was not seen); the "
            "marker never appeared in cleartext",
            {**ev, "handshake_seen": False},
        )
    if not tls:
        return WireVerdict(
            Verdict.ERROR,
            f"flows to {', '.join(m.endpoints)} were seen but no TLS application data after "
            "a handshake (the connection may predate the capture)",
            {**ev, "error": "no-tls-seen"},
        )
    f = tls[0]
    return WireVerdict(
        Verdict.PASS,
        f"TLS on the wire: {f.src} -> {f.dst}{' inside ' + f.encap if f.encap else ''} "
        f"carries {f.app_after_handshake} application-data records after the handshake; "
        "the marker never appeared in cleartext",
        {**ev, "handshake_seen": True},
    )


def _flow(f: FlowStat) -> dict[str, Any]:
    return {
        "flow": f"{f.src} -> {f.dst}",
        "packets": f.packets,
        "bytes": f.bytes,
        "tls_records": f.tls_records,
        "app_after_handshake": f.app_after_handshake,
        "app_records": f.app_records,
        "not_tls_at": f.not_tls_at,
        "gaps": f.gaps,
        "encap": f.encap,
    }
