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
