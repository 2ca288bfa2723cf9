"""Per-call cost of the sidecar-side checks on a real Envoy mesh (the lab).

Brings up the built-in ``healthy`` scenario, then runs ``mesh`` and ``xfcc-spoof``
over its HTTP echo targets, sequentially (concurrency 1) and concurrently, many
rounds, through one RunContext (one httpx client per run, as in production), and
prints wall time per call and the probe's own CPU per call. Reference from
docs/istio-behaviour.md: a mesh request with XFCC ≈ 1.8 ms sequential through a reused client.

    .venv/bin/python benchmarks/bench_mesh.py --calls 400
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from jobs.lab.runner import running
from jobs.lab.scenarios import builtin
from probe.checks.base import RunContext, Settings
from probe.checks.mesh import MeshCheck
from probe.checks.xfcc_spoof import XfccSpoofCheck
from probe.engine import run_checks
from probe.model import Protocol
from probe.results import Verdict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=400)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running(builtin("healthy"), Path(tmp)) as up:
        http = [t for t in up.targets.targets if t.protocol is Protocol.HTTP and t.echo]
        reps = max(1, args.calls // len(http))
        targets = replace(up.targets, targets=tuple(http) * reps)
        n = len(targets.targets)
        for check in (MeshCheck(), XfccSpoofCheck()):
            for conc in (1, 8):
                ctx = RunContext(targets, Settings(timeout=5, concurrency=conc))
                try:
                    run_checks([check], ctx)  # warm: client built, connections open
                    w, c = time.perf_counter(), time.process_time()
                    results = run_checks([check], ctx)
                    wall, cpu = time.perf_counter() - w, time.process_time() - c
                finally:
                    ctx.close()
                bad = [r for r in results if r.verdict is not Verdict.PASS]
                print(
                    f"{check.name:10s} concurrency {conc}: {n} calls, "
                    f"{wall / n * 1000:.2f} ms/call wall, {cpu / n * 1000:.2f} ms/call probe CPU, "
                    f"{n / wall:.0f} calls/s, non-pass {len(bad)}"
                )


if __name__ == "__main__":
    main()
