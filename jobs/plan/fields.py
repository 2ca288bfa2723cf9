"""Reading raw Kubernetes and Istio bodies: accessors that never raise.

Objects stay the JSON bodies the API server (or a YAML file) gave us - plain dicts,
typed loosely as ``KubeObject`` (copying 10,000 pods into generated model classes costs
time and memory and buys the policy engine nothing). ``jobs.plan.admission`` has
already refused bodies of the wrong shape; these accessors still answer something
sensible for a missing field, so no reader has to defend against absence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

KubeObject = dict[str, Any]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if type(m) is dict else _EMPTY


def name(obj: Mapping[str, Any]) -> str:
    n = meta(obj).get("name")
    return n if type(n) is str else ""


def namespace(obj: Mapping[str, Any]) -> str:
    n = meta(obj).get("namespace")
    return n if type(n) is str else ""


def _str_map(raw: object) -> dict[str, str]:
    """A copy of a labels/annotations map. The API server only stores strings there; a
    YAML value that is not one simply never equals the strings policies compare with."""
    return dict(raw) if type(raw) is dict else {}


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return _str_map(meta(obj).get("labels"))


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return _str_map(meta(obj).get("annotations"))


def label_map(obj: Mapping[str, Any]) -> Mapping[str, str]:
    """The object's labels themselves, not a copy: for readers on hot paths (the
    planner looks at every pod's labels several times)."""
    m = meta(obj).get("labels")
    return m if type(m) is dict else _EMPTY


def annotation_map(obj: Mapping[str, Any]) -> Mapping[str, str]:
    """The object's annotations themselves, not a copy (``label_map``)."""
    m = meta(obj).get("annotations")
    return m if type(m) is dict else _EMPTY


# Go's zero time.Time (0001-01-01T00:00:00Z) in Unix seconds: what an object without a
# creationTimestamp orders as in Istio (time.Time.Compare puts it first).
ZERO_TIME = -62135596800
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})\Z"
)


def parse_time(raw: object) -> tuple[int, int] | None:
    """A creationTimestamp as (Unix seconds, nanoseconds); None when it is not a time.

    Accepted: RFC 3339 strings as ``metav1.Time`` reads them (k8s.io/apimachinery
    pkg/apis/meta/v1/time.go ``UnmarshalJSON``: Go's ``time.RFC3339`` layout - ``T``,
    ``Z`` or a numeric offset, optional fractional seconds up to nanoseconds), and the
    ``datetime`` objects PyYAML makes of unquoted YAML timestamps (naive ones are UTC,
    as YAML 1.1's timestamp type says). A bare date is not a time: the API server would
    reject it."""
    if isinstance(raw, datetime):
        dt = raw if raw.tzinfo is not None else raw.replace(tzinfo=UTC)
        whole = dt.replace(microsecond=0)
        return int(whole.timestamp()), dt.microsecond * 1000
    if type(raw) is not str:
        return None
    m = _RFC3339.match(raw)
    if m is None:
        return None
    y, mo, d, h, mi, sec, frac, zone = m.groups()
    tz = UTC
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        zh, zm = int(zone[1:3]), int(zone[4:6])
        if zh > 23 or zm > 59:
            return None
        tz = timezone(sign * timedelta(hours=zh, minutes=zm))
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec), tzinfo=tz)
    except ValueError:  # month 13, 24:00, a leap second: Go's parser rejects them too
        return None
    return int(dt.timestamp()), int((frac or "0").ljust(9, "0"))


def created_at(obj: Mapping[str, Any]) -> int:
    """The creationTimestamp as Istio orders by it: whole seconds, as the API server stores
    it (metav1.Time marshals without fractions; Istio's config.go
    ``configCompareByCreationTime`` notes ties are common for that reason). Missing (or
    unparsable, which ``admit`` refuses) orders as Go's zero time, first."""
    t = parse_time(meta(obj).get("creationTimestamp"))
    return t[0] if t is not None else ZERO_TIME


def spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    s = obj.get("spec")
    return s if type(s) is dict else _EMPTY


def ref(obj: Mapping[str, Any]) -> str:
    return f"{namespace(obj)}/{name(obj)}" if namespace(obj) else name(obj)


def pod_ip(pod: Mapping[str, Any]) -> str | None:
    status = pod.get("status")
    if not isinstance(status, dict):
        return None
    ip = status.get("podIP")
    return ip if isinstance(ip, str) and ip else None


def set_pod_ip(pod: KubeObject, ip: str) -> None:
    """For the lab: give a pod loaded from YAML the address it will really have."""
    status = pod.setdefault("status", {})
    status["podIP"] = ip
    status["podIPs"] = [{"ip": ip}]


def pod_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status")
    if not isinstance(status, dict):
        return False
    if status.get("phase") not in (None, "Running"):
        return False
    conditions = status.get("conditions")
    if not isinstance(conditions, list):
        return status.get("phase") == "Running"
    for c in conditions:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def service_account(pod: Mapping[str, Any]) -> str:
    sa = spec(pod).get("serviceAccountName") or spec(pod).get("serviceAccount")
    return sa if isinstance(sa, str) and sa else "default"


def is_port(v: object) -> bool:
    """A TCP/UDP port number (an int, not a bool, 1-65535)."""
    return type(v) is int and 0 < v < 65536


def port_key(k: object) -> int | None:
    """portLevelMtls keys: YAML gives ints, JSON gives strings."""
    if isinstance(k, bool):
        return None
    if isinstance(k, int):
        return k if is_port(k) else None
    if isinstance(k, str) and k.isdigit() and is_port(int(k)):
        return int(k)
    return None
