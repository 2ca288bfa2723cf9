"""Which agent probes what: rendezvous (highest-random-weight) hashing.

Every agent computes the same owner for a work key from the same set of agents, with
no coordination, so N agents together probe each endpoint once per round (O(M) work
in total for M endpoints) and adding or removing one agent moves only the keys that
agent wins or owned (about 1/N of them). Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from enum import Enum

from probe.model import Endpoint, Target, TargetsFile


class ShardUnit(Enum):
    """The unit of work the checks of an agent's kind iterate over."""

    TARGET = "target"  # through the service name (mesh, xfcc-spoof)
    ENDPOINT = "endpoint"  # per pod IP:port (plaintext, peer-cert, foreign-client)


def _weight(agent: str, key: str) -> int:
    data = agent.encode("utf-8") + b"\0" + key.encode("utf-8")
    digest = hashlib.blake2b(data, digest_size=8, person=b"mtlsprobe").digest()
    return int.from_bytes(digest, "big")


def owner(key: str, agents: Collection[str]) -> str:
    """The agent that owns ``key``: the highest weight, ties broken by name."""
    if not agents:
        raise ValueError("no agents to assign work to")
    return max(agents, key=lambda a: (_weight(a, key), a))


def endpoint_key(target: Target, endpoint: Endpoint) -> str:
    return f"{target.name}|{endpoint}"


def target_key(target: Target) -> str:
    return target.name


@dataclass(frozen=True)
class Shard:
    """This agent's part of a targets file, and how big the whole was."""

    targets: TargetsFile
    agents: tuple[str, ...]
    assigned: int  # work keys this agent owns
    total: int  # work keys over all agents


def select_shard(targets: TargetsFile, agents: Iterable[str], me: str, unit: ShardUnit) -> Shard:
    """Keep only the work ``me`` owns. ``me`` is always counted as an agent: an agent
    that does not see itself yet (not ready, just started) probes too much rather
    than leaving its share unprobed."""
    members = tuple(sorted(set(agents) | {me}))
    kept: list[Target] = []
    assigned = total = 0
    for t in targets.targets:
        if unit is ShardUnit.TARGET:
            total += 1
            if owner(target_key(t), members) == me:
                assigned += 1
                kept.append(t)
            continue
        if not t.endpoints:
            # One agent reports the "no endpoints" skip, so it is seen once per round.
            if owner(target_key(t), members) == me:
                kept.append(t)
            continue
        mine = tuple(ep for ep in t.endpoints if owner(endpoint_key(t, ep), members) == me)
        total += len(t.endpoints)
        assigned += len(mine)
        if mine:
            kept.append(replace(t, endpoints=mine))
    return Shard(
        targets=replace(targets, targets=tuple(kept)),
        agents=members,
        assigned=assigned,
        total=total,
    )


def everything(targets: TargetsFile, me: str, unit: ShardUnit) -> Shard:
    """``--probe-all``: this agent probes the whole list (small clusters)."""
    if unit is ShardUnit.TARGET:
        total = len(targets.targets)
    else:
        total = sum(len(t.endpoints) for t in targets.targets)
    return Shard(targets=targets, agents=(me,), assigned=total, total=total)
