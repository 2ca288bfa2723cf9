"""Benchmark: the probe as a probe pod pays for it — one ``mtlsprobe check`` PROCESS
(interpreter, imports, targets file, report included) against 200 STRICT listeners of
one real Envoy, side by side in the same run with the per-process loop the guides use
(one ``curl`` per plaintext check, one ``openssl s_client`` per certificate), on RSA 2048
and ECDSA P-256 workload certificates.

    .venv/bin/python -m benchmarks.bench_process [--endpoints 200] [--reps 3] [--append F]

Printed per key type, each a median of ``--reps`` repetitions:

- wall: the check process (plaintext + peer-cert, every result must pass) vs the
  sequential curl + s_client loop, and the ratio (goal >= 30x);
- CPU: the check process's own CPU (``wait4`` rusage of the child: start-up, imports,
  every thread) per peer-cert check, running peer-cert alone, vs Envoy's CPU delta
  (``/proc/<pid>/stat``) over the same run per handshake (goal <= 1.5x RSA, <= 3x ECDSA);
- start-up: ``mtlsprobe check --help`` wall (goal < 0.15 s) and the first result of a
  one-endpoint run, i.e. the first byte of its JSONL report (goal < 0.3 s).

The Envoy and PKI set-up is benchmarks.bench_checks' (tests/strict_envoy.py).

Before measuring, the ``probe`` and ``jobs`` sources are compiled to bytecode, as the
image does at build time (Dockerfile: ``compileall``): with PYTHONDONTWRITEBYTECODE set,
an editable checkout would otherwise recompile every module on every start-up (~80 ms
of CPU here), which no probe pod pays.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jobs
import probe
from benchmarks.bench_checks import (
    append_report,
    baseline,
    bench_envoy,
    cpu_of,
    curl,
    s_client,
    write_targets,
)
from benchmarks.bench_checks import targets_file as make_targets
from probe.pki import KeyType

MTLSPROBE = str(Path(sys.executable).with_name("mtlsprobe"))


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


@dataclass(frozen=True)
class ProcRun:
    wall: float
    cpu: float
    stdout: bytes
    code: int


def run_measured(argv: Sequence[str], env: dict[str, str] | None = None) -> ProcRun:
    """Like run_process, with the child's own CPU from wait4 (exact, not tick-rounded)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    chunks = []
    while chunk := proc.stdout.read(65536):
        chunks.append(chunk)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ProcRun(wall, ru.ru_utime + ru.ru_stime, b"".join(chunks), proc.returncode)


def first_result(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds from spawning to the first byte on stdout (the first JSONL result), and
    the process's CPU seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    select.select([proc.stdout], [], [], 30)
    first = time.perf_counter() - t0
    proc.stdout.read()
    _, _, ru = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return first, ru.ru_utime + ru.ru_stime


def verdicts(out: bytes) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in json.loads(out)["results"]:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return counts


def bench_key_type(
    key_type: KeyType, n: int, reps: int, tmp: Path, env: dict[str, str], say: Callable[[str], None]
) -> None:
    label = {"rsa": "RSA 2048", "ec": "ECDSA P-256"}[key_type]
    with bench_envoy(n, key_type, tmp) as (envoy, started, root):
        path = write_targets(make_targets(started, root), tmp / "targets.yaml")
        one = write_targets(make_targets(started[:1], root), tmp / "one.yaml")
        endpoints = [pod.endpoint for pod in started]
        check = [MTLSPROBE, "check", "-f", str(path), "-o", "json"]
        both = [*check, "--checks", "plaintext,peer-cert"]
        peer = [*check, "--checks", "peer-cert"]

        run_measured(both, env)  # warm: page cache, Envoy's first connections
        walls, loops, cpus, envoy_cpus = [], [], [], []
        for _ in range(reps):
            r = run_measured(both, env)
            counts = verdicts(r.stdout)
            if r.code != 0 or counts != {"pass": 2 * n}:
                raise SystemExit(f"{label}: check exited {r.code}, verdicts {counts}")
            walls.append(r.wall)
            curl_s, codes = baseline(curl, endpoints, 1)
            ssl_s, _ = baseline(s_client, endpoints, 1)
            if sum(1 for c in codes if c == 56) != n:  # 56: the reset STRICT sends
                raise SystemExit(f"{label}: curl did not see the reset on every endpoint")
            loops.append(curl_s + ssl_s)
            e0 = cpu_of(envoy.pid)
            p = run_measured(peer, env)
            e1 = cpu_of(envoy.pid)
            if verdicts(p.stdout) != {"pass": n}:
                raise SystemExit(f"{label}: peer-cert not all pass: {verdicts(p.stdout)}")
            cpus.append(p.cpu / n)
            envoy_cpus.append((e1 - e0) / n)
        wall, loop = statistics.median(walls), statistics.median(loops)
        cpu, ecpu = statistics.median(cpus) * 1000, statistics.median(envoy_cpus) * 1000
        one_run = [MTLSPROBE, "check", "-f", str(one), "-o", "jsonl"]
        one_run += ["--checks", "plaintext,peer-cert"]
        firsts = [first_result(one_run, env) for _ in range(5)]
        first = statistics.median(w for w, _ in firsts)
        first_cpu = statistics.median(c for _, c in firsts)
    say(
        f"- {label}: `check` process {wall * 1000:.0f} ms for {2 * n} checks (plaintext + "
        f"peer-cert over {n} endpoints, all pass) vs curl + s_client loop {loop * 1000:.0f} ms: "
        f"**{loop / wall:.1f}x** (goal >= 30x); load {load()}"
    )
    goal = 1.5 if key_type == "rsa" else 3.0
    say(
        f"- {label}: check process CPU per peer-cert check (start-up included) {cpu:.2f} ms vs "
        f"Envoy CPU per handshake {ecpu:.2f} ms: **{cpu / ecpu:.2f}x** (goal <= {goal}x); "
        f"first result of a one-endpoint run {first * 1000:.0f} ms wall, "
        f"{first_cpu * 1000:.0f} ms CPU (goal < 300 ms wall); "
        f"load {load()}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--endpoints", type=int, default=200)
    p.add_argument("--reps", type=int, default=3, help="repetitions (the median is printed)")
    p.add_argument("--key-types", default="rsa,ec", help="comma-separated: rsa, ec")
    p.add_argument("--append", type=Path, help="append the results to this Markdown file")
    args = p.parse_args()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    for package in (probe, jobs):
        compileall.compile_dir(Path(str(package.__file__)).parent, quiet=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["NO_COLOR"] = "1"
    say(f"- load average at start {load()} (1/5/15 min), {os.cpu_count()} CPUs")
    helps = [run_measured([MTLSPROBE, "check", "--help"], env) for _ in range(7)]
    walls = [h.wall for h in helps]
    say(
        f"- `mtlsprobe check --help`: median {statistics.median(walls) * 1000:.0f} ms wall "
        f"(min {min(walls) * 1000:.0f} ms), "
        f"{statistics.median(h.cpu for h in helps) * 1000:.0f} ms CPU, 7 runs "
        f"(goal < 150 ms wall); load {load()}"
    )
    for kt in args.key_types.split(","):
        key_type: KeyType = "ec" if kt.strip() == "ec" else "rsa"
        with tempfile.TemporaryDirectory(prefix="bench-process-") as tmpdir:
            bench_key_type(key_type, args.endpoints, args.reps, Path(tmpdir), env, say)

    if args.append:
        append_report(args.append, "benchmarks.bench_process", lines, f" (median of {args.reps})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
