"""The plan's vocabulary: what a plan holds (``Plan``: targets, findings, edges, port
coverage), the types it is made of (``Requirements``, ``PodInfo``, ``Edge``,
``Inbound``, ``PortCoverage``) and the shape of a static finding (``finding``).
``jobs.plan.planner`` documents how they are filled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jobs.plan.endpoints import Excluded
from jobs.plan.policy import ClientView
from probe.constants import APP_NAME_LABEL, PROBE_NAMESPACE
from probe.model import Expect, Protocol, TargetsFile
from probe.results import EXIT_FAIL, EXIT_OK, Result, Verdict

CHECK_POLICY = "policy"
CHECK_REQUIRE = {"strict": "require-strict", "sidecar": "require-sidecar"}
REQUIREMENTS = tuple(CHECK_REQUIRE)
ECHO_LABEL = (APP_NAME_LABEL, "mtlsprobe-echo")
DEFAULT_CLIENT_NAMESPACE = PROBE_NAMESPACE


@dataclass(frozen=True)
class Requirements:
    """Compliance asked for (``--require``), and where the probe's sidecar client runs
    (DestinationRules are looked up from the client's namespace first)."""

    strict: bool = False
    sidecar: bool = False
    client_namespace: str | None = DEFAULT_CLIENT_NAMESPACE

    @classmethod
    def parse(cls, items: Iterable[str], client_namespace: str | None = None) -> Requirements:
        """From ``strict,sidecar`` words; raises ValueError naming an unknown one."""
        words = {w.strip().lower() for item in items for w in item.split(",") if w.strip()}
        unknown = words - set(REQUIREMENTS)
        if unknown:
            raise ValueError(
                f"unknown requirement {sorted(unknown)[0]!r} (known: {', '.join(REQUIREMENTS)})"
            )
        return cls(
            strict="strict" in words,
            sidecar="sidecar" in words,
            client_namespace=client_namespace or DEFAULT_CLIENT_NAMESPACE,
        )


@dataclass(frozen=True, slots=True)
class PodInfo:
    name: str
    namespace: str
    service_account: str
    identity: str
    ip: str | None
    ready: bool
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    has_sidecar: bool
    ambient: bool
    tls_mode_label: str | None
    echo: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def has_proxy(self) -> bool:
        """A sidecar or ztunnel sits in front of the app."""
        return self.has_sidecar or self.ambient


@dataclass(frozen=True, slots=True)
class Inbound:
    """One inbound (pod, target port) and the mode its proxy must enforce."""

    pod: PodInfo
    port: int
    mode: Expect
    expect: Expect
    source: str


@dataclass(frozen=True, slots=True)
class Edge:
    target: str
    service: str
    namespace: str
    host: str
    service_port: int
    protocol: Protocol
    pod: PodInfo
    target_port: int
    server_mode: Expect
    expect: Expect
    mode_source: str
    dr_mode: str | None
    dr_source: str | None
    client: ClientView


@dataclass(frozen=True, slots=True)
class PortCoverage:
    """What the plan could verify at one Service port: ``targets`` (names) carry its
    probed pods; ``routed_elsewhere`` is traffic of this port that goes where no
    probe may go (not a mesh workload); ``why_unverifiable`` is set when no target
    was planned at all. Compliance never passes on such a port (issue 17 rule 2)."""

    name: str  # "<ns>/<svc>:<port>"
    targets: tuple[str, ...]
    routed_elsewhere: tuple[Excluded, ...]
    why_unverifiable: str | None


@dataclass
class Plan:
    targets_file: TargetsFile
    findings: list[Result] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    requirements: Requirements = field(default_factory=Requirements)
    ports: list[PortCoverage] = field(default_factory=list)
    # Computes ``inbound`` on first use (only the lab needs it): the builder's caches.
    inbound_of: Callable[[], list[Inbound]] | None = field(default=None, repr=False, compare=False)

    @cached_property
    def inbound(self) -> list[Inbound]:
        return self.inbound_of() if self.inbound_of is not None else []

    def exit_code(self) -> int:
        if any(r.verdict == Verdict.FAIL for r in self.findings):
            return EXIT_FAIL
        return EXIT_OK


def finding(target: str, verdict: Verdict, reason: str, **evidence: Any) -> Result:
    """A static finding of the plan (check ``policy``); evidence left out when None."""
    return Result(
        check=CHECK_POLICY,
        target=target,
        verdict=verdict,
        reason=reason,
        evidence={k: v for k, v in evidence.items() if v is not None},
    )
