"""Reading a YAML file the bounded way: a regular file of at most N bytes, strict UTF-8
without NUL, then ``probe.yamlload``'s bounded loader. The I/O half of loading a targets
file, a manifest or a compliance mapping."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from probe import yamlfast
from probe.yamlload import Limits, YamlLoadError, load_all, load_one

# Below this, checking that the fast road agrees costs about what it saves.
FAST_MIN_CHARS = 64 << 10


def read_text(path: Path, max_bytes: int) -> str:
    """The text of a regular file of at most ``max_bytes``, strict UTF-8 without NUL.

    Opened non-blocking so a FIFO without a writer cannot hang the open; the type is
    checked on the open descriptor (``fstat``), so a swap after a check cannot slip a
    device in; reading stops one byte past the cap whatever ``st_size`` claims.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise YamlLoadError(f"cannot read: {exc.strerror or exc}") from None
    except ValueError:  # embedded NUL in the path
        raise YamlLoadError("cannot read: invalid path") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise YamlLoadError("is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise YamlLoadError("not a regular file (a FIFO, socket or device?)")
        if st.st_size > max_bytes:
            raise YamlLoadError(f"larger than {max_bytes} bytes")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise YamlLoadError(f"larger than {max_bytes} bytes")
    except OSError as exc:
        raise YamlLoadError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise YamlLoadError(f"NUL byte at line {line} (not a text file)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlLoadError(f"not UTF-8 text (byte {exc.start + 1}, line {line})") from None


def load_file(path: Path, limits: Limits, *, single: bool, fast: bool = False) -> list[object]:
    """Read and load ``path`` (every document, or exactly one with ``single``). With
    ``fast``, large plain text may take ``probe.yamlfast``'s road: the same values,
    ~2.5x sooner (manifests of a whole cluster)."""
    text = read_text(path, limits.max_bytes)
    if fast and not single and len(text) >= FAST_MIN_CHARS:
        docs = yamlfast.load_all(text, limits)
        if docs is not None:
            return docs
    if single:
        return [load_one(text, limits)]
    return load_all(text, limits)


def load_or_emit(path: Path, limits: Limits) -> list[object] | yamlfast.Emitted:
    """``load_file(path, limits, single=False, fast=True)``, except that a file on the
    fast road comes back as rapidyaml's JSON (``yamlfast.build`` makes the values):
    a worker process emits, the process that needs the values builds them once."""
    text = read_text(path, limits.max_bytes)
    if len(text) >= FAST_MIN_CHARS:
        emitted = yamlfast.emit(text, limits)
        if emitted is not None:
            return emitted
    return load_all(text, limits)
