"""``mtlsprobe plan`` at scale: 10,000 pods / 3,000 services (+ EndpointSlices) /
300 PeerAuthentications served by the fake API server (tests/fakekube.py), and the
same objects as YAML files for ``plan --from-manifests``.

The plan runs as a child process (``mtlsprobe plan -o yaml``), so its wall time and
peak RSS are the command's own, imports included; the fake server stays in this
process. Budgets: < 3 s and < 300 MB at 10,000 pods; <= 15 s and <= 1 GB at 50,000
(issue 17). ``--source manifests`` writes the fake server's objects (as ``kubectl get
-o yaml`` would: uid, resourceVersion) to one YAML file per namespace and runs
``plan --from-manifests``. With ``--models`` also times discovery in-process with raw
JSON pages and with the generated client models, and prints the ratio.

    .venv/bin/python benchmarks/bench_plan.py [--pods 10000 --services 3000 --policies 300]
    .venv/bin/python benchmarks/bench_plan.py --pods 50000 --services 5000 --source both \
        --max-wall 15 --max-rss 1000
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

from jobs.plan.discovery import Options, discover
from jobs.plan.planner import build_plan
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


# Until the bounded loader (probe/yamlload.py) reads manifests, the child reads them
# with PyYAML's C loader, so the number is the rest of the pipeline, not the pure-Python
# scanner.
_C_LOADER_CHILD = (
    "import sys, yaml\n"
    "from jobs.plan import manifests\n"
    "if 'yaml' in vars(manifests) and hasattr(yaml, 'CSafeLoader'):\n"
    "    yaml.safe_load_all = lambda s: yaml.load_all(s, Loader=yaml.CSafeLoader)\n"
    "from jobs.cli.main import main\n"
    "sys.exit(main())\n"
)


def write_manifests(kube: FakeKube, root: Path) -> tuple[int, int]:
    """The fake server's objects as YAML, one multi-document file per namespace (and
    one for cluster-scoped objects); (files, bytes)."""
    by_ns: dict[str, list[dict[str, object]]] = {}
    for buckets in kube.store.values():  # objects keep the apiVersion and kind they were added with
        for ns, objs in buckets.items():
            by_ns.setdefault(ns or "_cluster", []).extend(objs.values())
    root.mkdir(parents=True, exist_ok=True)
    size = 0
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    for ns, docs in by_ns.items():
        f = root / f"{ns}.yaml"
        f.write_text(yaml.dump_all(docs, Dumper=dumper, sort_keys=False))
        size += f.stat().st_size
    return len(by_ns), size


def run_cli(
    source: list[str], out: Path, *, c_loader: bool = False, tree: Path | None = None
) -> tuple[float, float, int, float]:
    """(wall s, peak RSS MB, exit code, CPU s) of ``mtlsprobe plan`` in a child process
    (CPU and peak RSS from ``wait4``: the child and any workers it waited for). With
    ``tree``, the child runs that checkout's code (``-m`` from its directory)."""
    start = time.perf_counter()
    head = ["-c", _C_LOADER_CHILD] if c_loader else ["-m", "jobs.cli.main"]
    with out.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, *head, "plan", *source, "-o", "yaml"],
            stdout=f,
            stderr=subprocess.PIPE,
            cwd=tree,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 and proc.stderr is not None:
        sys.stderr.write(proc.stderr.read().decode())
    if proc.stderr is not None:
        proc.stderr.close()
    return wall, usage.ru_maxrss / 1024, proc.returncode, usage.ru_utime + usage.ru_stime


def report(label: str, runs: list[tuple[float, float, int, float]], out: Path) -> bool:
    tf = load_targets(out)
    endpoints = sum(len(t.endpoints) for t in tf.targets)
    print(
        f"{label} ({len(runs)} runs): wall "
        f"{', '.join(f'{r[0]:.2f}' for r in runs)} s; CPU "
        f"{', '.join(f'{r[3]:.2f}' for r in runs)} s; peak RSS "
        f"{max(r[1] for r in runs):.0f} MB; exit {', '.join(str(r[2]) for r in runs)}; "
        f"{len(tf.targets)} targets, {endpoints} endpoints (file loads with load_targets)"
    )
    return all(r[2] in (0, 1) for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=10_000)
    ap.add_argument("--services", type=int, default=3_000)
    ap.add_argument("--policies", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--source", choices=("api", "manifests", "both"), default="api")
    ap.add_argument("--max-wall", type=float, default=3.0, help="budget, seconds (best run)")
    ap.add_argument("--max-rss", type=float, default=300.0, help="budget, MB (worst run)")
    ap.add_argument(
        "--baseline-tree",
        type=Path,
        help="also run this checkout's plan (e.g. `git archive main`), alternating runs, "
        "and print the CPU and wall ratios",
    )
    ap.add_argument(
        "--models", action="store_true", help="also time discovery with the generated models"
    )
    args = ap.parse_args()

    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    with FakeKube(encode_once=True) as kube, tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        populate(kube, args.pods, args.services, args.policies)
        print(
            f"fake API: {args.pods} pods, {args.services} services + EndpointSlices, "
            f"{args.policies} PeerAuthentications (loaded in {time.perf_counter() - t0:.1f} s)"
        )
        # The fake encodes each list once, on its first request: do that now, so no timed
        # run pays for the server's work (a real API server serves from its watch cache).
        for path in (
            "/api/v1/namespaces",
            "/api/v1/pods",
            "/api/v1/services",
            "/apis/discovery.k8s.io/v1/endpointslices",
            "/apis/security.istio.io/v1/peerauthentications",
            "/apis/networking.istio.io/v1/destinationrules",
        ):
            kube.handle("GET", f"{path}?limit=1", b"")
        out = Path(tmp) / "targets.yaml"
        sources: list[tuple[str, list[str], bool]] = []
        if args.source in ("api", "both"):
            cfg = Path(tmp) / "kubeconfig"
            cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
            sources.append(
                ("mtlsprobe plan --kubeconfig (live API)", ["--kubeconfig", str(cfg)], False)
            )
        if args.source in ("manifests", "both"):
            mdir = Path(tmp) / "manifests"
            files, size = write_manifests(kube, mdir)
            print(f"manifests: {files} files, {size / 1e6:.0f} MB of YAML")
            sources.append(
                ("mtlsprobe plan --from-manifests", ["--from-manifests", str(mdir)], True)
            )
        met = True
        for label, source, c_loader in sources:
            if args.baseline_tree is not None:
                runs, base = [], []
                for _ in range(args.runs):
                    base_out = out.with_suffix(".baseline.yaml")
                    base.append(run_cli(source, base_out, tree=args.baseline_tree.resolve()))
                    print(f"  (load average {os.getloadavg()[0]:.1f})")
                    runs.append(run_cli(source, out, c_loader=c_loader))
                    print(f"  (load average {os.getloadavg()[0]:.1f})")
                report(f"{label} [baseline {args.baseline_tree}]", base, base_out)
                ok = report(label, runs, out)
                same = base_out.read_bytes() == out.read_bytes()
                print(f"  output identical to the baseline's: {'yes' if same else 'NO'}")
                cpu = min(r[3] for r in runs) / min(r[3] for r in base)
                wall = min(r[0] for r in runs) / min(r[0] for r in base)
                print(f"  this tree / baseline, best of each: CPU {cpu:.2f}x, wall {wall:.2f}x")
            else:
                runs = [run_cli(source, out, c_loader=c_loader) for _ in range(args.runs)]
                ok = report(label, runs, out)
            best = min(r[0] for r in runs)
            rss = max(r[1] for r in runs)
            within = ok and best <= args.max_wall and rss <= args.max_rss
            met = met and within
            print(
                f"  budget <= {args.max_wall:g} s and <= {args.max_rss:g} MB: "
                f"{'met' if within else 'NOT met'} (best wall {best:.2f} s, peak RSS {rss:.0f} MB; "
                f"load average now {os.getloadavg()[0]:.1f})"
            )

        if args.models:
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
            print(
                f"generated models / raw JSON discovery time: {timings[False] / timings[True]:.1f}x"
            )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
