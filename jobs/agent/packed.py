"""The last round's results, kept between rounds as one compressed blob.

At 10,000 endpoints a round is 30,000 ``Result`` objects with their evidence dicts:
~30 MiB of small Python objects that would stay live for a whole interval (they back
``/results`` and the HTML page, both rendered only on request) while the next round
builds its own 30,000 beside them, and that pin pymalloc arenas the next round's
garbage then cannot give back. Packed, they are a few MiB in one allocation. Pickle
round-trips every field exactly (enums, ``None``, nested evidence), so what is served
from the blob is what the round produced; the blob is made and read in this process
only, never from outside.
"""

from __future__ import annotations

import io
import pickle
import zlib
from collections.abc import Iterator, Sequence
from typing import overload

from probe.results import Result

# zlib level 1: ~8x smaller than the pickle at a fraction of the CPU of level 6.
_LEVEL = 1
# Results per pickle: bounds the pickler's memo; big enough that framing costs nothing.
_CHUNK = 1000


class _Compressing:
    """A write-only file that zlib-compresses what is written to it."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(_LEVEL)
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(self._z.compress(data))
        return len(data)

    def finish(self) -> bytes:
        self._parts.append(self._z.flush())
        return b"".join(self._parts)


class PackedResults(Sequence[Result]):
    """An immutable sequence of results stored as ``zlib(pickle(tuple))``.

    Every access unpacks the whole round (~0.1 s at 30,000 results): iterate it once,
    or ``unpack()`` once and index the tuple; it is read once per round by whatever is
    rendered from it."""

    __slots__ = ("_blob", "_len")

    def __init__(self, results: Sequence[Result]) -> None:
        # Pickled straight into the compressor, frame by frame, a chunk at a time: at the
        # round's memory peak neither the whole pickle (~13 MB at 30,000 results) nor a
        # pickler's memo of every object in the round (tens of MB) exists at once.
        sink = _Compressing()
        for start in range(0, len(results), _CHUNK):
            chunk = tuple(results[start : start + _CHUNK])
            pickle.Pickler(sink, protocol=pickle.HIGHEST_PROTOCOL).dump(chunk)
        self._blob = sink.finish()
        self._len = len(results)

    @property
    def nbytes(self) -> int:
        return len(self._blob)

    def unpack(self) -> tuple[Result, ...]:
        stream = io.BytesIO(zlib.decompress(self._blob))
        out: list[Result] = []
        for _ in range(0, self._len, _CHUNK):
            out.extend(pickle.load(stream))  # noqa: S301 - our own blob
        return tuple(out)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Result]:
        return iter(self.unpack())

    @overload
    def __getitem__(self, index: int) -> Result: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Result, ...]: ...
    def __getitem__(self, index: int | slice) -> Result | tuple[Result, ...]:
        return self.unpack()[index]

    def __repr__(self) -> str:
        return f"PackedResults({self._len} results, {len(self._blob)} bytes)"
