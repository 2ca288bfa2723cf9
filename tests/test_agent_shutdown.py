"""SIGTERM to a real ``mtlsprobe agent`` process mid-round: it exits 0 within the
bound, and a real OTLP/HTTP receiver gets every span and every metric point."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.agenthelp import target, wait_for, write_targets
from tests.otlp_receiver import otlp_receiver
from tests.tlsservers import black_hole, plaintext_http, serving

REPO = Path(__file__).resolve().parent.parent


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return None


def rounds_done(port: int) -> float:
    text = scrape(port)
    if text is None:
        return 0
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "mtlsprobe_agent_rounds"
        for s in fam.samples
        if s.name.endswith("_total")
    )


def cumulative_total(points: list[Any]) -> float:
    """Sum over attribute sets of the latest cumulative value (several exports may
    carry the same counter: the final collect and the shutdown's)."""
    latest: dict[tuple[tuple[str, str], ...], tuple[int, float]] = {}
    for p in points:
        key = tuple(sorted((kv.key, str(kv.value)) for kv in p.attributes))
        value = p.as_int if p.HasField("as_int") else p.as_double
        if key not in latest or p.time_unix_nano >= latest[key][0]:
            latest[key] = (p.time_unix_nano, value)
    return sum(v for _, v in latest.values())


def test_sigterm_mid_round_exits_zero_and_flushes_everything(tmp_path: Path) -> None:
    with (
        serving(plaintext_http) as fast,
        serving(black_hole) as slow,
        otlp_receiver() as (url, got),
    ):
        f = write_targets(
            tmp_path / "t.yaml",
            [
                target("ns-a/plain", [fast.endpoint], "NONE"),
                target("ns-b/slow", [slow.endpoint], "STRICT"),
            ],
        )
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": url,
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # only the shutdown flush exports
            "OTEL_BSP_SCHEDULE_DELAY": "600000",  # spans too: nothing leaves early
            "PYTHONPATH": str(REPO),
        }
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "jobs.cli.main", "agent", "--kind", "plain"),
                *("--targets", str(f), "--interval", "0.5", "--jitter", "0", "--timeout", "2"),
                # Port 0: the agent binds a free port itself and logs it (a port picked
                # here and closed could be taken by another process before it binds).
                *("--listen", "127.0.0.1:0", "--shutdown-grace", "5"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stderr is not None
            head = b""
            while not (found := re.search(rb" on 127\.0\.0\.1:(\d+), every ", head)):
                line = proc.stderr.readline()
                assert line, head.decode()[-2000:]
                head += line
            port = int(found.group(1))
            wait_for(lambda: rounds_done(port) >= 1, timeout=60, what="a completed round")
            # The next round is in flight once it has connected to the silent server
            # again (each round's connections to it come a timeout before it ends).
            seen = slow.accepted
            wait_for(lambda: slow.accepted > seen, timeout=60, what="the next round")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, tail = proc.communicate(timeout=60)
            err = head + tail
            elapsed = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err.decode()[-2000:]
        assert elapsed < 30, elapsed  # a 5 s grace, then the flush: bounded, not a hang
        assert b"telemetry flushed" in err
        assert b"Traceback" not in err

        with got.lock:
            spans = list(got.spans)
        runs = [s for s in spans if s.name == "mtlsprobe.run"]
        checks = [s for s in spans if s.name.startswith("mtlsprobe.check ")]
        rounds = cumulative_total(got.metric_points("mtlsprobe.agent.rounds"))
        counted = cumulative_total(got.metric_points("mtlsprobe.checks"))
    per_round = 6  # 2 targets x (plaintext, peer-cert, foreign-client)
    assert rounds >= 2  # the completed one and the one SIGTERM interrupted
    assert len(runs) == rounds
    assert len(checks) == rounds * per_round
    assert counted == rounds * per_round
    # Every check span belongs to one of the round traces.
    trace_ids = {s.trace_id for s in runs}
    assert {s.trace_id for s in checks} == trace_ids
    # The interrupted round's checks of the silent server are errors, never passes.
    last_trace = max(runs, key=lambda s: s.start_time_unix_nano).trace_id
    slow_verdicts = [
        got.span_attrs(s)["mtlsprobe.verdict"]
        for s in checks
        if s.trace_id == last_trace and got.span_attrs(s)["mtlsprobe.target"] == "ns-b/slow"
    ]
    assert slow_verdicts and set(slow_verdicts) == {"error"}
