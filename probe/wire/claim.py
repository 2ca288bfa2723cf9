"""What a probe pod of ``mtlsprobe run`` says it sent for ``wire`` (``--wire-claim``): per
target its marker and endpoints, the control's marker and endpoint, and when the calls ran.
The orchestrator judges it against the node capture agent's report (``jobs.launch.wire``);
until then the result is ``error`` (``PENDING``), so a claim nobody judged never passes.

Which pod sent it (its IP, its node) is not in the claim: the orchestrator reads that from
the pod's status, not from what the pod says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from probe.wire.markers import is_marker

KEY = "wireClaim"  # the result's evidence key
PENDING = (
    "not judged: the marked calls were made, the node capture agent's report was not read "
    "(mtlsprobe run judges this result; alone, use --wire-interface or --wire-report)"
)
MAX_ENDPOINTS = 1000


@dataclass(frozen=True)
class Claim:
    marker: str
    endpoints: tuple[str, ...]
    control: str  # the control target's name
    control_marker: str
    control_endpoints: tuple[str, ...]
    started: float  # unix seconds, the pod's clock (the node's: the agent shares it)
    ended: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["endpoints"] = list(self.endpoints)
        d["control_endpoints"] = list(self.control_endpoints)
        return d

    @classmethod
    def from_dict(cls, raw: object) -> Claim:
        """ValueError naming the field when ``raw`` is not a claim."""
        if not isinstance(raw, dict):
            raise ValueError("the wire claim is not an object")
        for key in ("marker", "control_marker"):
            v = raw.get(key)
            if not isinstance(v, str) or not is_marker(v):
                raise ValueError(f"the wire claim's {key} is not a marker")
        eps: dict[str, tuple[str, ...]] = {}
        for key in ("endpoints", "control_endpoints"):
            v = raw.get(key)
            if (
                not isinstance(v, list)
                or not 0 < len(v) <= MAX_ENDPOINTS
                or not all(isinstance(e, str) and 0 < len(e) <= 100 for e in v)
            ):
                raise ValueError(f"the wire claim's {key} is not a list of endpoints")
            eps[key] = tuple(v)
        control = raw.get("control")
        if not isinstance(control, str) or not 0 < len(control) <= 300:
            raise ValueError("the wire claim's control is not a name")
        times: list[float] = []
        for key in ("started", "ended"):
            v = raw.get(key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"the wire claim's {key} is not a time")
            times.append(float(v))
        if not 0 < times[0] <= times[1]:
            raise ValueError("the wire claim's times are not an interval")
        return cls(
            str(raw["marker"]),
            eps["endpoints"],
            control,
            str(raw["control_marker"]),
            eps["control_endpoints"],
            times[0],
            times[1],
        )
