"""``mtlsprobe run`` at scale against the fake API server with the simulated Job
controller and kubelet (tests/fakekube_jobs.py): one service with N endpoints, the
plain probe Job sharded (``--shard-threshold``), each shard a real ``mtlsprobe check``
subprocess. The endpoints are loopback addresses where nothing listens (port 9), so
probing is cheap and the numbers show the orchestration: launch, per-shard ConfigMaps,
wait, log collection, aggregation, clean-up.

    .venv/bin/python benchmarks/bench_run.py [--endpoints 5000] [--shard-threshold 200]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.cli import main as cli
from probe.pki import CertificateAuthority
from tests import kubebuild as kb
from tests.fakekube_jobs import JobKube

PORT = 9  # discard: nothing listens on loopback here, refused at once


def build(n: int) -> JobKube:
    kube = JobKube()
    root = CertificateAuthority.create_root().root_pem().decode()
    ips = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n)]
    kube.add_all(
        [
            kb.namespace("mtlsprobe"),
            kb.namespace("ns-a"),
            kb.configmap("istio-ca-root-cert", "mtlsprobe", {"root-cert.pem": root}),
            *kb.echo_service(PORT, ips),
        ]
    )
    return kube


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", type=int, default=5000)
    ap.add_argument("--shard-threshold", type=int, default=200)
    a = ap.parse_args()
    kube = build(a.endpoints)
    # When each shard's probe process ended (the fake kubelet runs them): the run's
    # tail after the last one is log collection, aggregation, the report and clean-up.
    shard_ends: list[float] = []
    run_probe = kube._run_probe

    def timed(*args: Any) -> tuple[str, int]:
        try:
            return run_probe(*args)
        finally:
            shard_ends.append(time.monotonic())

    kube._run_probe = timed  # type: ignore[method-assign,assignment]
    with kube, tempfile.TemporaryDirectory() as d:
        cfg = Path(d, "kubeconfig")
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        argv = ["run", "--kubeconfig", str(cfg), "-n", "ns-a", "--checks", "plaintext"]
        argv += ["--shard-threshold", str(a.shard_threshold), "--deadline", "300"]
        argv += ["-o", "jsonl", "--timeout", "1"]
        out = io.StringIO()
        t0 = time.monotonic()
        with contextlib.redirect_stdout(out):
            code = cli.main(argv)
        end = time.monotonic()
        wall = end - t0
        tail = end - max(shard_ends, default=end)
        results = out.getvalue().splitlines()
        plaintext = sum(json.loads(line)["check"] == "plaintext" for line in results)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"endpoints={a.endpoints} shards={len(kube.probe_runs)} exit={code} "
            f"plaintext_results={plaintext} wall={wall:.2f}s "
            f"after_last_shard={tail:.2f}s (goal <= 10 s) api_calls={len(kube.calls)} "
            f"peak_rss(this process, fake server included)={rss:.0f}MB "
            f"left_behind={len(kube.run_objects())}"
        )
        return 0 if plaintext == a.endpoints and not kube.run_objects() else 1


if __name__ == "__main__":
    sys.exit(main())
