"""What a check is, and the per-run context that holds the expensive shared objects."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from probe.results import Result, Verdict

if TYPE_CHECKING:
    from probe.model import Endpoint, Target, TargetsFile

T = TypeVar("T")


class Scope(Enum):
    RUN = "run"  # once per run (e.g. the probe's own sidecar)
    TARGET = "target"  # once per target (through the service name)
    ENDPOINT = "endpoint"  # once per pod IP:targetPort
    CASE = "case"  # once per case the check lists for a target (``cases``/``run_case``)


@dataclass(frozen=True)
class Settings:
    timeout: float = 5.0
    concurrency: int = 32
    min_remaining: timedelta = timedelta(hours=6)
    max_lifetime: timedelta = timedelta(days=90)


class RunContext:
    """Shared state of one run. Expensive objects (HTTP clients, SSL contexts, the
    run-time foreign CA) are built once, lazily, thread-safely, and closed at the end."""

    def __init__(self, targets: TargetsFile, settings: Settings | None = None) -> None:
        self.targets = targets
        self.settings = settings or Settings()
        self._lock = threading.Lock()
        self._cache: dict[str, Any] = {}
        self._closers: list[Callable[[], None]] = []

    def shared(
        self, key: str, build: Callable[[], T], close: Callable[[T], None] | None = None
    ) -> T:
        """Build ``key`` once per run; later callers (any thread) get the same object."""
        with self._lock:
            if key not in self._cache:
                obj = build()
                self._cache[key] = obj
                if close is not None:
                    self._closers.append(lambda: close(obj))
            return self._cache[key]  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            closers, self._closers = self._closers, []
            self._cache.clear()
        for fn in reversed(closers):
            try:
                fn()
            except Exception:  # noqa: S112 - closing must not mask results
                continue


class Check(ABC):
    """One kind of check. ``run`` may raise ``probe.errors.ProbeError``; the engine
    turns an ``ObservationError`` into an ``error`` verdict with its reason."""

    name: ClassVar[str]
    scope: ClassVar[Scope]
    #: What the check proves, one line, for --help and reports.
    summary: ClassVar[str] = ""

    def skip_reason(self, ctx: RunContext, target: Target | None) -> str | None:
        """Why this check does not apply to ``target`` (None: it applies)."""
        return None

    @abstractmethod
    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        """Observe, judge, and return one result."""

    # Scope.CASE checks (authz): one work item per case of a target.
    def cases(self, ctx: RunContext, target: Target) -> Sequence[Any]:
        """The cases of ``target`` this check runs (none: no result for the target)."""
        return ()

    def run_case(self, ctx: RunContext, target: Target, case: Any) -> Result:
        """Observe, judge, and return the result of one case."""
        raise NotImplementedError(f"{self.name} has no cases")


def make_result(
    check: str,
    target: Target | None,
    endpoint: Endpoint | None,
    verdict: Verdict,
    reason: str,
    *,
    expected: str | None = None,
    observed: str | None = None,
    evidence: Mapping[str, Any] | None = None,
) -> Result:
    return Result(
        check=check,
        target=target.name if target is not None else "source",
        endpoint=str(endpoint) if endpoint is not None else None,
        verdict=verdict,
        reason=reason,
        expected=expected,
        observed=observed,
        evidence=dict(evidence or {}),
        end_ns=time.time_ns(),
    )
