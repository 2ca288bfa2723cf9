"""One line of a log or a file read as a JSON object, or None when it is not one: pod
logs, capture reports and evidence bundles interleave JSON lines with other text."""

from __future__ import annotations

import json
from typing import Any


def json_object(text: str, prefix: str = "{") -> dict[str, Any] | None:
    """``text`` parsed when it starts with ``prefix`` (checked before any parsing, so
    prose costs nothing) and is a JSON object; None otherwise."""
    if not text.startswith(prefix):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
