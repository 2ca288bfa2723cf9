"""One round of the agent: targets → this agent's shard → the checks of its kind.

A round never raises: a source that cannot be read, or a crash, becomes an ``error``
result and a failed round; the agent keeps its schedule either way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from jobs.agent.sharding import Shard, ShardUnit, everything, select_shard
from jobs.agent.sources import PeerSource, SourceError, TargetSource
from jobs.agent.state import RoundReport
from probe.checks import PLAIN_CHECKS, SIDECAR_CHECKS, load_check
from probe.checks.base import Check, RunContext, Scope, Settings
from probe.engine import run_checks
from probe.model import TargetsFile
from probe.results import Result, Verdict

KIND_CHECKS: dict[str, tuple[str, ...]] = {"sidecar": SIDECAR_CHECKS, "plain": PLAIN_CHECKS}


def source_error(check: str, reason: str) -> Result:
    """An ``error`` result for something the round could not read (not a check)."""
    now = time.time_ns()
    return Result(
        check=check,
        target="cluster",
        verdict=Verdict.ERROR,
        reason=reason,
        observed="unavailable",
        evidence={"error": check},
        start_ns=now,
        end_ns=now,
    )


def group_by_unit(checks: Sequence[Check]) -> dict[ShardUnit, list[Check]]:
    """Run-scoped checks (the agent's own sidecar) go with the target group: every
    agent runs them once; they ignore the targets."""
    groups: dict[ShardUnit, list[Check]] = {}
    for c in checks:
        unit = ShardUnit.ENDPOINT if c.scope is Scope.ENDPOINT else ShardUnit.TARGET
        groups.setdefault(unit, []).append(c)
    return groups


@dataclass
class RoundRunner:
    kind: str
    source: TargetSource
    me: str
    settings: Settings
    peers: PeerSource | None = None  # None: --probe-all
    _number: int = 0
    _last_agents: tuple[str, ...] = ()
    _checks: list[Check] = field(default_factory=list)
    _identity: str | None = None
    _targets: TargetsFile | None = None

    def __post_init__(self) -> None:
        self._checks = [load_check(n) for n in KIND_CHECKS[self.kind]]

    def run(self, stop: threading.Event) -> RoundReport:
        self._number += 1
        started, t0 = time.time(), time.monotonic()
        self._identity, self._targets = None, None
        try:
            results, failure, shard_sizes, agents = self._probe(stop)
        except Exception as exc:  # a bug must not end continuous probing
            results = [source_error("agent", f"round crashed: {type(exc).__name__}: {exc}")]
            failure, shard_sizes, agents = results[0].reason, (0, 0), ()
        return RoundReport(
            number=self._number,
            started=started,
            duration_s=time.monotonic() - t0,
            results=tuple(results),
            failed=failure is not None,
            failure_reason=failure,
            assigned=shard_sizes[0],
            total=shard_sizes[1],
            agents=agents,
            source_identity=self._identity,
            targets=self._targets,
        )

    def _probe(
        self, stop: threading.Event
    ) -> tuple[list[Result], str | None, tuple[int, int], tuple[str, ...]]:
        try:
            targets = self.source.load()
        except SourceError as exc:
            reason = f"discovery failed: {exc}"
            return [source_error("discovery", reason)], reason, (0, 0), ()
        self._identity = targets.source.identity
        self._targets = targets
        results: list[Result] = []
        agents = self._agents(results)
        assigned = total = 0
        for unit, checks in group_by_unit(self._checks).items():
            shard = self._shard(targets, agents, unit)
            assigned += shard.assigned
            total += shard.total
            ctx = RunContext(shard.targets, self.settings)
            try:
                results.extend(run_checks(checks, ctx, stop=stop))
            finally:
                ctx.close()
        observed = [r for r in results if r.verdict is not Verdict.SKIP]
        failure = None
        if observed and all(r.verdict is Verdict.ERROR for r in observed):
            failure = f"nothing could be observed: {observed[0].reason}"
        return results, failure, (assigned, total), tuple(sorted(set(agents) | {self.me}))

    def _agents(self, results: list[Result]) -> list[str]:
        """Peers this round. If they cannot be listed, the last known set is used:
        probing everything from every node during an API outage would multiply the
        load by N, and the set rarely changes between two rounds."""
        if self.peers is None:
            return [self.me]
        try:
            names = self.peers.agents()
        except SourceError as exc:
            results.append(
                source_error(
                    "agents", f"{exc}; sharding over the last known {len(self._last_agents)}"
                )
            )
            return list(self._last_agents) or [self.me]
        self._last_agents = tuple(sorted(names))
        return names

    def _shard(self, targets: TargetsFile, agents: list[str], unit: ShardUnit) -> Shard:
        if self.peers is None:
            return everything(targets, self.me, unit)
        return select_shard(targets, agents, self.me, unit)
