"""Benchmark: ``mtlsprobe agent`` on the lab mesh — RSS and CPU per round at scale, and
RSS after many rounds vs after a few (no growth beyond noise).

    .venv/bin/python benchmarks/bench_agent.py --workloads 1000 --scale-rounds 5 \\
        --leak-workloads 50 --leak-rounds 500 [--append BENCHMARKS.md]

At a given size on one real STRICT Envoy (``--endpoints``), CPU and RSS per round, and
RSS over many rounds at that size with its fitted slope (``--rss-rounds``); optionally a
second agent from another tree (``--baseline-tree``, e.g. an export of main) probing the
same endpoints at the same time, so before and after share the machine's load:

    .venv/bin/python -m benchmarks.bench_agent --endpoints 10000 --rss-rounds 12 \\
        [--baseline-tree /tmp/main-export] [--refused]

The agent runs as its own process (``python -m jobs.cli.main agent --targets …``), so the
numbers are the agent's alone: /proc/<pid>/status VmRSS (and VmHWM, the peak) and
/proc/<pid>/stat utime+stime, sampled when its round counter reaches a given round. The
round counter is read from ``/readyz`` (cheap) and only when that does not carry it
(a failed round) from ``/metrics`` at most once a second: at 10,000 endpoints one
/metrics render (10,000 expiry series) costs the agent tens of ms of CPU, and polling it
every 50 ms inflated the CPU per round this benchmark reported before.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
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
# Between reads of the round counter: each read is an HTTP request the agent serves (a
# thread, a parse) and its CPU is counted as the agent's; rounds at scale take minutes.
POLL_S = 0.25


@dataclass
class Sample:
    rounds: int
    rss_mib: float
    cpu_s: float
    round_s: float
    hwm_mib: float = 0.0  # peak RSS so far


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


_READY_ROUND = re.compile(r"round (\d+) completed")


def _ready_round(port: int) -> int | None:
    """The last completed round from /readyz, when the agent is ready (None otherwise)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            text = r.read().decode()
    except urllib.error.HTTPError:
        return None  # 503: no round yet, or failed rounds: the text has no number
    m = _READY_ROUND.search(text)
    return int(m.group(1)) if m else None


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
    targets: Path,
    kind: str,
    interval: float,
    marks: list[int],
    concurrency: int,
    tree: Path = REPO,
    on_sample: Callable[[Sample], None] | None = None,
) -> list[Sample]:
    """Run the agent (from ``tree``) until the last mark; sample RSS and CPU at each."""
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
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    proc = subprocess.Popen(
        argv, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    samples: list[Sample] = []
    try:
        pending = sorted(marks)
        deadline = time.monotonic() + 36 * 3600
        last_metrics = 0.0
        while pending and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited with {proc.returncode}")
            try:
                rounds = _ready_round(port)
                if rounds is None and time.monotonic() - last_metrics >= 1.0:
                    last_metrics = time.monotonic()
                    rounds, _ = _scrape(port)
            except OSError:
                time.sleep(0.2)
                continue
            if rounds is not None and rounds >= pending[0]:
                rss, hwm, cpu = (
                    _rss_mib(proc.pid),
                    _rss_mib(proc.pid, "VmHWM"),
                    _cpu_s(proc.pid),
                )
                _, duration = _scrape(port)  # once per mark: its cost is not in `cpu`
                sample = Sample(rounds, rss, cpu, duration, hwm)
                samples.append(sample)
                if on_sample is not None:
                    on_sample(sample)
                while pending and pending[0] <= rounds:
                    pending.pop(0)
            time.sleep(POLL_S)
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


@contextlib.contextmanager
def refused_targets(endpoints: int, workdir: Path) -> Iterator[Path]:
    """``endpoints`` STRICT targets on loopback addresses where nothing listens: every
    check is refused at once (all results ``error``), so a round at 10,000 endpoints
    takes seconds and many rounds at that size fit in a benchmark. The agent's own
    memory at the size, not the handshakes' (error results carry less evidence)."""
    from benchmarks.bench_checks import targets_file, write_targets
    from probe.model import Endpoint
    from probe.pki import CertificateAuthority

    ca = CertificateAuthority.create_root("cluster.local", key_type="ec")
    root = workdir / "root-cert.pem"
    root.write_bytes(ca.root_pem())
    with socket.socket() as s:  # a port nothing listens on (closed right away)
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])

    @dataclass
    class Nobody:
        endpoint: Endpoint

    pods = [Nobody(Endpoint(f"127.1.{i // 250}.{i % 250 + 1}", port)) for i in range(endpoints)]
    yield write_targets(targets_file(pods, root), workdir / f"refused-{endpoints}.yaml")  # type: ignore[arg-type]


def _slope(points: Sequence[tuple[int, float]]) -> float:
    """Least-squares slope of (round, MiB)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def scale_main(args: argparse.Namespace) -> int:
    """The plain agent at ``--endpoints``: per round its CPU (per endpoint), wall time,
    RSS and peak RSS; with ``--rss-rounds`` the RSS slope over the rounds after
    ``--warmup``. With ``--baseline-tree`` a second agent from that tree runs at the
    same time on the same endpoints, so both see the same load."""
    rounds = args.rss_rounds or args.scale_rounds
    marks = list(range(1, rounds + 1))
    trees = {"this tree": REPO}
    if args.baseline_tree:
        trees["baseline"] = args.baseline_tree.resolve()
    samples: dict[str, list[Sample]] = {name: [] for name in trees}
    errors: list[str] = []
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mtlsprobe-bench-agent-") as wd:
        ctx = (
            refused_targets(args.endpoints, Path(wd))
            if args.refused
            else strict_targets(args.envoy_pods, args.endpoints, args.key_type, Path(wd))
        )
        with ctx as t:
            print(f"load average at start {os.getloadavg()}", flush=True)

            def one(name: str, tree: Path) -> None:
                def show(x: Sample) -> None:
                    samples[name].append(x)
                    loads.append(os.getloadavg()[0])
                    print(
                        f"{name}: round {x.rounds} RSS {x.rss_mib:.1f} MiB peak "
                        f"{x.hwm_mib:.1f} MiB CPU {x.cpu_s:.1f} s load {loads[-1]:.1f}",
                        flush=True,
                    )

                try:
                    run_agent(t, "plain", 0.1, marks, args.concurrency, tree, show)
                except Exception as exc:  # reported below; the other agent goes on
                    errors.append(f"{name}: {exc}")

            threads = [
                threading.Thread(target=one, args=(name, tree)) for name, tree in trees.items()
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
    for err in errors:
        print(f"FAILED {err}")
    kind = "refused (nothing listens)" if args.refused else f"real STRICT Envoy, {args.key_type}"
    print(
        f"\n{args.endpoints} endpoints, {kind}, {rounds} rounds; load average "
        f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f} at the samples\n"
    )
    for name, s in samples.items():
        print(f"{name} ({trees[name]}):\n")
        print("| round | round wall | agent CPU this round | CPU per endpoint | RSS | peak RSS |")
        print("| --- | --- | --- | --- | --- | --- |")
        prev: Sample | None = None
        for x in s:
            cpu = per = ""
            if prev is not None:
                used = (x.cpu_s - prev.cpu_s) / max(1, x.rounds - prev.rounds)
                cpu, per = f"{used:.1f} s", f"{used / args.endpoints * 1000:.2f} ms"
            print(
                f"| {x.rounds} | {x.round_s:.1f} s | {cpu} | {per} | {x.rss_mib:.1f} MiB | "
                f"{x.hwm_mib:.1f} MiB |"
            )
            prev = x
        late = [(x.rounds, x.rss_mib) for x in s if x.rounds > args.warmup]
        if len(late) >= 2:
            slope = _slope(late)
            print(
                f"\nRSS slope over rounds {late[0][0]}-{late[-1][0]} ({len(late)} samples): "
                f"{slope * 1024:+.1f} KiB/round ({slope * 500:+.1f} MiB per 500 rounds); "
                f"RSS {min(y for _, y in late):.1f}-{max(y for _, y in late):.1f} MiB\n"
            )
    return 1 if errors else 0


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
    p.add_argument(
        "--rss-rounds",
        type=int,
        help="with --endpoints: sample every round up to this one and fit the RSS slope",
    )
    p.add_argument("--warmup", type=int, default=2, help="rounds left out of the slope")
    p.add_argument(
        "--refused",
        action="store_true",
        help="with --endpoints: targets where nothing listens (fast rounds at full size)",
    )
    p.add_argument(
        "--baseline-tree",
        type=Path,
        help="also run the agent from this tree (e.g. `git archive main`), at the same time",
    )
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
