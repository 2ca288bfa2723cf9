"""Headless Chromium for the HTML report's tests and benchmark: Debian's ``chromium``
and ``chromium-driver`` packages (``make browser`` installs them as root), driven by
Selenium through the matching chromedriver, so no browser is ever downloaded.

Without them the tests skip with a reason that says so and a warning in the summary:
a machine without a browser must never look like one where the page was checked.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from probe.results import Result, Verdict

#: The page's verdict colours (``--pass`` … in html_report.html), as computed RGB.
VERDICT_RGB: dict[str, tuple[int, int, int]] = {
    "pass": (0x1A, 0x7F, 0x37),
    "fail": (0xCF, 0x22, 0x2E),
    "error": (0xBF, 0x87, 0x00),
    "skip": (0x8C, 0x95, 0x9F),
}
CHROMIUM_NAMES = ("chromium", "chromium-browser")
MISSING = (
    "headless Chromium not found (need Debian's chromium and chromium-driver: `make browser` "
    "installs them as root): the HTML report was NOT checked in a browser"
)


def find_chromium() -> tuple[str, str] | None:
    """(browser, chromedriver) paths, or None."""
    browser = next((p for n in CHROMIUM_NAMES if (p := shutil.which(n))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def skip_without_chromium() -> tuple[str, str]:
    found = find_chromium()
    if found is None:
        warnings.warn(MISSING, UserWarning, stacklevel=2)
        pytest.skip(MISSING)
    return found


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium session (selenium WebDriver); always quit."""
    browser, driver_path = skip_without_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI and containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(driver_path))
    try:
        drv.set_page_load_timeout(60)
        drv.set_script_timeout(60)
        yield drv
    finally:
        drv.quit()


def open_page(drv: Any, path: Path | str, fragment: str = "") -> None:
    url = path if isinstance(path, str) else path.resolve().as_uri()
    drv.get("about:blank")  # a new document, even when only the fragment differs
    drv.get(url + fragment)
    wait_rendered(drv)


def wait_rendered(drv: Any, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if drv.execute_script("return document.body && document.body.dataset.rendered") == "1":
            return
        time.sleep(0.05)
    raise AssertionError("the report page never finished rendering")


def paint_timing(drv: Any, timeout: float = 60.0) -> dict[str, float]:
    """Milliseconds from navigation start: ``first-contentful-paint`` (the static header,
    painted while a big data block still parses), the page's ``rendered`` mark (the
    matrix is in the DOM) and ``painted`` (the frame after it was painted)."""
    end = time.monotonic() + timeout
    done = (
        "return document.body.dataset.painted === '1' &&"
        " performance.getEntriesByName('first-contentful-paint').length > 0"
    )
    while not drv.execute_script(done):
        if time.monotonic() > end:
            raise AssertionError("the matrix was never painted")
        time.sleep(0.02)
    got: dict[str, float] = drv.execute_script(
        "var o = {};"
        "performance.getEntriesByType('paint').forEach(function (e) { o[e.name] = e.startTime; });"
        "['rendered', 'painted'].forEach(function (n) {"
        "  performance.getEntriesByName('mtlsprobe-' + n).forEach(function (e) {"
        "    o[n] = e.startTime; }); });"
        "return o;"
    )
    return got


def png_colours(png: bytes) -> set[tuple[int, int, int]]:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        rgb = img.convert("RGB")
        return {
            (c[0], c[1], c[2])
            for _, c in rgb.getcolors(maxcolors=1 << 24) or []
            if isinstance(c, tuple)
        }


def synthetic_results(
    targets: int,
    *,
    namespaces: int = 50,
    verdicts: Sequence[Verdict] = (Verdict.PASS, Verdict.PASS, Verdict.PASS, Verdict.FAIL),
) -> list[Result]:
    """A mesh-sized report: per target the three plain-probe checks (one endpoint) and
    two sidecar checks, with evidence of the size real checks carry."""
    out: list[Result] = []
    for i in range(targets):
        ns = f"ns-{i % namespaces:03d}"
        name = f"{ns}/svc-{i:05d}:8080"
        ep = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:8080"
        spiffe = f"spiffe://cluster.local/ns/{ns}/sa/svc-{i:05d}"
        v = verdicts[i % len(verdicts)]
        fp = f"{i:064x}"
        out += [
            Result("plaintext", name, v, "connection reset after request, no HTTP response",
                   endpoint=ep, expected="refused", observed="refused",
                   evidence={"ending": "reset"}),
            Result("peer-cert", name, Verdict.PASS, "valid X.509-SVID of the service account",
                   endpoint=ep, expected=spiffe, observed=spiffe,
                   evidence={"uriSans": [spiffe], "sha256": fp,
                             "notAfter": "2026-12-01T00:00:00Z"}),
            Result("foreign-client", name, Verdict.PASS, "client certificate from a foreign CA "
                   "rejected after the server asked for one", endpoint=ep,
                   expected="rejected", observed="rejected",
                   evidence={"alert": "certificate_unknown"}),
            Result("mesh", name, Verdict.PASS, "mTLS proven by the last XFCC element",
                   expected="mtls", observed="mtls",
                   evidence={"xfcc": f"By={spiffe};Hash={fp};URI=spiffe://cluster.local/ns/"
                                     "mtlsprobe/sa/mtlsprobe", "status": 200}),
            Result("xfcc-spoof", name, Verdict.SKIP, "target does not reflect headers"),
        ]  # fmt: skip
    return out
