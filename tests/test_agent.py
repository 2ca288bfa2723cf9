"""The agent against real servers made here: schedule, health, /results, /metrics,
targets outage and recovery, sharding between two agents."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from jobs.agent.sharding import ShardUnit, select_shard
from probe.model import Endpoint, load_targets
from tests.agenthelp import (
    ECHO_ID,
    get,
    plain_flags,
    running_agent,
    scrape_two_rounds,
    target,
    wait_for,
    write_targets,
)
from tests.tlsservers import MeshPKI, black_hole, plaintext_http, serving


def test_fast_interval_runs_many_rounds_one_at_a_time(tmp_path: Path) -> None:
    with serving(plaintext_http) as srv:
        f = write_targets(tmp_path / "t.yaml", [target("ns-a/plain", [srv.endpoint], "NONE")])
        with running_agent(*plain_flags(f, "0.1")) as built:
            wait_for(lambda: built.agent.state.rounds[0] >= 8, what="8 rounds")
            assert built.agent.state.max_in_flight == 1


def test_slow_round_does_not_stack(tmp_path: Path) -> None:
    """Rounds take ~0.5s (a silent server, 0.5s timeout) with a 0.05s interval:
    the late ticks are skipped or coalesced, never run beside the slow round."""
    with serving(black_hole) as slow:
        f = write_targets(tmp_path / "t.yaml", [target("ns-a/slow", [slow.endpoint], "STRICT")])
        with running_agent(*plain_flags(f, "0.05", "--timeout", "0.5")) as built:
            state = built.agent.state
            seen: dict[int, tuple[float, float]] = {}

            def track() -> bool:
                last = state.last
                if last is not None:
                    seen[last.number] = (last.started, last.finished)
                return len(seen) >= 4

            wait_for(track, timeout=20, what="4 slow rounds")
            assert state.max_in_flight == 1
            numbers = sorted(seen)
            for a, b in itertools.pairwise(numbers):
                if b == a + 1:  # consecutive rounds: the next starts after this one ends
                    assert seen[b][0] >= seen[a][1] - 0.01, (seen[a], seen[b])
            durations = [f - s for s, f in seen.values()]
            assert min(durations) >= 0.45


def test_health_endpoints_before_and_after_first_round(tmp_path: Path) -> None:
    with serving(plaintext_http) as srv:
        f = write_targets(tmp_path / "t.yaml", [target("ns-a/plain", [srv.endpoint], "NONE")])
        with running_agent(
            "--kind", "plain", "--targets", str(f), "--interval", "30", start_rounds=False
        ) as built:
            assert get(built, "/healthz") == (200, "ok\n")
            status, body = get(built, "/readyz")
            assert (status, body) == (503, "no round completed yet\n")
            assert get(built, "/results")[0] == 503
            assert get(built, "/results", method="POST")[0] == 405
            assert get(built, "/nope")[0] == 404
            built.agent.start()
            wait_for(lambda: get(built, "/readyz")[0] == 200, what="ready")
            status, body = get(built, "/results")
            doc = json.loads(body)
            assert status == 200
            assert doc["summary"] == {"pass": 1, "fail": 0, "error": 0, "skip": 2}
            plain = [r for r in doc["results"] if r["check"] == "plaintext"]
            assert plain[0]["endpoint"] == str(srv.endpoint)
            assert plain[0]["verdict"] == "pass"
            assert "PRIVATE KEY" not in body


def test_metrics_parse_and_carry_checks_and_cert_expiry(tmp_path: Path, pki: MeshPKI) -> None:
    issued = pki.ca.issue_workload(ECHO_ID, key_type="ec")
    cert_not_after = issued.cert.not_valid_after_utc.timestamp()
    status, text = scrape_two_rounds(tmp_path, pki, issued)
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    checks = {
        (
            s.labels["mtlsprobe_check"],
            s.labels["mtlsprobe_verdict"],
            s.labels["k8s_namespace_name"],
        ): s.value
        for s in fams["mtlsprobe_checks"].samples
        if s.name == "mtlsprobe_checks_total"
    }
    rounds = sum(
        s.value for s in fams["mtlsprobe_agent_rounds"].samples if s.name.endswith("_total")
    )
    assert rounds >= 2
    # Every round: ns-a's STRICT port refuses plaintext and shows a valid SVID; ns-b's
    # "STRICT" port answers plaintext (a regression) and has no TLS at all.
    assert checks[("plaintext", "pass", "ns-a")] >= 2
    assert checks[("plaintext", "fail", "ns-b")] >= 2
    assert checks[("peer-cert", "pass", "ns-a")] >= 2
    assert checks[("peer-cert", "error", "ns-b")] >= 2
    expiry = {
        s.labels["mtlsprobe_target"]: s.value
        for s in fams["mtlsprobe_peer_cert_expiry_seconds"].samples
        if s.labels["mtlsprobe_check"] == "peer-cert"
    }
    assert set(expiry) == {"ns-a/echo"}  # bounded: per target, only where a cert was seen
    assert abs(expiry["ns-a/echo"] - (cert_not_after - time.time())) < 60
    duration = fams["mtlsprobe_agent_round_duration_seconds"].samples[0].value
    assert 0 < duration < 10
    ready = fams["mtlsprobe_agent_ready"].samples[0].value
    assert ready == 1.0
    # No per-request labels anywhere: label values are bounded by targets and checks.
    for fam in fams.values():
        for s in fam.samples:
            assert "endpoint" not in s.labels and "reason" not in s.labels


def test_targets_outage_makes_not_ready_and_recovery_ready(tmp_path: Path) -> None:
    with serving(plaintext_http) as srv:
        f = write_targets(tmp_path / "t.yaml", [target("ns-a/plain", [srv.endpoint], "NONE")])
        good = f.read_text()
        with running_agent(*plain_flags(f, "0.1", "--failure-threshold", "3")) as built:
            wait_for(lambda: get(built, "/readyz")[0] == 200, what="ready")
            f.write_text("targets: [oops")
            wait_for(lambda: get(built, "/readyz")[0] == 503, what="not ready")
            assert built.agent.state.consecutive_failures >= 3
            body = get(built, "/readyz")[1]
            assert "consecutive failed rounds" in body and "invalid YAML" in body
            doc = json.loads(get(built, "/results")[1])
            assert doc["summary"]["error"] == 1
            assert doc["results"][0]["check"] == "discovery"
            assert doc["results"][0]["verdict"] == "error"
            metrics = get(built, "/metrics")[1]
            fams = {m.name: m for m in text_string_to_metric_families(metrics)}
            failed = [
                s.value
                for s in fams["mtlsprobe_agent_rounds"].samples
                if s.labels.get("outcome") == "failed" and s.name.endswith("_total")
            ]
            assert failed and failed[0] >= 3
            f.write_text(good)
            wait_for(lambda: get(built, "/readyz")[0] == 200, what="ready again")
            assert json.loads(get(built, "/results")[1])["summary"]["pass"] == 1


def test_all_errors_is_a_failed_round(tmp_path: Path) -> None:
    """A node that can observe nothing (network broken) is not ready: its share is
    better done by the others than reported as errors every round."""
    from tests.tlsservers import nothing_listening

    f = write_targets(tmp_path / "t.yaml", [target("ns-a/gone", [nothing_listening()], "NONE")])
    with running_agent(
        *plain_flags(f, "0.1", "--failure-threshold", "2", "--timeout", "0.5")
    ) as built:
        wait_for(lambda: built.agent.state.consecutive_failures >= 2, what="2 failed rounds")
        status, body = get(built, "/readyz")
        assert status == 503 and "nothing could be observed" in body


def test_two_agents_split_the_endpoints(tmp_path: Path) -> None:
    """Static peers: each endpoint is probed by exactly one of the two agents."""
    servers = [serving(plaintext_http) for _ in range(12)]
    with contextlib_exit(servers) as live:
        eps: list[Endpoint] = [s.endpoint for s in live]
        f = write_targets(
            tmp_path / "t.yaml",
            [target(f"ns-a/svc-{i}", eps[i * 3 : i * 3 + 3], "NONE") for i in range(4)],
        )
        common = ["--kind", "plain", "--targets", str(f), "--interval", "30"]
        common += ["--peers", "agent-a,agent-b"]
        with (
            running_agent(*common, "--agent-id", "agent-a") as a,
            running_agent(*common, "--agent-id", "agent-b") as b,
        ):
            wait_for(
                lambda: a.agent.state.rounds[0] >= 1 and b.agent.state.rounds[0] >= 1,
                what="a round of each",
            )
            probed = []
            for built in (a, b):
                doc = json.loads(get(built, "/results")[1])
                probed.append({r["endpoint"] for r in doc["results"] if r["check"] == "plaintext"})
    # Each probed exactly its rendezvous share, computed by the same function from the
    # same file (which share is which depends on the ports, so no size is assumed).
    tf = load_targets(f)
    for me, got in zip(("agent-a", "agent-b"), probed, strict=True):
        share = select_shard(tf, ["agent-a", "agent-b"], me, ShardUnit.ENDPOINT)
        assert got == {str(e) for t in share.targets.targets for e in t.endpoints}, me
    assert not probed[0] & probed[1]
    assert probed[0] | probed[1] == {str(e) for e in eps}


class contextlib_exit:
    """Enter a list of context managers, exit them all (even on failure)."""

    def __init__(self, cms: list) -> None:  # type: ignore[type-arg]
        import contextlib

        self._stack = contextlib.ExitStack()
        self._cms = cms

    def __enter__(self) -> list:  # type: ignore[type-arg]
        return [self._stack.enter_context(cm) for cm in self._cms]

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
