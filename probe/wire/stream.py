"""One TCP direction followed as a byte stream, in bounded memory.

Markers are searched across segment boundaries (the last ``LENGTH - 1`` bytes are kept);
TLS record framing is walked (type, version, length) so a stream is known to be TLS
records from its first byte, or not. Nothing else of the payload is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from probe.wire.markers import LENGTH, find_all

_TAIL = LENGTH - 1
_MAX_RECORD = (1 << 14) + 2048  # TLSCiphertext.length bound (RFC 5246 6.2.3)
HANDSHAKE, APPLICATION_DATA = 22, 23
_CONTENT_TYPES = frozenset((20, 21, 22, 23))
_MAX_REPORTED = 256  # sightings remembered per direction (dedup of retransmitted copies)


@dataclass(frozen=True, slots=True)
class Sighting:
    """A marker seen in cleartext: where in the stream, and in which captured packet."""

    marker: str
    stream_offset: int
    packet: int  # ordinal of the packet in which the marker was completed
    frame_offset: int | None  # byte offset in that packet's frame; None: split across segments


class TlsWalk:
    """Walks TLS record headers over a stream. ``synced``: record boundaries are known
    (from the stream's first byte, or found at a segment start when joined mid-stream)."""

    __slots__ = (
        "app_after_handshake",
        "app_records",
        "handshakes",
        "hdr",
        "not_tls_at",
        "records",
        "skip",
        "synced",
    )

    def __init__(self, synced: bool) -> None:
        self.synced = synced
        self.skip = 0  # bytes left of the current record's body
        self.hdr = b""
        self.records = 0
        self.handshakes = 0
        self.app_after_handshake = 0
        self.app_records = 0
        self.not_tls_at: int | None = None

    def feed(self, data: bytes, offset: int) -> None:
        """One segment's new bytes, at stream ``offset``. Unsynced, a segment that starts
        with a valid record header resyncs (senders write records at segment starts)."""
        if self.not_tls_at is not None:
            return
        if not self.synced:
            if not _valid_header(data[:5]):
                return
            self.synced, self.skip, self.hdr = True, 0, b""
        i, n = 0, len(data)
        while i < n:
            if self.skip:
                step = min(self.skip, n - i)
                self.skip -= step
                i += step
                continue
            need = 5 - len(self.hdr)
            self.hdr += data[i : i + need]
            i += min(need, n - i)
            if len(self.hdr) < 5:
                return
            hdr, self.hdr = self.hdr, b""
            if not _valid_header(hdr):
                self.not_tls_at = offset + i - 5
                return
            self.records += 1
            if hdr[0] == HANDSHAKE:
                self.handshakes += 1
            elif hdr[0] == APPLICATION_DATA:
                self.app_records += 1
                if self.handshakes:
                    self.app_after_handshake += 1
            self.skip = (hdr[3] << 8) | hdr[4]

    def lost(self) -> None:
        """Bytes were not seen: record boundaries are unknown until a segment resyncs."""
        self.synced, self.skip, self.hdr = False, 0, b""


def _valid_header(h: bytes) -> bool:
    return (
        len(h) == 5
        and h[0] in _CONTENT_TYPES
        and h[1] == 3
        and h[2] <= 4
        and ((h[3] << 8) | h[4]) <= _MAX_RECORD
    )


class Direction:
    """One direction of a TCP connection (src -> dst)."""

    __slots__ = (
        "bytes",
        "encap",
        "gaps",
        "next_seq",
        "offset",
        "packets",
        "reported",
        "syn",
        "tail",
        "tls",
    )

    def __init__(self, encap: str) -> None:
        self.packets = 0
        self.bytes = 0
        self.gaps = 0  # payload bytes never seen (drops, truncation, joined after a hole)
        self.next_seq: int | None = None
        self.syn = False
        self.offset = 0  # stream bytes processed
        self.tail = b""
        self.encap = encap
        self.tls = TlsWalk(synced=False)
        self.reported: set[tuple[str, int]] = set()

    def feed(
        self,
        seq: int,
        syn: bool,
        payload: bytes,
        missing: int,
        packet: int,
        frame_start: int,
    ) -> list[Sighting]:
        """Take one segment's payload (``frame_start``: where it starts in its frame)."""
        self.packets += 1
        if syn:
            self.syn = True
            self.next_seq = (seq + 1) & 0xFFFFFFFF
            self.tls = TlsWalk(synced=True)
            seq = (seq + 1) & 0xFFFFFFFF
        if self.next_seq is None:
            self.next_seq = seq
        if not payload and not missing:
            return []
        rel = (seq - self.next_seq) & 0xFFFFFFFF
        early: list[Sighting] = []
        if rel >= 1 << 31:  # before next_seq: a retransmission, maybe with new bytes after
            skip = (1 << 32) - rel
            # Bytes already followed are not followed again, but they are on the wire
            # (a retransmission, or a late out-of-order segment): a marker in them is a
            # marker in cleartext, whatever the first copy said.
            early = self._search_resent(payload, skip, packet, frame_start)
            if skip >= len(payload):
                return self._new(early)
            payload = payload[skip:]
            frame_start += skip
        elif rel:
            self._lose(rel)
            self.next_seq = seq
        self.bytes += len(payload)
        self.tls.feed(payload, self.offset)
        buf = self.tail + payload
        base = self.offset - len(self.tail)
        sightings = [
            Sighting(
                marker,
                base + i,
                packet,
                frame_start + i - len(self.tail) if i >= len(self.tail) else None,
            )
            for i, marker in find_all(buf)
        ]
        if early:
            sightings = [*early, *sightings]
        if sightings:
            sightings = self._new(sightings)
        self.offset += len(payload)
        self.next_seq = (self.next_seq + len(payload)) & 0xFFFFFFFF
        self.tail = buf[-_TAIL:]
        if missing:
            self._lose(missing)
            self.next_seq = (self.next_seq + missing) & 0xFFFFFFFF
        return sightings

    def _new(self, sightings: list[Sighting]) -> list[Sighting]:
        """Each (marker, stream offset) once: a retransmitted copy is not a second leak."""
        out = []
        for x in sightings:
            key = (x.marker, x.stream_offset)
            if key not in self.reported:
                out.append(x)
                if len(self.reported) < _MAX_REPORTED:
                    self.reported.add(key)
        return out

    def _search_resent(
        self, payload: bytes, skip: int, packet: int, frame_start: int
    ) -> list[Sighting]:
        """Markers that start within the first ``skip`` bytes of ``payload`` (bytes at
        stream offsets already passed), each whole within this segment."""
        base = self.offset - skip
        return [
            Sighting(marker, base + i, packet, frame_start + i)
            for i, marker in find_all(payload)
            if i < skip
        ]

    def _lose(self, n: int) -> None:
        self.gaps += n
        self.offset += n
        self.tail = b""
        self.tls.lost()
