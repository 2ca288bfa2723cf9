"""Benchmark: ``mtlsprobe lab --workloads N`` — time to ready, full-suite wall time,
checks per second, RSS per Envoy and of the probe process.

    .venv/bin/python benchmarks/bench_lab.py --workloads 500 [--append BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

from jobs.lab.runner import LabRun, run_scenario
from jobs.lab.runtime import Lab, rss_mib
from jobs.lab.scenarios import generated
from probe.checks import REGISTRY
from probe.checks.base import Settings
from probe.results import summarize


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workloads", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--envoys", type=int, default=None)
    p.add_argument("--append", type=Path, help="append a result row to this Markdown file")
    args = p.parse_args()

    rss: dict[str, float] = {}

    def on_ready(lab: Lab, run: LabRun) -> None:
        for proc in lab.supervisor.procs:
            rss[proc.name] = rss_mib(proc.pid)

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mtlsprobe-bench-") as wd:
        run = run_scenario(
            generated(args.workloads),
            Path(wd),
            require=[],
            checks=list(REGISTRY),
            settings=Settings(timeout=5.0, concurrency=args.concurrency),
            envoys=args.envoys,
            on_ready=on_ready,
        )
    total = time.monotonic() - t0
    probe_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    counts = summarize(run.results)
    checks = len(run.results)
    rate = checks / run.check_seconds if run.check_seconds else 0.0
    envoy_rss = {k: v for k, v in rss.items() if "sidecar" in k}
    endpoints = sum(len(t.endpoints) for t in run.build.targets.targets)
    lines = [
        f"workloads={args.workloads} endpoints={endpoints} envoy_processes={run.envoys} "
        f"concurrency={args.concurrency} cpus={os.cpu_count()}",
        f"time to ready: {run.ready_seconds:.2f}s (certificates, configs, processes, readiness)",
        f"full suite: {run.check_seconds:.2f}s for {checks} results ({rate:.0f} checks/s); "
        f"verdicts {counts}",
        f"total wall time (build, up, checks, teardown): {total:.2f}s",
        "RSS at ready (MiB; sidecars-N host the workload sidecars): "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(envoy_rss.items()))
        + f"; apps {sum(v for k, v in rss.items() if k.startswith('apps')):.0f}",
        f"probe process peak RSS: {probe_rss:.0f} MiB",
        f"mismatches against the scenario: {len(run.mismatches)}",
    ]
    print("\n".join(lines))
    if args.append:
        with args.append.open("a", encoding="utf-8") as f:
            f.write(
                f"\n`{' '.join(['python', *sys.argv])}` on {platform.machine()}, "
                f"{time.strftime('%Y-%m-%d')}:\n\n" + "".join(f"- {line}\n" for line in lines)
            )
    return 0 if not run.mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
