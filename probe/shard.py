"""Splitting a targets file over the pods of an Indexed Job: two modes.

- ``split`` (even, for ``mtlsprobe run``): the orchestrator computes every shard once
  and writes each into a ConfigMap of its own. The work units, in a stable sorted
  order, are cut into contiguous chunks, so shard sizes differ by at most one unit
  (no empty shard next to a double one) and the orchestrator keeps the parts to know
  which results each index owes.
- ``select`` (hash, for ``mtlsprobe check --shard/--shards``): every pod gets the
  same file and picks its own part, with no coordination. A unit's owner depends on
  its key and the shard count only, so pods that read the file at different times
  (a ConfigMap edited while later indexes start) still never both skip a unit that
  both saw; the price is uneven shards (a binomial spread, empty ones when small).

The agents' continuous sharding is rendezvous hashing over live agents
(``jobs/agent/sharding.py``): it must move little work when an agent comes or goes.

The unit is the endpoint when every selected check runs per endpoint, else the
target (a target checked through its service name must land in one shard only, or
it would be probed and reported once per shard). A target without endpoints is one
unit either way (its "no endpoints" result is reported once).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not at run time: ``check --help`` adds our flags without the YAML stack
    from probe.checks.base import Scope
    from probe.model import Endpoint, Target, TargetsFile

INDEX_ENV = "JOB_COMPLETION_INDEX"


def bucket(key: str, count: int) -> int:
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"mtlsshard").digest()
    return int.from_bytes(digest, "big") % count


def select(targets: TargetsFile, index: int, count: int, *, by_endpoint: bool) -> TargetsFile:
    """The part of ``targets`` shard ``index`` of ``count`` owns, by hash (see above)."""
    if count <= 1:
        return targets
    kept: list[Target] = []
    for t in targets.targets:
        if by_endpoint and t.endpoints:
            mine = tuple(ep for ep in t.endpoints if bucket(f"{t.name}|{ep}", count) == index)
            if mine:
                kept.append(replace(t, endpoints=mine))
        elif bucket(t.name, count) == index:
            kept.append(t)
    return replace(targets, targets=tuple(kept))


def split(targets: TargetsFile, count: int, *, by_endpoint: bool) -> tuple[TargetsFile, ...]:
    """``count`` parts of ``targets`` that are disjoint, cover every unit, and differ in
    size by at most one unit. Deterministic: units are ranked by (target name,
    endpoint) whatever the input order, and rank r goes to part r * count // units.
    Each part keeps the file's order of targets and endpoints."""
    if count <= 1:
        return (targets,)
    units: list[tuple[str, str, int, int]] = []  # (name, endpoint, target #, endpoint #)
    for ti, t in enumerate(targets.targets):
        if by_endpoint and t.endpoints:
            units.extend((t.name, str(ep), ti, ei) for ei, ep in enumerate(t.endpoints))
        else:
            units.append((t.name, "", ti, -1))
    units.sort()
    part_of = {(ti, ei): rank * count // len(units) for rank, (*_, ti, ei) in enumerate(units)}
    kept: list[list[Target]] = [[] for _ in range(count)]
    for ti, t in enumerate(targets.targets):
        if (ti, -1) in part_of:
            kept[part_of[(ti, -1)]].append(t)
            continue
        groups: dict[int, list[Endpoint]] = {}
        for ei, ep in enumerate(t.endpoints):
            groups.setdefault(part_of[(ti, ei)], []).append(ep)
        for i, eps in groups.items():
            kept[i].append(replace(t, endpoints=tuple(eps)))
    return tuple(replace(targets, targets=tuple(k)) for k in kept)


def by_endpoint(scopes: Iterable[Scope]) -> bool:
    """Shard by endpoint only when every check is per endpoint."""
    from probe.checks.base import Scope

    scopes = list(scopes)
    return bool(scopes) and all(s is Scope.ENDPOINT for s in scopes)


def parse_shard(text: str) -> tuple[int, int]:
    """``INDEX/COUNT`` with 0 <= INDEX < COUNT; ValueError with one line otherwise."""
    idx, sep, cnt = text.partition("/")
    if not sep or not idx.strip().isdigit() or not cnt.strip().isdigit():
        raise ValueError(f"{text!r} is not INDEX/COUNT (e.g. 0/4)")
    i, n = int(idx), int(cnt)
    if n < 1 or i >= n:
        raise ValueError(f"{text!r}: need 0 <= INDEX < COUNT")
    return i, n


@dataclass(frozen=True)
class ShardOptions:
    """Which part of the targets this process probes: ``shard`` (INDEX, COUNT) named
    outright, or ``shards`` COUNT with the index from the Indexed Job's environment."""

    shard: tuple[int, int] | None = None
    shards: int | None = None


def chosen(opts: ShardOptions, environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """The shard the options/environment name, or None for everything. Raises ValueError
    with one line for inconsistent input."""
    if opts.shard is not None:
        if opts.shards is not None:
            raise ValueError("--shard and --shards are exclusive")
        i, n = opts.shard
        return int(i), int(n)
    if opts.shards is None:
        return None
    if opts.shards < 1:
        raise ValueError(f"--shards {opts.shards}: must be >= 1")
    raw = environ.get(INDEX_ENV)
    if raw is None or not raw.strip().isdigit():
        raise ValueError(f"--shards needs ${INDEX_ENV} (set by an Indexed Job), got {raw!r}")
    index = int(raw)
    if index >= opts.shards:
        raise ValueError(f"${INDEX_ENV}={index} is not below --shards {opts.shards}")
    return index, opts.shards
