"""The targets model written back as YAML (``mtlsprobe plan -o yaml``, the ConfigMaps of
``mtlsprobe run``): what ``probe.model.load_targets`` reads, from ``TargetsFile.to_dict()``."""

from __future__ import annotations

import json
import re
from typing import Any

# Plain (unquoted) only for what can't read as another type: starts with a letter, no
# ": " or " #", no trailing ":", not a YAML 1.1 boolean/null word.
_PLAIN = re.compile(r"[A-Za-z](?:[A-Za-z0-9._/:@-]*[A-Za-z0-9._/@-])?")
_YAML_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"})


def _scalar(v: object) -> str:
    """A YAML scalar: strings double-quoted with JSON escapes (valid YAML), so no value
    can turn into another type or break the structure."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    text = str(v)
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)


def _flow(d: dict[str, Any]) -> str:
    """A list item that is a mapping (a target's ``authz:`` case), as a flow mapping."""
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in d.items()) + "}"


def targets_yaml(doc: dict[str, Any]) -> str:
    """The targets document as block YAML. Written directly: PyYAML's representer takes
    seconds for 6,000 targets; this shape is fixed (scalars, one mapping, lists)."""
    out: list[str] = []
    for key, val in doc.items():
        if key in ("targets", "controls"):
            out.append(f"{key}:" if val else f"{key}: []")
            for t in val:
                first = True
                for k, v in t.items():
                    lead = "- " if first else "  "
                    first = False
                    if isinstance(v, list):
                        items = ", ".join(
                            _flow(x) if isinstance(x, dict) else _scalar(x) for x in v
                        )
                        out.append(f"{lead}{k}: [{items}]")
                    else:
                        out.append(f"{lead}{k}: {_scalar(v)}")
        elif isinstance(val, dict):
            out.append(f"{key}:")
            out.extend(f"  {k}: {_scalar(v)}" for k, v in val.items())
        else:
            out.append(f"{key}: {_scalar(val)}")
    return "\n".join(out) + "\n"
