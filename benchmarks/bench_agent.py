"""Benchmark: ``mtlsprobe agent`` on the lab mesh — RSS and CPU per round at scale, and
RSS after many rounds vs after a few (no growth beyond noise).

    .venv/bin/python benchmarks/bench_agent.py --workloads 1000 --scale-rounds 5 \\
        --leak-workloads 50 --leak-rounds 500 [--append BENCHMARKS.md]

The agent runs as its own process (``python -m jobs.cli.main agent --targets …``), so the
numbers are the agent's alone: /proc/<pid>/status VmRSS and /proc/<pid>/stat
utime+stime, sampled when its /metrics round counter reaches a given round.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script too

from jobs.lab.runner import running
from jobs.lab.scenarios import generated
from tests.procs import terminate

if TYPE_CHECKING:
    from probe.pki import KeyType

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    rounds: int
    rss_mib: float
    cpu_s: float
    round_s: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _scrape(port: int) -> tuple[int, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    rounds, duration = 0, 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name == "mtlsprobe_agent_rounds":
            rounds = int(sum(s.value for s in fam.samples if s.name.endswith("_total")))
        elif fam.name == "mtlsprobe_agent_round_duration_seconds":
            duration = fam.samples[0].value
    return rounds, duration


@contextlib.contextmanager
def lab_targets(workloads: int, workdir: Path) -> Iterator[Path]:
    with running(generated(workloads), workdir / f"lab-{workloads}", ready_timeout=300) as up:
        yield up.targets_path


def run_agent(
    targets: Path, kind: str, interval: float, marks: list[int], concurrency: int
) -> list[Sample]:
    """Run the agent until the last mark; sample RSS and CPU at each mark."""
    port = _free_port()
    argv = [
        sys.executable,
        "-m",
        "jobs.cli.main",
        "agent",
        "--kind",
        kind,
        "--targets",
        str(targets),
    ]
    argv += ["--interval", str(interval), "--jitter", "0", "--listen", f"127.0.0.1:{port}"]
    argv += ["--concurrency", str(concurrency), "--timeout", "5"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[Sample] = []
    try:
        pending = sorted(marks)
        deadline = time.monotonic() + 3600
        while pending and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited with {proc.returncode}")
            try:
                rounds, duration = _scrape(port)
            except OSError:
                time.sleep(0.2)
                continue
            if rounds >= pending[0]:
                samples.append(Sample(rounds, _rss_mib(proc.pid), _cpu_s(proc.pid), duration))
                pending.pop(0)
            time.sleep(0.05)
    finally:
        terminate(proc, 30)
    return samples


@contextlib.contextmanager
def strict_targets(pods: int, endpoints: int, key_type: KeyType, workdir: Path) -> Iterator[Path]:
    """``endpoints`` sidecar-less-probed STRICT endpoints on one real Envoy: ``pods``
    listeners (tests/strict_envoy.py), target i on listener i mod pods. Every check is a
    real connection and handshake; the agent cannot tell a reused listener from a pod."""
    from benchmarks.bench_checks import bench_envoy, identity, targets_file, write_targets

    with bench_envoy(pods, key_type, workdir) as (_, started, root):
        tf = targets_file([started[i % pods] for i in range(endpoints)], root)
        # Same identity per listener: target i expects listener (i mod pods)'s SVID.
        tf = replace(
            tf,
            targets=tuple(
                replace(t, identity=identity(i % pods)) for i, t in enumerate(tf.targets)
            ),
        )
        yield write_targets(tf, workdir / f"targets-{endpoints}.yaml")


def scale_main(args: argparse.Namespace) -> int:
    """Plain agent at ``--endpoints`` on one real Envoy: CPU per endpoint per round,
    round wall time, RSS at rounds 1, 2, ... ``--scale-rounds``."""
    marks = list(range(1, args.scale_rounds + 1))
    with (
        tempfile.TemporaryDirectory(prefix="mtlsprobe-bench-agent-") as wd,
        strict_targets(args.envoy_pods, args.endpoints, args.key_type, Path(wd)) as t,
    ):
        print(f"load average {os.getloadavg()}", flush=True)
        s = run_agent(t, "plain", 0.1, marks, args.concurrency)
    print("| round | round wall | agent CPU this round | CPU per endpoint | RSS | load |")
    print("| --- | --- | --- | --- | --- | --- |")
    prev = None
    for x in s:
        if prev is not None:
            cpu = (x.cpu_s - prev.cpu_s) / max(1, x.rounds - prev.rounds)
            print(
                f"| {x.rounds} | {x.round_s:.1f} s | {cpu:.1f} s | "
                f"{cpu / args.endpoints * 1000:.2f} ms | {x.rss_mib:.0f} MiB | "
                f"{os.getloadavg()[0]:.1f} |",
                flush=True,
            )
        prev = x
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workloads", type=int, default=1000)
    p.add_argument("--scale-rounds", type=int, default=5)
    p.add_argument("--leak-workloads", type=int, default=50)
    p.add_argument("--leak-rounds", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--append", type=Path, help="append the results to this Markdown file")
    p.add_argument(
        "--endpoints",
        type=int,
        help="instead of the lab: this many plain endpoints on one real STRICT Envoy "
        "(--envoy-pods listeners), CPU and RSS per round",
    )
    p.add_argument("--envoy-pods", type=int, default=200)
    p.add_argument("--key-type", choices=["rsa", "ec"], default="rsa")
    args = p.parse_args()
    if args.endpoints:
        return scale_main(args)

    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mtlsprobe-bench-agent-") as wd:
        with lab_targets(args.workloads, Path(wd)) as targets:
            for kind in ("plain", "sidecar"):
                s = run_agent(targets, kind, 0.1, [1, args.scale_rounds], args.concurrency)
                first, last = s[0], s[-1]
                per_round = (last.cpu_s - first.cpu_s) / max(1, last.rounds - first.rounds)
                lines.append(
                    f"| {kind} | {args.workloads} | {last.round_s:.2f} s | "
                    f"{per_round:.2f} s | {last.rss_mib:.0f} MiB |"
                )
                print(lines[-1], flush=True)
        leak: list[str] = []
        with lab_targets(args.leak_workloads, Path(wd)) as targets:
            for kind in ("plain", "sidecar"):
                s = run_agent(targets, kind, 0.02, [10, args.leak_rounds], args.concurrency)
                a, b = s[0], s[-1]
                leak.append(
                    f"| {kind} | {args.leak_workloads} | {a.rss_mib:.1f} MiB (round {a.rounds}) | "
                    f"{b.rss_mib:.1f} MiB (round {b.rounds}) | {b.rss_mib - a.rss_mib:+.1f} MiB |"
                )
                print(leak[-1], flush=True)

    cmd = (
        f".venv/bin/python benchmarks/bench_agent.py --workloads {args.workloads} "
        f"--scale-rounds {args.scale_rounds} --leak-workloads {args.leak_workloads} "
        f"--leak-rounds {args.leak_rounds}"
    )
    report = "\n".join(
        [
            f"Command: `{cmd}` ({platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, {time.strftime('%Y-%m-%d')})",
            "",
            "| kind | endpoints | round wall time | agent CPU per round | agent RSS |",
            "| --- | --- | --- | --- | --- |",
            *lines,
            "",
            "| kind | endpoints | RSS early | RSS late | growth |",
            "| --- | --- | --- | --- | --- |",
            *leak,
            "",
        ]
    )
    print(report)
    if args.append:
        with args.append.open("a", encoding="utf-8") as f:
            f.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
