"""Where each round's targets and the set of peer agents come from.

Everything here is I/O at the edge; a failure raises ``SourceError`` with one line
that becomes the round's ``error`` result, never an exception out of the agent.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from probe.model import TargetsFile, TargetsFileError, load_targets

# Connect and read timeouts for every Kubernetes API call (seconds): a dead API
# server costs a round a few seconds, not the interval.
API_TIMEOUT = (3.0, 10.0)


class SourceError(Exception):
    """The targets or the peers could not be read this round (the message is the reason)."""


class TargetSource(Protocol):
    """Produces the full (unsharded) targets of one round."""

    def describe(self) -> str: ...

    def load(self) -> TargetsFile: ...


class PeerSource(Protocol):
    """Names the agents of this agent's kind that share the work."""

    def describe(self) -> str: ...

    def agents(self) -> list[str]: ...


@dataclass(frozen=True)
class FileSource:
    """A targets file, re-read every round so an edit (the lab) shows up next round.

    Parsed again only when the file changed: at 10,000 endpoints parsing is most of a
    round's CPU outside the checks. "Changed" is any difference in the stat of the path
    as opened (device, inode, size, mtime, ctime, in ns): an edit in place or a
    ConfigMap's symlink swap both show there; a file that cannot be read is an error
    every round, never a cached success."""

    path: Path
    _cache: dict[str, tuple[tuple[int, ...], TargetsFile]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def describe(self) -> str:
        return f"targets file {self.path}"

    def load(self) -> TargetsFile:
        try:
            st = os.stat(self.path)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except OSError:
            key = None  # load_targets names the problem
        cached = self._cache.get("last")
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        try:
            targets = load_targets(self.path)
        except TargetsFileError as exc:
            self._cache.clear()
            raise SourceError(str(exc)) from None
        if key is not None:
            self._cache["last"] = (key, targets)
        return targets


@dataclass(frozen=True)
class CallableSource:
    """Targets from a function (discovery + plan); any exception is a failed round."""

    name: str
    build: Callable[[], TargetsFile]

    def describe(self) -> str:
        return self.name

    def load(self) -> TargetsFile:
        try:
            return self.build()
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"{self.name}: {_one_line(exc)}") from None


@dataclass(frozen=True)
class StaticPeers:
    names: tuple[str, ...]

    def describe(self) -> str:
        return f"static peers {','.join(self.names)}"

    def agents(self) -> list[str]:
        return list(self.names)


class KubePeers:
    """Ready pods of the agent DaemonSet (a label selector in the agent's namespace).

    Lists pods as raw JSON pages (``jobs.kube``): a DaemonSet on a large cluster has
    thousands of pods and this runs every round.
    """

    def __init__(self, api_client: Any, namespace: str, selector: str) -> None:
        from jobs.kube.client import Client

        connect, read = API_TIMEOUT
        self._client = Client(api_client, timeout=read, connect_timeout=connect)
        self.namespace = namespace
        self.selector = selector

    def describe(self) -> str:
        return f"pods {self.selector!r} in namespace {self.namespace}"

    def agents(self) -> list[str]:
        from jobs.kube.errors import KubeError

        path = f"/api/v1/namespaces/{self.namespace}/pods"
        query = [("labelSelector", self.selector)]
        names: list[str] = []
        try:
            for pod in self._client.pages(f"list pods in {self.namespace}", path, query):
                md = pod.get("metadata") if isinstance(pod, dict) else None
                name = md.get("name") if isinstance(md, dict) else None
                if not isinstance(name, str):  # a peer we cannot name would skew the shards
                    raise SourceError(f"listing agent pods ({self.describe()}): a pod has no name")
                if _pod_ready(pod):
                    names.append(name)
        except KubeError as exc:
            raise SourceError(f"listing agent pods ({self.describe()}): {exc}") from None
        return names


def _pod_ready(pod: dict[str, Any]) -> bool:
    from jobs.plan.objects import pod_ready

    return not (pod.get("metadata") or {}).get("deletionTimestamp") and pod_ready(pod)


def own_identity(explicit: str | None) -> str:
    """This agent's name among its peers: the pod name (downward API) in a cluster."""
    return explicit or os.environ.get("POD_NAME") or socket.gethostname()


def _one_line(exc: BaseException) -> str:
    """API errors carry whole HTTP responses; keep the status and the first line."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status is not None and reason is not None:
        return f"HTTP {status} {reason}"
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]
