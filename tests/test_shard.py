"""``probe.shard``: the even split ``mtlsprobe run`` writes one ConfigMap per shard
from, and the hash split ``check --shard`` applies to a file every pod shares."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe import shard
from probe.model import Endpoint, Expect, Target, TargetsFile


def make(eps_per_target: list[int]) -> TargetsFile:
    return TargetsFile(
        trust_domain="cluster.local",
        targets=tuple(
            Target(
                name=f"ns-{i % 3}/svc-{i}",
                host=f"svc-{i}.ns-{i % 3}.svc",
                port=80,
                expect=Expect.STRICT,
                endpoints=tuple(Endpoint(f"10.0.{i}.{e}", 8080 + e) for e in range(n)),
            )
            for i, n in enumerate(eps_per_target)
        ),
    )


def units(tf: TargetsFile, by_endpoint: bool) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for t in tf.targets:
        if by_endpoint and t.endpoints:
            out += [(t.name, str(e)) for e in t.endpoints]
        else:
            out.append((t.name, ""))
    return out


shapes = st.lists(st.integers(0, 6), max_size=30)


@given(shape=shapes, count=st.integers(1, 12), by_endpoint=st.booleans())
def test_split_is_even_disjoint_and_covers_everything(
    shape: list[int], count: int, by_endpoint: bool
) -> None:
    tf = make(shape)
    parts = shard.split(tf, count, by_endpoint=by_endpoint)
    assert len(parts) == max(1, count)
    sizes = [len(units(p, by_endpoint)) for p in parts]
    assert max(sizes) - min(sizes) <= 1, sizes
    got = [u for p in parts for u in units(p, by_endpoint)]
    assert sorted(got) == sorted(units(tf, by_endpoint))  # each unit exactly once
    for p in parts:
        assert p.trust_domain == tf.trust_domain and p.source == tf.source
        names = [t.name for t in p.targets]
        assert len(names) == len(set(names))  # a target appears once per part
        order = [t.name for t in tf.targets]
        assert names == sorted(names, key=order.index)  # the file's order is kept
        if not by_endpoint:  # through the service name: a target never splits
            assert all(t in tf.targets for t in p.targets)


@given(shape=shapes, count=st.integers(2, 12), seed=st.integers(0, 2**32))
def test_split_ignores_the_input_order(shape: list[int], count: int, seed: int) -> None:
    tf = make(shape)
    shuffled = list(tf.targets)
    random.Random(seed).shuffle(shuffled)
    again = TargetsFile(trust_domain=tf.trust_domain, targets=tuple(shuffled))
    for a, b in zip(
        shard.split(tf, count, by_endpoint=True),
        shard.split(again, count, by_endpoint=True),
        strict=True,
    ):
        assert sorted(units(a, True)) == sorted(units(b, True))


def test_split_sizes_for_run_shard_counts() -> None:
    """What run launches: ceil(work / threshold) shards, each at most threshold units."""
    from jobs.launch.jobspec import shard_count

    tf = make([3] * 401)  # 1,203 endpoints
    n = shard_count(1203, 200)
    sizes = [len(units(p, True)) for p in shard.split(tf, n, by_endpoint=True)]
    assert sizes == [172, 172, 172, 172, 172, 172, 171]
    assert max(sizes) <= 200


def test_split_of_nothing_and_of_one() -> None:
    empty = make([])
    assert shard.split(empty, 3, by_endpoint=True) == (empty, empty, empty)
    tf = make([2, 0])
    assert shard.split(tf, 1, by_endpoint=True) == (tf,)
    # A target without endpoints is one unit: its "no endpoints" skip is reported once.
    parts = shard.split(tf, 3, by_endpoint=True)
    assert [len(units(p, True)) for p in parts] == [1, 1, 1]
    assert sum(t.name == "ns-1/svc-1" for p in parts for t in p.targets) == 1


@pytest.mark.parametrize("by_endpoint", [True, False])
@given(shape=shapes, count=st.integers(1, 12))
def test_hash_select_is_disjoint_and_covers_everything(
    by_endpoint: bool, shape: list[int], count: int
) -> None:
    tf = make(shape)
    got = [
        u
        for i in range(count)
        for u in units(shard.select(tf, i, count, by_endpoint=by_endpoint), by_endpoint)
    ]
    assert sorted(got) == sorted(units(tf, by_endpoint))


def test_hash_select_owner_depends_on_the_unit_alone() -> None:
    """Why ``check --shards`` keeps the hash: pods reading the file before and after an
    edit agree on every unit both versions hold (a contiguous split would shift)."""
    before = make([2] * 20)
    added = Target(
        name="ns-9/new",
        host="new.ns-9.svc",
        port=80,
        expect=Expect.STRICT,
        endpoints=(Endpoint("10.9.9.9", 8080),),
    )
    after = TargetsFile(trust_domain="cluster.local", targets=(added, *before.targets))
    for i in range(4):
        old = set(units(shard.select(before, i, 4, by_endpoint=True), True))
        new = set(units(shard.select(after, i, 4, by_endpoint=True), True))
        assert new - {("ns-9/new", "10.9.9.9:8080")} == old
