"""What a capture saw, as data and as JSON lines: the format ``mtlsprobe wire-capture``
prints and a node capture agent reports (one ``marker`` line per marker seen in
cleartext, one ``flow`` line per TCP direction, one ``capture`` summary, then ``end``).

A reader of a report trusts nothing in it: bad lines are a one-line ValueError.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from probe.jsonline import json_object

FORMAT = "mtlsprobe.wire/v1"
MAX_LINES = 200_000
MAX_LINE = 4096
MAX_BYTES = 64 << 20  # a report file larger than this is not read


def addr(ip: bytes, port: int) -> str:
    """``10.0.0.1:443`` / ``[fd00::1]:443`` (the targets file's endpoint spelling)."""
    if len(ip) == 4:
        return f"{ip[0]}.{ip[1]}.{ip[2]}.{ip[3]}:{port}"
    return f"[{ipaddress.IPv6Address(ip)}]:{port}"


def canonical(endpoint: str) -> str:
    """``endpoint`` (``ip:port`` / ``[v6]:port``) spelled as ``addr`` spells captured
    addresses, so a targets file's ``[fd00:0::1]:80`` matches; other text is unchanged."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        return endpoint
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return endpoint
    return addr(ip.packed, int(port))


@dataclass(frozen=True)
class FlowStat:
    """One TCP direction src -> dst as the capture followed it."""

    src: str
    dst: str
    packets: int
    bytes: int
    gaps: int  # payload bytes not seen
    syn: bool  # the stream was seen from its start
    tls_records: int
    handshakes: int
    app_after_handshake: int  # application_data records after a handshake record
    app_records: int  # application_data records (also on a stream joined mid-way)
    not_tls_at: int | None  # stream offset where bytes stopped being TLS records
    encap: str


@dataclass(frozen=True)
class MarkerSeen:
    """A marker seen in cleartext."""

    marker: str
    src: str
    dst: str
    packet: int
    frame_offset: int | None
    stream_offset: int
    encap: str


@dataclass(frozen=True)
class Summary:
    interface: str
    netns: str | None
    started: float  # unix seconds
    ended: float
    packets: int  # frames the filter let through
    bytes: int
    kernel_drops: int
    truncated: int  # frames longer than what was captured
    flows_dropped: int  # TCP directions not followed (flow table full)
    sightings_dropped: int
    stopped: str  # stopped | deadline | byte-budget | packet-budget | error: ...

    @property
    def complete(self) -> bool:
        """Everything the filter let through was followed, and the capture ran until told
        to stop (a budget or an error ends it early: later flows were not seen)."""
        return (
            self.kernel_drops == 0
            and self.flows_dropped == 0
            and self.sightings_dropped == 0
            and self.stopped in ("stopped", "deadline")
        )

    def incomplete_reason(self) -> str:
        parts = []
        if self.kernel_drops:
            parts.append(f"the kernel dropped {self.kernel_drops} packets")
        if self.flows_dropped:
            parts.append(f"{self.flows_dropped} flows were not followed (flow table full)")
        if self.sightings_dropped:
            parts.append(f"{self.sightings_dropped} marker sightings were not kept")
        if self.stopped not in ("stopped", "deadline"):
            parts.append(f"the capture ended early ({self.stopped})")
        return "; ".join(parts)


@dataclass(frozen=True)
class Observation:
    summary: Summary
    flows: tuple[FlowStat, ...]
    markers: tuple[MarkerSeen, ...]

    def to_jsonl(self) -> Iterator[str]:
        for m in self.markers:
            yield json.dumps({"type": "marker", **asdict(m)}, separators=(",", ":"))
        for f in self.flows:
            yield json.dumps({"type": "flow", **asdict(f)}, separators=(",", ":"))
        yield json.dumps(
            {"type": "capture", "format": FORMAT, **asdict(self.summary)}, separators=(",", ":")
        )
        yield json.dumps({"type": "end"})


def from_jsonl(lines: Iterable[str], origin: str) -> Observation:
    """Read a report; ValueError naming ``origin`` and the line when it is not one."""
    summary: Summary | None = None
    flows: list[FlowStat] = []
    markers: list[MarkerSeen] = []
    ended = False
    for n, text in enumerate(lines, 1):
        where = f"{origin}:{n}"
        if n > MAX_LINES:
            raise ValueError(f"{origin}: more than {MAX_LINES} lines")
        if len(text) > MAX_LINE:
            raise ValueError(f"{where}: line longer than {MAX_LINE} characters")
        if not text.strip():
            continue
        try:
            doc = json.loads(text)
        except ValueError:
            raise ValueError(f"{where}: not JSON") from None
        kind = doc.get("type") if isinstance(doc, dict) else None
        if kind == "marker":
            markers.append(_build(MarkerSeen, doc, where))
        elif kind == "flow":
            flows.append(_build(FlowStat, doc, where))
        elif kind == "capture":
            if doc.get("format") != FORMAT:
                raise ValueError(f"{where}: format is not {FORMAT}")
            summary = _build(Summary, doc, where)
        elif kind == "end":
            ended = True
            break
        else:
            raise ValueError(f"{where}: unknown line type {str(kind)[:40]!r}")
    if summary is None or not ended:
        raise ValueError(f"{origin}: the report is not complete (no capture summary and end)")
    return Observation(summary, tuple(flows), tuple(markers))


def _build(cls: Any, doc: dict[str, Any], where: str) -> Any:
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in doc:
            raise ValueError(f"{where}: {f.name} is missing")
        v = doc[f.name]
        want = f.type if isinstance(f.type, str) else f.type.__name__
        ok = {
            "str": isinstance(v, str),
            "int": isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "bool": isinstance(v, bool),
            "int | None": v is None or (isinstance(v, int) and not isinstance(v, bool)),
            "str | None": v is None or isinstance(v, str),
            "float": isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
        }.get(want, False)
        if not ok or (isinstance(v, str) and (len(v) > 300 or not v.isprintable())):
            raise ValueError(f"{where}: {f.name} is not a valid {want}")
        values[f.name] = v
    return cls(**values)


RECORD_TYPES = frozenset({"marker", "flow", "capture", "end"})


def _record_type(text: str) -> str | None:
    """The ``type`` of a report line, None for anything else a pod log holds (the agent's
    stderr, a runtime's notes, text that merely mentions a marker)."""
    doc = json_object(text, '{"type":')
    kind = doc.get("type") if doc is not None else None
    return kind if isinstance(kind, str) and kind in RECORD_TYPES else None


def windows(lines: Iterable[str], origin: str) -> tuple[list[Observation], list[str]]:
    """The reports in a capture agent's log (``wire-capture --repeat``: one per window,
    each ended by ``end``), in order, and one problem line per report that did not parse.
    Lines that are not report records are skipped; a report cut off by the end of the log
    (still being written, or the log read was cut) is not returned."""
    out: list[Observation] = []
    problems: list[str] = []
    current: list[str] = []
    for text in lines:
        kind = _record_type(text.strip())
        if kind is None:
            continue
        current.append(text.strip())
        if kind != "end":
            continue
        try:
            out.append(from_jsonl(current, f"{origin} report {len(out) + len(problems) + 1}"))
        except ValueError as exc:
            problems.append(str(exc))
        current = []
    return out, problems
