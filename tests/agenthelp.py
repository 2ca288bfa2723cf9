"""Helpers for agent tests: flags through the real parser, an in-process agent that is
always stopped, plain HTTP reads of its port, and targets files."""

from __future__ import annotations

import argparse
import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from jobs.agent.main import Assembled, assemble
from jobs.cli.agent import options
from jobs.cli.main import build_parser
from probe.model import Endpoint
from probe.pki import Issued
from tests.tlsservers import MeshPKI, plaintext_http, serving, tls_handler

ECHO_ID = "spiffe://cluster.local/ns/ns-a/sa/echo"


def agent_args(*argv: str) -> argparse.Namespace:
    full = ["agent", *argv]
    return build_parser(full).parse_args(full)


@contextlib.contextmanager
def running_agent(*argv: str, start_rounds: bool = True) -> Iterator[Assembled]:
    built = assemble(options(agent_args("--listen", "127.0.0.1:0", *argv)))
    try:
        built.server.start()
        if start_rounds:
            built.agent.start()
        yield built
    finally:
        built.agent.stop(5.0)
        built.server.close()


def plain_flags(targets: Path, interval: str, *more: str) -> tuple[str, ...]:
    """An agent of kind ``plain`` on ``targets`` every ``interval`` seconds, no jitter."""
    return (
        "--kind",
        "plain",
        "--targets",
        str(targets),
        "--interval",
        interval,
        "--jitter",
        "0",
        *more,
    )


def scrape_two_rounds(tmp: Path, pki: MeshPKI, issued: Issued) -> tuple[int, str]:
    """(status, body) of /metrics after two rounds of a real agent against a STRICT TLS
    echo serving ``issued`` as ``ECHO_ID`` and a plaintext liar that claims STRICT."""
    with serving(tls_handler(pki, issued)) as strict, serving(plaintext_http) as leaky:
        f = write_targets(
            tmp / "t.yaml",
            [
                target("ns-a/echo", [strict.endpoint], "STRICT", ECHO_ID),
                target("ns-b/leaky", [leaky.endpoint], "STRICT"),
            ],
            root=pki.root_file,
        )
        with running_agent(*plain_flags(f, "0.2", "--timeout", "1")) as built:
            wait_for(lambda: built.agent.state.rounds[0] >= 2, timeout=30, what="2 rounds")
            return get(built, "/metrics")


def get(built: Assembled, path: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{built.server.port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def wait_for(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def write_targets(
    path: Path,
    targets: Sequence[dict[str, Any]],
    *,
    root: Path | None = None,
    identity: str | None = None,
) -> Path:
    doc: dict[str, Any] = {"trustDomain": "cluster.local", "targets": list(targets)}
    if root is not None:
        doc["rootCertFile"] = str(root)
    if identity is not None:
        doc["source"] = {"identity": identity}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def target(
    name: str, endpoints: Sequence[Endpoint], expect: str, identity: str | None = None
) -> dict[str, Any]:
    ns, _, svc = name.partition("/")
    out: dict[str, Any] = {
        "name": name,
        "host": f"{svc}.{ns}.svc.cluster.local",
        "port": 8080,
        "endpoints": [str(e) for e in endpoints],
        "expect": expect,
    }
    if identity:
        out["identity"] = identity
    return out
