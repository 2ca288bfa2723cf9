"""Benchmark: the HTML report at mesh size — file size, render time in Python, and time
to first paint in headless Chromium, against an empty-matrix page measured in the same
run (the baseline: Chromium's own start-of-page cost on this machine).

    .venv/bin/python -m benchmarks.bench_html --targets 1000,5000 --repeat 5 [--append F]

Each page is loaded ``--repeat`` times in one headless Chromium (Debian's package, via
chromedriver; ``make browser``), each from about:blank, and the median is reported:
``first-contentful-paint`` (the static header, painted while a big data block still
parses), the page's ``mtlsprobe-rendered`` mark (the matrix is in the DOM) and
``mtlsprobe-painted`` (the task after the next animation frame: the matrix painted), in
ms from navigation start; the ratio is "painted" against the empty page's. Results per
target: 3 plain-probe checks + 2 sidecar checks (tests/htmlbrowser.py
``synthetic_results``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from probe.html_report import RunInfo, render_html
from tests.htmlbrowser import chromium, find_chromium, open_page, paint_timing, synthetic_results


def measure(drv: Any, page: Path, repeat: int) -> tuple[float, float, float]:
    fcp, rendered, painted = [], [], []
    for _ in range(repeat):
        open_page(drv, page)
        t = paint_timing(drv)
        fcp.append(t["first-contentful-paint"])
        rendered.append(t["rendered"])
        painted.append(t["painted"])
    return statistics.median(fcp), statistics.median(rendered), statistics.median(painted)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="1000,5000", help="comma-separated target counts")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--append", type=Path, help="append the results to this Markdown file")
    args = p.parse_args()
    if find_chromium() is None:
        sys.stderr.write("bench_html: needs chromium and chromedriver (make browser)\n")
        return 2
    sizes = [0, *(int(x) for x in args.targets.split(","))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-html-") as tmp, chromium() as drv:
        base: float | None = None
        for n in sizes:
            results = synthetic_results(n)
            t0 = time.perf_counter()
            text = render_html(results, RunInfo(command="check"))
            render_s = time.perf_counter() - t0
            page = Path(tmp) / f"r{n}.html"
            page.write_text(text, encoding="utf-8")
            raw = page.read_bytes()
            fcp, rendered, painted = measure(drv, page, args.repeat)
            if base is None:
                base = painted
            rows.append(
                f"| {n} | {len(results)} | {len(raw) / 1e6:.2f} MB | "
                f"{len(gzip.compress(raw)) / 1e6:.2f} MB | {render_s * 1000:.0f} ms | "
                f"{fcp:.0f} ms | {rendered:.0f} ms | {painted:.0f} ms | {painted / base:.1f}x |"
            )
            print(rows[-1], flush=True)
    version = drv_version()
    head = (
        f"Command: `.venv/bin/python -m benchmarks.bench_html --targets {args.targets} "
        f"--repeat {args.repeat}` ({platform.machine()}, {_cpus()} CPUs, Python "
        f"{platform.python_version()}, {version}, {dt.date.today().isoformat()})\n\n"
        "| targets | results | file | gzip | render (Python) | first contentful paint "
        "| matrix in DOM | matrix painted | painted vs empty page |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    out = head + "\n".join(rows) + "\n"
    print(out)
    if args.append:
        with args.append.open("a", encoding="utf-8") as f:
            f.write("\n" + out)
    return 0


def drv_version() -> str:
    import subprocess

    found = find_chromium()
    if found is None:
        return "chromium ?"
    proc = subprocess.run(
        [found[0], "--version"], check=False, capture_output=True, text=True, timeout=30
    )
    return " ".join(proc.stdout.split()[:2]) or "chromium ?"


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    raise SystemExit(main())
