"""Bounded YAML loading (probe.yamlload): what the bounds cost on a large manifest and
how fast hostile input is refused.

- load time of an N-pod manifest (one Pod document each, ~660 bytes, the shape
  ``kubectl get pods -o yaml`` gives) through: the fast road (probe.yamlfast:
  rapidyaml -> JSON, checks included; the ratio to the bounded loader is printed),
  the bounded loader on libyaml's parser, the bounded loader on the pure-Python
  parser, and PyYAML's own unbounded ``CSafeLoader`` / ``SafeLoader`` for reference;
- time to refuse a billion-laughs file and a 10,000-deep nesting (both parsers).

Times are CPU seconds of this process (load-independent on a shared machine), best of
``--runs``.

    .venv/bin/python benchmarks/bench_yaml.py [--pods 10000] [--runs 3] [--skip-python]
"""

from __future__ import annotations

import argparse
import functools
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probe import yamlfast, yamlload
from probe.yamlload import Limits, YamlLoadError

LIMITS = Limits(max_bytes=512 << 20)


def manifest(pods: int) -> str:
    out = []
    for i in range(pods):
        ip = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"
        out.append(f"""---
apiVersion: v1
kind: Pod
metadata:
  name: svc-{i % 1000}-{i}
  namespace: ns-{i % 100}
  labels:
    app: svc-{i % 1000}
    version: v1
  annotations:
    sidecar.istio.io/status: '{{"containers":["istio-proxy"]}}'
  creationTimestamp: "2026-01-01T00:00:00Z"
spec:
  serviceAccountName: svc-{i % 1000}
  containers:
  - name: app
    image: example/app:1.0
    ports:
    - containerPort: 8080
      name: http
    - containerPort: 9090
      name: metrics
    resources:
      limits: {{cpu: 100m, memory: 128Mi}}
  - name: istio-proxy
    image: istio/proxyv2:1.24
status:
  phase: Running
  podIP: {ip}
  podIPs:
  - ip: {ip}
  conditions:
  - type: Ready
    status: "True"
""")
    return "".join(out)


def billion_laughs() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        prev, cur = string.ascii_lowercase[i - 1], string.ascii_lowercase[i]
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def cpu(fn: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def refuse(text: str, pure_python: bool) -> None:
    try:
        yamlload.load_all(text, LIMITS, pure_python=pure_python)
    except YamlLoadError:
        return
    raise AssertionError("not refused")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-python", action="store_true", help="skip the slow pure-Python rows")
    args = ap.parse_args()

    print(
        f"PyYAML {yaml.__version__}, libyaml: {yaml.__with_libyaml__}, "
        f"bounded loader parser: {yamlload.loader_name()}"
    )
    bomb, deep = billion_laughs(), "[" * 10_000 + "]" * 10_000
    for name, text in (("billion laughs", bomb), ("10,000-deep nesting", deep)):
        for pure in (False, True):
            t = cpu(functools.partial(refuse, text, pure), args.runs)
            print(f"refuse {name} ({'python' if pure else 'libyaml'}): {t * 1000:.1f} ms CPU")

    text = manifest(args.pods)
    print(f"manifest: {args.pods} pods, {len(text) / 1e6:.1f} MB")
    if yamlfast.load_all(text, LIMITS) is None:
        raise SystemExit("the fast road stepped aside on this manifest")
    rows: list[tuple[str, Callable[[], object], int]] = [
        ("fast road (rapidyaml -> JSON)", lambda: yamlfast.load_all(text, LIMITS), args.runs),
        ("bounded, libyaml parser", lambda: yamlload.load_all(text, LIMITS), args.runs),
        (
            "PyYAML CSafeLoader (unbounded)",
            lambda: list(yaml.load_all(text, yaml.CSafeLoader)),
            args.runs,
        ),
    ]
    if not args.skip_python:
        rows += [
            (
                "bounded, pure-Python parser",
                lambda: yamlload.load_all(text, LIMITS, pure_python=True),
                1,
            ),
            (
                "PyYAML SafeLoader (unbounded)",
                lambda: list(yaml.load_all(text, yaml.SafeLoader)),
                1,
            ),
        ]
    times = {}
    for name, fn, runs in rows:
        times[name] = cpu(fn, runs)
        print(f"load {name}: {times[name]:.2f} s CPU")
    fast, bounded = times["fast road (rapidyaml -> JSON)"], times["bounded, libyaml parser"]
    print(
        f"fast road / bounded libyaml: {fast / bounded:.2f}x the CPU ({bounded / fast:.1f}x sooner)"
    )


if __name__ == "__main__":
    main()
