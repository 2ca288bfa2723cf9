"""Verdicts and results: what every check, report and exporter speaks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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
    # Timing is for traces, not part of the JSON contract (epoch nanoseconds).
    start_ns: int = 0
    end_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON object: ``endpoint`` only for per-endpoint checks."""
        out: dict[str, Any] = {"check": self.check, "target": self.target}
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
        return out


def summarize(results: Iterable[Result]) -> dict[str, int]:
    counts = Counter(r.verdict for r in results)
    return {v.value: counts.get(v, 0) for v in Verdict}


def exit_code(results: Iterable[Result]) -> int:
    """0 all pass/skip, 1 any fail, 2 no fail but some error (product.md)."""
    verdicts = {r.verdict for r in results}
    if Verdict.FAIL in verdicts:
        return EXIT_FAIL
    if Verdict.ERROR in verdicts:
        return EXIT_ERROR
    return EXIT_OK
