"""The probe pod's own sidecar: wait until it is ready, stop it when done.

A Job whose pod has a classic Istio sidecar never completes unless the app asks
pilot-agent to exit (POST ``/quitquitquit`` on 15020), and probing before Envoy has
its configuration and certificate observes a half-started proxy, not the mesh. Native
sidecars (istio-proxy as a ``restartPolicy: Always`` init container) stop by
themselves, so quitting is opt-in: the Job template passes ``--quit-sidecar`` only
for classic sidecars. Plain HTTP on localhost; no Kubernetes here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

READY_URL = "http://localhost:15021/healthz/ready"
QUIT_URL = "http://localhost:15020/quitquitquit"
DEFAULT_WAIT = 60.0
NOT_READY = "sidecar never became ready"


@dataclass(frozen=True)
class SidecarOptions:
    """The probe pod's sidecar as the ``check`` flags describe it."""

    wait: float | None = None  # seconds to wait for readiness; None: do not wait
    ready_url: str = READY_URL
    quit: bool = False  # ask a classic sidecar to stop on exit
    quit_url: str = QUIT_URL


def _request(method: str, url: str, timeout: float) -> int:
    """One request; the HTTP status. Raises OSError / HTTPException on transport failure."""
    import http.client  # only with --wait-for-sidecar/--quit-sidecar: ~20 ms of start-up

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or "localhost", parts.port or 80, timeout=timeout
    )
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(method, path, headers={"Content-Length": "0"} if method == "POST" else {})
        resp = conn.getresponse()
        resp.read(4096)
        return resp.status
    finally:
        conn.close()


def _http_exception() -> type[Exception]:
    import http.client  # lazily, as in _request

    return http.client.HTTPException


def wait_ready(
    url: str, budget: float, interval: float = 0.25, stop: threading.Event | None = None
) -> str | None:
    """Poll ``url`` until it answers 200 or ``budget`` seconds pass. ``None`` when ready,
    else the reason with the last thing seen (so the error says why). ``stop`` (SIGTERM)
    ends the wait early: the run must stop within its bound, not after the budget."""
    deadline = time.monotonic() + budget
    last = "no answer"
    stop = stop or threading.Event()
    while True:
        left = deadline - time.monotonic()
        if stop.is_set():
            return f"stopped while waiting for the sidecar ({url}: {last})"
        if left <= 0:
            return f"{NOT_READY} within {budget:g}s ({url}: {last})"
        try:
            status = _request("GET", url, timeout=max(0.1, min(2.0, left)))
            if status == 200:
                return None
            last = f"HTTP {status}"
        except (OSError, _http_exception()) as exc:
            last = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
        stop.wait(max(0.0, min(interval, deadline - time.monotonic())))


def quit_sidecar(url: str, timeout: float = 3.0) -> str | None:
    """POST quitquitquit; ``None`` on success, else why not (reported on stderr only:
    the probe's verdicts do not depend on it, the Job's completion does)."""
    try:
        status = _request("POST", url, timeout=timeout)
    except (OSError, _http_exception()) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if 200 <= status < 300 else f"HTTP {status}"


@contextmanager
def quitting(opts: SidecarOptions) -> Iterator[None]:
    """Stop the sidecar when the block exits, however it exits (results, usage error,
    crash), when ``opts.quit`` (``--quit-sidecar``) is set."""
    try:
        yield
    finally:
        if opts.quit:
            import sys

            why = quit_sidecar(opts.quit_url)
            if why is not None:
                sys.stderr.write(
                    f"mtlsprobe: could not stop the sidecar ({opts.quit_url}): {why}\n"
                )
