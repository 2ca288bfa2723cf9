"""Text that came from outside (files, servers, the API) made safe to print.

Two rules: a message never formats an unbounded value, and a value never reaches a
terminal, a log line or a one-line error raw - control characters, line and
paragraph separators (U+2028/U+2029), bidi overrides and lone surrogates are shown
escaped (``\\x1b``, ``\\u2028``, ``\\ud800``).
"""

from __future__ import annotations

import reprlib

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = 4
_REPR.maxdict = 3
_REPR.maxlong = 40


def bounded(value: object, limit: int = 60) -> str:
    """``repr``-style rendering of ``value`` (strings quoted), at most about ``limit``
    characters, never containing a raw control character."""
    if isinstance(value, str):
        _REPR.maxstring = limit
        try:
            return _REPR.repr(value)
        finally:
            _REPR.maxstring = 60
    return escape(_REPR.repr(value))[: limit + 20]


def escape(text: str) -> str:
    """``text`` with every non-printable character (``str.isprintable``: control,
    format, separator other than space, surrogate, unassigned) written as an escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


def line(text: str, limit: int = 400) -> str:
    """``text`` as one bounded line: escaped, cut to ``limit`` characters with '…'."""
    out = escape(text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _escape_char(c: str) -> str:
    o = ord(c)
    if o < 0x100:
        return f"\\x{o:02x}"
    if o < 0x10000:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"
