"""``mtlsprobe plan`` at scale: 10,000 pods / 3,000 services (+ EndpointSlices) /
300 PeerAuthentications served by the fake API server (tests/fakekube.py).

The plan runs as a child process (``mtlsprobe plan -o yaml``), so its wall time and
peak RSS are the command's own, imports included; the fake server stays in this
process. Targets: < 3 s and < 300 MB. Also times discovery in-process with raw JSON
pages and with the generated client models, and prints the ratio.

    .venv/bin/python benchmarks/bench_plan.py [--pods 10000 --services 3000 --policies 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.discovery import Options, discover
from jobs.planner import build_plan
from probe.model import load_targets
from tests import kubebuild as kb
from tests.fakekube import FakeKube

NAMESPACES = 100


def populate(kube: FakeKube, pods: int, services: int, policies: int) -> None:
    kube.add(kb.namespace("istio-system"))
    kube.add(kb.peer_auth("default", "istio-system", "STRICT"))
    kube.add(kb.configmap("istio", "istio-system", {"mesh": "trustDomain: cluster.local\n"}))
    for n in range(NAMESPACES):
        kube.add(kb.namespace(f"ns-{n}", {"istio-injection": "enabled"}))
    members: dict[int, list[tuple[str, str]]] = {}
    for i in range(pods):
        s = i % services
        ns = f"ns-{s % NAMESPACES}"
        ip = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"
        name = f"svc-{s}-{i}"
        kube.add(
            kb.pod(
                name,
                ns,
                {"app": f"svc-{s}", "version": "v1"},
                ip=ip,
                sa=f"svc-{s}",
                ports=[("http", 8080), ("metrics", 9090)],
                sidecar=i % 10 != 0,
            )
        )
        members.setdefault(s, []).append((ip, name))
    for s in range(services):
        ns = f"ns-{s % NAMESPACES}"
        kube.add(
            kb.service(
                f"svc-{s}",
                ns,
                {"app": f"svc-{s}"},
                [kb.sport(80, "http"), kb.sport(9091, 9090, name="http-metrics")],
            )
        )
        kube.add(
            kb.endpoint_slice(
                f"svc-{s}-abcde",
                ns,
                f"svc-{s}",
                [(ip, name, True) for ip, name in members.get(s, [])],
                [("http", 8080), ("http-metrics", 9090)],
            )
        )
    for p in range(policies - 1):
        ns = f"ns-{p % NAMESPACES}"
        if p < NAMESPACES:
            kube.add(kb.peer_auth("default", ns, "STRICT" if p % 4 else "PERMISSIVE"))
        else:
            s = p * 7 % services
            kube.add(
                kb.peer_auth(
                    f"svc-{s}",
                    f"ns-{s % NAMESPACES}",
                    "STRICT",
                    selector={"app": f"svc-{s}"},
                    ports={9090: "PERMISSIVE"},
                )
            )


def run_cli(kubeconfig: Path, out: Path) -> tuple[float, float, int, float]:
    """(wall s, peak RSS MB, exit code, CPU s) of ``mtlsprobe plan`` in a child process."""
    start = time.perf_counter()
    with out.open("w") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobs.cli",
                "plan",
                "--kubeconfig",
                str(kubeconfig),
                "-o",
                "yaml",
            ],
            stdout=f,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 and proc.stderr is not None:
        sys.stderr.write(proc.stderr.read().decode())
    if proc.stderr is not None:
        proc.stderr.close()
    return wall, usage.ru_maxrss / 1024, proc.returncode, usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=10_000)
    ap.add_argument("--services", type=int, default=3_000)
    ap.add_argument("--policies", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    with FakeKube(encode_once=True) as kube, tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        populate(kube, args.pods, args.services, args.policies)
        print(
            f"fake API: {args.pods} pods, {args.services} services + EndpointSlices, "
            f"{args.policies} PeerAuthentications (loaded in {time.perf_counter() - t0:.1f} s)"
        )
        cfg = Path(tmp) / "kubeconfig"
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        out = Path(tmp) / "targets.yaml"
        runs = [run_cli(cfg, out) for _ in range(args.runs)]
        best = min(runs)
        tf = load_targets(out)
        endpoints = sum(len(t.endpoints) for t in tf.targets)
        print(
            f"mtlsprobe plan -o yaml (child process, {args.runs} runs): wall "
            f"{', '.join(f'{r[0]:.2f}' for r in runs)} s; CPU "
            f"{', '.join(f'{r[3]:.2f}' for r in runs)} s; peak RSS "
            f"{max(r[1] for r in runs):.0f} MB; exit {best[2]}; "
            f"{len(tf.targets)} targets, {endpoints} endpoints (file loads with load_targets)"
        )
        ok = best[0] < 3.0 and max(r[1] for r in runs) < 300
        load = os.getloadavg()[0]
        print(
            f"target < 3 s and < 300 MB: {'met' if ok else 'NOT met'} "
            f"(best wall {best[0]:.2f} s; load average {load:.1f} on {os.cpu_count()} CPUs)"
        )

        api = kube.api_client()
        timings: dict[bool, float] = {}
        for raw in (True, False):
            t0 = time.perf_counter()
            snap = discover(api, Options(raw=raw))
            timings[raw] = time.perf_counter() - t0
            t1 = time.perf_counter()
            plan = build_plan(snap)
            plan_s = time.perf_counter() - t1
            print(
                f"in-process discover ({'raw JSON' if raw else 'generated models'}): "
                f"{timings[raw]:.2f} s; build_plan {plan_s:.2f} s, {len(plan.edges)} edges"
            )
        print(f"generated models / raw JSON discovery time: {timings[False] / timings[True]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
