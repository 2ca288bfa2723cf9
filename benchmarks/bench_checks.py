"""Benchmark: the probe's ``plaintext`` and ``peer-cert`` checks against the way people
verify today (one ``curl`` per plaintext check, one ``openssl s_client`` per certificate
inspection), over N STRICT-like listeners on one real Envoy; and the probe's CPU per
peer-cert check against Envoy's CPU per handshake.

    .venv/bin/python -m benchmarks.bench_checks --endpoints 200 [--append BENCHMARKS.md]

The baselines run the way a shell loop does (sequentially) and, to be fair to them,
also with as many processes in flight as the probe has threads.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from jobs.lab.addresses import Slot
from probe.checks.base import Check, RunContext, Settings
from probe.checks.peer_cert import PeerCertCheck
from probe.checks.plaintext import PlaintextCheck
from probe.engine import run_checks
from probe.model import Endpoint, Expect, Protocol, Source, Target, TargetsFile
from probe.pki import CertificateAuthority, KeyType
from probe.results import Result, Verdict, summarize
from tests.strict_envoy import Pod, RunningEnvoy, strict_envoy

TD = "cluster.local"
PORT = 8080


def identity(i: int) -> str:
    return f"spiffe://{TD}/ns/bench/sa/w{i}"


def targets_file(pods: Sequence[Pod], root: Path) -> TargetsFile:
    targets = tuple(
        Target(
            name=f"bench/w{i}",
            host=f"w{i}.bench.svc.cluster.local",
            port=PORT,
            expect=Expect.STRICT,
            endpoints=(pod.endpoint,),
            identity=identity(i),
            protocol=Protocol.HTTP,
            echo=False,
        )
        for i, pod in enumerate(pods)
    )
    return TargetsFile(
        trust_domain=TD,
        targets=targets,
        source=Source(identity=f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe"),
        root_cert_file=root,
    )


@contextlib.contextmanager
def bench_envoy(
    n: int, key_type: KeyType, workdir: Path
) -> Iterator[tuple[RunningEnvoy, list[Pod], Path]]:
    """One real Envoy (tests/strict_envoy.py) with ``n`` STRICT listeners, listener i
    presenting ``identity(i)`` on a ``key_type`` key from an RSA mesh root; with the
    root's file. Envoy is stopped by PID when the block ends."""
    ca = CertificateAuthority.create_root(TD, key_type="rsa")
    root = workdir / "root-cert.pem"
    root.write_bytes(ca.root_pem())

    def pods(slot: Slot) -> list[Pod]:
        return [
            Pod(Endpoint(slot.pod_ip(i), PORT), ca.issue_workload(identity(i), key_type=key_type))
            for i in range(n)
        ]

    with strict_envoy(pods, root, TD, workdir, concurrency=1) as (envoy, started):
        yield envoy, started, root


def write_targets(tf: TargetsFile, path: Path) -> Path:
    path.write_text(yaml.safe_dump(tf.to_dict(), sort_keys=False), encoding="utf-8")
    return path


def append_report(path: Path, module: str, lines: Sequence[str], note: str = "") -> None:
    """Append ``lines`` to ``path`` under the command that made them (``--append`` left out)."""
    cmd = " ".join([".venv/bin/python", "-m", module, *sys.argv[1:]])
    cmd = cmd.replace(f" --append {path}", "")
    with path.open("a", encoding="utf-8") as f:
        f.write(
            f"\n`{cmd}` on {platform.machine()}, {dt.date.today().isoformat()}{note}:\n\n"
            + "\n".join(lines)
            + "\n"
        )


def cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_of(pid: int) -> float:
    """utime+stime of another process, from /proc/<pid>/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_run(check: Check, tf: TargetsFile, concurrency: int) -> tuple[float, list[Result]]:
    t0 = time.perf_counter()
    ctx = RunContext(tf, Settings(timeout=5.0, concurrency=concurrency))
    try:
        results = run_checks([check], ctx)
    finally:
        ctx.close()
    return time.perf_counter() - t0, results


def median_run(check: Check, tf: TargetsFile, concurrency: int) -> tuple[float, list[Result]]:
    """Median wall time of three runs (the machine is shared), last run's results."""
    runs = [probe_run(check, tf, concurrency) for _ in range(3)]
    return statistics.median(w for w, _ in runs), runs[-1][1]


def baseline(
    argv_for: Callable[[Endpoint], list[str]], endpoints: Sequence[Endpoint], parallel: int
) -> tuple[float, list[int]]:
    def one(ep: Endpoint) -> int:
        return subprocess.run(
            argv_for(ep),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        ).returncode

    t0 = time.perf_counter()
    if parallel <= 1:
        codes = [one(ep) for ep in endpoints]
    else:
        with ThreadPoolExecutor(parallel) as pool:
            codes = list(pool.map(one, endpoints))
    return time.perf_counter() - t0, codes


def curl(ep: Endpoint) -> list[str]:
    return ["curl", "-s", "-o", "/dev/null", "--max-time", "5", f"http://{ep}/"]


def s_client(ep: Endpoint) -> list[str]:
    return ["openssl", "s_client", "-connect", str(ep), "-alpn", "istio", "-showcerts"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--endpoints", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="peer-cert rounds for the CPU ratio")
    p.add_argument("--key-type", choices=["rsa", "ec"], default="rsa", help="server keys")
    p.add_argument("--append", type=Path, help="append the results to this Markdown file")
    args = p.parse_args()
    n: int = args.endpoints
    key_type: KeyType = args.key_type
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with tempfile.TemporaryDirectory(prefix="bench-checks-") as tmpdir:
        tmp = Path(tmpdir)
        with bench_envoy(n, key_type, tmp) as (envoy, started, root):
            tf = targets_file(started, root)
            endpoints = [pod.endpoint for pod in started]
            load = os.getloadavg()[0]
            say(f"- load average at start {load:.1f} (other work shares the machine)")
            say(
                f"- endpoints={n} (one Envoy 1.x, --concurrency 1, STRICT-like listeners, "
                f"{key_type.upper()} server certificates) probe concurrency={args.concurrency} "
                f"cpus={os.cpu_count()}"
            )
            # Warm up both sides (page cache, Envoy's first connections, imports).
            probe_run(PlaintextCheck(), tf, args.concurrency)
            probe_run(PeerCertCheck(), tf, args.concurrency)

            pt_wall, pt_results = median_run(PlaintextCheck(), tf, args.concurrency)
            pc_wall, pc_results = median_run(PeerCertCheck(), tf, args.concurrency)
            for name, results in (("plaintext", pt_results), ("peer-cert", pc_results)):
                counts = summarize(results)
                if counts["pass"] != n:
                    bad = next(r for r in results if r.verdict is not Verdict.PASS)
                    raise SystemExit(f"{name}: not all pass {counts}: {bad.reason}")

            curl_seq, curl_codes = baseline(curl, endpoints, 1)
            curl_par, _ = baseline(curl, endpoints, args.concurrency)
            ssl_seq, _ = baseline(s_client, endpoints, 1)
            ssl_par, _ = baseline(s_client, endpoints, args.concurrency)
            # curl's exit 56 is "failure receiving network data": the reset STRICT sends.
            refused = sum(1 for c in curl_codes if c == 56)

            say(
                f"- plaintext: probe {pt_wall * 1000:.0f} ms for {n} checks (median of 3) "
                f"({n / pt_wall:.0f}/s); curl loop {curl_seq * 1000:.0f} ms "
                f"(**{curl_seq / pt_wall:.0f}x**), {args.concurrency} in parallel "
                f"{curl_par * 1000:.0f} ms ({curl_par / pt_wall:.1f}x); "
                f"curl saw the reset (exit 56) {refused}/{n}"
            )
            say(
                f"- peer-cert: probe {pc_wall * 1000:.0f} ms for {n} checks (median of 3) "
                f"({n / pc_wall:.0f}/s, each with the full SVID judgement); openssl s_client "
                f"loop {ssl_seq * 1000:.0f} ms (**{ssl_seq / pc_wall:.0f}x**), "
                f"{args.concurrency} in parallel {ssl_par * 1000:.0f} ms "
                f"({ssl_par / pc_wall:.1f}x; s_client only prints the chain, judges nothing)"
            )

            # CPU per peer-cert check vs Envoy's CPU per handshake, over several rounds.
            per_check: list[float] = []
            per_handshake: list[float] = []
            for _ in range(args.rounds):
                c0, e0 = cpu_self(), cpu_of(envoy.pid)
                _, results = probe_run(PeerCertCheck(), tf, args.concurrency)
                c1, e1 = cpu_self(), cpu_of(envoy.pid)
                assert all(r.verdict is Verdict.PASS for r in results)
                per_check.append((c1 - c0) / n)
                per_handshake.append((e1 - e0) / n)
            pc_cpu = statistics.median(per_check) * 1000
            env_cpu = statistics.median(per_handshake) * 1000
            say(
                f"- CPU per peer-cert check (probe, whole process incl. threads, engine, SVID "
                f"judgement): {pc_cpu:.2f} ms; Envoy CPU per handshake: {env_cpu:.2f} ms; "
                f"ratio **{pc_cpu / env_cpu:.2f}x** (median of {args.rounds} rounds of {n}; "
                f"/proc tick resolution 10 ms per round)"
            )

    starts = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).with_name("mtlsprobe")), "check", "--help"],
            stdout=subprocess.DEVNULL,
            check=True,
        )
        starts.append(time.perf_counter() - t0)
    say(
        f"- `mtlsprobe check --help` start-up: median {statistics.median(starts) * 1000:.0f} ms "
        f"(min {min(starts) * 1000:.0f} ms, 5 runs)"
    )

    if args.append:
        append_report(args.append, "benchmarks.bench_checks", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
