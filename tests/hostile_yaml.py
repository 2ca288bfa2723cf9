"""YAML written to exhaust a loader, shared by the tests of every file we read."""

from __future__ import annotations

import string


def billion_laughs(levels: int = 9, fan: int = 9) -> str:
    """An alias bomb: ``fan ** levels`` strings from a few hundred bytes."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        prev, cur = string.ascii_lowercase[i - 1], string.ascii_lowercase[i]
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * fan) + "]")
    return "\n".join(lines) + "\n"
