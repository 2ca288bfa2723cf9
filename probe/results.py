"""Verdicts and results: what every check, report and exporter speaks."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"  # could not observe: never counted as a pass
    SKIP = "skip"


EXIT_OK = 0
EXIT_FAIL = 1
EXIT_ERROR = 2
EXIT_USAGE = 64

# The contract's keys, in output order; nothing else is ever emitted.
CONTRACT_KEYS = (
    "check",
    "target",
    "endpoint",
    "expected",
    "observed",
    "verdict",
    "reason",
    "evidence",
)
# Added after them only when asked (``check --timing``: what ``mtlsprobe run``'s probe
# pods print, so the orchestrator's traces keep each check's real start and end).
TIMING_KEY = "timing"


@dataclass(frozen=True)
class Origin:
    """Which probe observed a result, when not this process: ``mtlsprobe run`` collects
    results from probe pods, one or more source namespaces. Structured so traces keep
    the source and reports can tell the same edge probed from two places apart."""

    namespace: str
    identity: str | None = None  # the probe pod's SPIFFE ID
    shown: bool = False  # reports write the target as "<target> (from <namespace>)"


#: Added beside the contract's keys by ``authz`` results (after ``target``/``endpoint``).
AUTHZ_KEYS = ("source", "request")


@dataclass(frozen=True)
class Result:
    check: str
    target: str
    verdict: Verdict
    reason: str
    endpoint: str | None = None
    expected: str | None = None
    observed: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    # ``authz`` results only (AUTHZ_KEYS): the caller's SPIFFE ID and "GET /x" or "tcp".
    source: str | None = None
    request: str | None = None
    # Epoch nanoseconds, for traces; in the JSON only with ``check --timing``.
    start_ns: int = 0
    end_ns: int = 0
    origin: Origin | None = None  # not part of the contract; see ``shown_target``

    @property
    def shown_target(self) -> str:
        """The target as reports print it."""
        if self.origin is not None and self.origin.shown:
            return f"{self.target} (from {self.origin.namespace})"
        return self.target

    def to_dict(self, *, timing: bool = False) -> dict[str, Any]:
        """The contract's JSON object: ``endpoint`` only for per-endpoint checks;
        ``timing`` (start, end, duration) only when asked and known."""
        out: dict[str, Any] = {"check": self.check, "target": self.shown_target}
        if self.endpoint is not None:
            out["endpoint"] = self.endpoint
        if self.source is not None:
            out["source"] = self.source
        if self.request is not None:
            out["request"] = self.request
        out["expected"] = self.expected
        out["observed"] = self.observed
        out["verdict"] = self.verdict.value
        out["reason"] = self.reason
        out["evidence"] = dict(self.evidence)
        if timing and self.end_ns:
            start = self.start_ns or self.end_ns  # skips are instants at their end
            out[TIMING_KEY] = {
                "start": rfc3339_ns(start),
                "end": rfc3339_ns(self.end_ns),
                "duration": max(0, self.end_ns - start) / 1e9,
            }
        return out


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z", re.ASCII)


def rfc3339_ns(epoch_ns: int) -> str:
    """Epoch nanoseconds as RFC 3339 UTC with all nine digits (datetime keeps six)."""
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    day = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{day}.{nanos:09d}Z"


def parse_rfc3339_ns(text: str) -> int | None:
    """The inverse of ``rfc3339_ns`` (UTC, ``Z``, up to nine fraction digits); None
    for anything else."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    try:
        when = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    fraction = (m.group(2) or "").ljust(9, "0")
    return int(when.timestamp()) * 1_000_000_000 + int(fraction)


def summarize(results: Iterable[Result]) -> dict[str, int]:
    counts = Counter(r.verdict for r in results)
    return {v.value: counts.get(v, 0) for v in Verdict}


def exit_code(results: Iterable[Result]) -> int:
    """0 all pass/skip, 1 any fail, 2 no fail but some error (README: exit codes)."""
    verdicts = {r.verdict for r in results}
    if Verdict.FAIL in verdicts:
        return EXIT_FAIL
    if Verdict.ERROR in verdicts:
        return EXIT_ERROR
    return EXIT_OK
