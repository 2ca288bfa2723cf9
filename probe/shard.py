"""Deterministic shards of a targets file, for Indexed Jobs.

Every pod of an Indexed Job gets the same targets file and its own
``JOB_COMPLETION_INDEX``; each keeps the work whose key hashes to its index, so the
shards are disjoint, together cover everything, and the orchestrator can compute
which results each index owes (the collector reports missing ones as errors).

The unit is the endpoint when every selected check runs per endpoint, else the
target (a target checked through its service name must land in one shard only, or
it would be probed and reported once per shard).
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not at run time: ``check --help`` adds our flags without the YAML stack
    from probe.model import Target, TargetsFile

INDEX_ENV = "JOB_COMPLETION_INDEX"


def bucket(key: str, count: int) -> int:
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"mtlsshard").digest()
    return int.from_bytes(digest, "big") % count


def select(targets: TargetsFile, index: int, count: int, *, by_endpoint: bool) -> TargetsFile:
    """The part of ``targets`` shard ``index`` of ``count`` owns."""
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


def by_endpoint(scopes: Iterable[str]) -> bool:
    """Shard by endpoint only when every check is per endpoint (scope values)."""
    scopes = list(scopes)
    return bool(scopes) and all(s == "endpoint" for s in scopes)


def parse_shard(text: str) -> tuple[int, int]:
    """``INDEX/COUNT`` with 0 <= INDEX < COUNT."""
    idx, sep, cnt = text.partition("/")
    if not sep or not idx.strip().isdigit() or not cnt.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not INDEX/COUNT (e.g. 0/4)")
    i, n = int(idx), int(cnt)
    if n < 1 or i >= n:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= INDEX < COUNT")
    return i, n


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sharding (Indexed Jobs)")
    g.add_argument(
        "--shard",
        type=parse_shard,
        metavar="INDEX/COUNT",
        help="probe only shard INDEX of COUNT (deterministic split of targets/endpoints)",
    )
    g.add_argument(
        "--shards",
        type=int,
        metavar="COUNT",
        help=f"probe shard ${INDEX_ENV} of COUNT (for an Indexed Job's pods)",
    )


def from_args(args: argparse.Namespace) -> tuple[int, int] | None:
    """The shard the flags/environment name, or None for everything. Raises ValueError
    with one line for inconsistent input."""
    if args.shard is not None:
        if args.shards is not None:
            raise ValueError("--shard and --shards are exclusive")
        i, n = args.shard
        return int(i), int(n)
    if args.shards is None:
        return None
    if args.shards < 1:
        raise ValueError(f"--shards {args.shards}: must be >= 1")
    raw = os.environ.get(INDEX_ENV)
    if raw is None or not raw.strip().isdigit():
        raise ValueError(f"--shards needs ${INDEX_ENV} (set by an Indexed Job), got {raw!r}")
    index = int(raw)
    if index >= args.shards:
        raise ValueError(f"${INDEX_ENV}={index} is not below --shards {args.shards}")
    return index, args.shards
