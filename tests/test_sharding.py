"""Rendezvous sharding: every work item has exactly one owner, and membership changes
move only the share of the agent that came or went."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.agent.sharding import ShardUnit, endpoint_key, everything, owner, select_shard
from probe.model import Endpoint, Expect, Target, TargetsFile


def make_targets(n_targets: int, eps_per_target: int) -> TargetsFile:
    targets = tuple(
        Target(
            name=f"ns-{t % 7}/svc-{t}",
            host=f"svc-{t}.ns-{t % 7}.svc.cluster.local",
            port=8080,
            expect=Expect.STRICT,
            endpoints=tuple(
                Endpoint(f"10.{t // 250}.{t % 250}.{e + 1}", 8080) for e in range(eps_per_target)
            ),
        )
        for t in range(n_targets)
    )
    return TargetsFile(trust_domain="cluster.local", targets=targets)


def work_keys(tf: TargetsFile) -> list[str]:
    return [endpoint_key(t, ep) for t in tf.targets for ep in t.endpoints]


agent_names = st.lists(
    st.from_regex(r"mtlsprobe-agent-[a-z0-9]{5}", fullmatch=True),
    min_size=1,
    max_size=12,
    unique=True,
)


@settings(max_examples=60, deadline=None)
@given(agents=agent_names, n_targets=st.integers(0, 30), eps=st.integers(0, 6))
def test_every_endpoint_probed_by_exactly_one_agent(
    agents: list[str], n_targets: int, eps: int
) -> None:
    tf = make_targets(n_targets, eps)
    counts: dict[str, int] = dict.fromkeys(work_keys(tf), 0)
    no_endpoint_targets: dict[str, int] = {t.name: 0 for t in tf.targets if not t.endpoints}
    for me in agents:
        shard = select_shard(tf, agents, me, ShardUnit.ENDPOINT)
        assert shard.total == len(counts)
        for key in work_keys(shard.targets):
            counts[key] += 1
        for t in shard.targets.targets:
            if not t.endpoints:
                no_endpoint_targets[t.name] += 1
    assert all(c == 1 for c in counts.values())
    # A target without endpoints is still reported (its "no endpoints" skip) once.
    assert all(c == 1 for c in no_endpoint_targets.values())


@settings(max_examples=40, deadline=None)
@given(agents=agent_names, n_targets=st.integers(0, 40))
def test_every_target_probed_by_exactly_one_agent(agents: list[str], n_targets: int) -> None:
    tf = make_targets(n_targets, 2)
    seen: list[str] = []
    for me in agents:
        shard = select_shard(tf, agents, me, ShardUnit.TARGET)
        seen.extend(t.name for t in shard.targets.targets)
        # Target-scoped work keeps the target whole.
        assert all(len(t.endpoints) == 2 for t in shard.targets.targets)
    assert sorted(seen) == sorted(t.name for t in tf.targets)


def test_assignment_is_deterministic_and_order_free() -> None:
    tf = make_targets(50, 4)
    a = ["agent-a", "agent-b", "agent-c"]
    first = select_shard(tf, a, "agent-b", ShardUnit.ENDPOINT)
    again = select_shard(tf, list(reversed(a)), "agent-b", ShardUnit.ENDPOINT)
    assert first.targets == again.targets


def test_balanced_within_noise() -> None:
    tf = make_targets(250, 4)  # 1,000 endpoints
    agents = [f"agent-{i}" for i in range(8)]
    sizes = [select_shard(tf, agents, me, ShardUnit.ENDPOINT).assigned for me in agents]
    assert sum(sizes) == 1000
    assert min(sizes) > 1000 / 8 * 0.7, sizes
    assert max(sizes) < 1000 / 8 * 1.3, sizes


@settings(max_examples=30, deadline=None)
@given(n_agents=st.integers(2, 16), extra=st.from_regex(r"new-[a-z]{6}", fullmatch=True))
def test_adding_an_agent_moves_only_its_new_share(n_agents: int, extra: str) -> None:
    keys = work_keys(make_targets(300, 4))  # 1,200 endpoints
    before_agents = [f"agent-{i}" for i in range(n_agents)]
    after_agents = [*before_agents, extra]
    moved = 0
    for k in keys:
        b, a = owner(k, before_agents), owner(k, after_agents)
        if a != b:
            moved += 1
            assert a == extra  # keys only ever move to the newcomer
    expected = len(keys) / (n_agents + 1)
    assert moved < expected * 1.4 + 20


@settings(max_examples=30, deadline=None)
@given(n_agents=st.integers(2, 16), gone=st.integers(0, 15))
def test_removing_an_agent_moves_only_its_share(n_agents: int, gone: int) -> None:
    keys = work_keys(make_targets(300, 4))
    before_agents = [f"agent-{i}" for i in range(n_agents)]
    leaving = before_agents[gone % n_agents]
    after_agents = [a for a in before_agents if a != leaving]
    moved = 0
    for k in keys:
        b, a = owner(k, before_agents), owner(k, after_agents)
        if a != b:
            moved += 1
            assert b == leaving  # only the leaver's keys move
    assert moved < len(keys) / n_agents * 1.4 + 20


def test_an_agent_not_yet_seen_by_itself_still_probes() -> None:
    """A new pod is not ready (so not listed) until its first round; it counts
    itself in, and probes its future share rather than nothing."""
    tf = make_targets(40, 2)
    shard = select_shard(tf, ["agent-a", "agent-b"], "agent-new", ShardUnit.ENDPOINT)
    assert shard.agents == ("agent-a", "agent-b", "agent-new")
    assert shard.assigned > 0


def test_probe_all_keeps_everything() -> None:
    tf = make_targets(10, 3)
    shard = everything(tf, "me", ShardUnit.ENDPOINT)
    assert shard.targets == tf
    assert shard.assigned == shard.total == 30
