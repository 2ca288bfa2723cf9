"""The wire markers: a random token each marked call carries (in the path and a header).

A fixed prefix lets a capture find every marker with one substring search per segment,
without being told the markers in advance (a node agent is not told them).
"""

from __future__ import annotations

import re
import secrets

PREFIX = b"mtlsprobe-wire-"
TOKEN_HEX = 24  # 96 random bits
LENGTH = len(PREFIX) + TOKEN_HEX
HEADER = "x-mtlsprobe-wire"
_HEX = frozenset(b"0123456789abcdef")
_MARKER = re.compile(r"^mtlsprobe-wire-[0-9a-f]{24}$")


def new_marker() -> str:
    return PREFIX.decode() + secrets.token_hex(TOKEN_HEX // 2)


def is_marker(text: str) -> bool:
    return bool(_MARKER.match(text))


def find_all(buf: bytes, start: int = 0) -> list[tuple[int, str]]:
    """(index, marker) of every complete marker in ``buf`` starting at or after ``start``."""
    out: list[tuple[int, str]] = []
    i = buf.find(PREFIX, start)
    while i >= 0:
        token = buf[i + len(PREFIX) : i + LENGTH]
        if len(token) == TOKEN_HEX and _HEX.issuperset(token):
            out.append((i, buf[i : i + LENGTH].decode()))
        i = buf.find(PREFIX, i + 1)
    return out
