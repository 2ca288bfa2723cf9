"""The cluster edge of ``mtlsprobe run``: the API calls that create, watch, read and delete
the probe Jobs, their pods, logs and ConfigMaps. ``RUN_API_CALLS`` lists them (the RBAC the
orchestrator needs besides discovery's read-only calls); tests compare it with what the fake
API server recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.kube.client import Client
from jobs.kube.errors import Expired

NS = "<probe namespace>"  # each namespace in --probe-namespace / --source-namespaces

# (verb, API group, resource, scope): what `run` does beyond discovery.
RUN_API_CALLS: frozenset[tuple[str, str, str, str]] = frozenset(
    {
        ("create", "", "configmaps", NS),
        ("delete", "", "configmaps", NS),
        ("create", "batch", "jobs", NS),
        ("list", "batch", "jobs", NS),
        ("delete", "batch", "jobs", NS),
        ("list", "", "pods", NS),
        ("watch", "", "pods", NS),
        ("get", "", "pods/log", NS),
    }
)

# The node capture agent of ``wire`` (k8s/overlays/wire, opt-in): read only, in its own
# namespace; the overlay itself grants these to the orchestrator (no overlay: 403 or 404,
# and ``run`` reports ``wire: skip``).
WIRE_NS = "mtlsprobe-wire"
WIRE_DAEMONSET = "mtlsprobe-wire"
WIRE_CONTAINER = "capture"
WIRE_API_CALLS: frozenset[tuple[str, str, str, str]] = frozenset(
    {
        ("get", "apps", "daemonsets", WIRE_NS),
        ("list", "", "pods", WIRE_NS),
        ("get", "", "pods/log", WIRE_NS),
    }
)


# ---- the cluster edge ---------------------------------------------------------------------------


@dataclass
class Cluster:
    """Every API call of the run (discovery has its own), named for the one-line errors
    (``jobs.kube.errors``: verb, resource, namespace) and made by the ``jobs.kube`` client:
    raw JSON by resource path, a client-side timeout on each."""

    client: Client

    @property
    def api(self) -> Any:
        return self.client.api

    def create_configmap(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/api/v1/namespaces/{ns}/configmaps"
        return self.client.create(f"create configmaps in {ns}", path, body)

    def create_job(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/apis/batch/v1/namespaces/{ns}/jobs"
        return self.client.create(f"create jobs.batch in {ns}", path, body)

    def jobs(self, ns: str, selector: str) -> list[dict[str, Any]]:
        path = f"/apis/batch/v1/namespaces/{ns}/jobs"
        return list(
            self.client.pages(f"list jobs.batch in {ns}", path, [("labelSelector", selector)])
        )

    def pods(self, ns: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        """The run's pods in ``ns`` and the list's resourceVersion (to watch from)."""
        path = f"/api/v1/namespaces/{ns}/pods"
        items, version = self.client.list_with_version(
            f"list pods in {ns}", path, [("labelSelector", selector)]
        )
        return [i for i in items if isinstance(i, dict)], version

    def wait_for_change(self, ns: str, selector: str, rv: str, seconds: int) -> bool:
        """Watch the run's pods from ``rv`` until the first event or ``seconds``. True when
        something changed (or ``rv`` is too old to watch from: list again)."""
        path = f"/api/v1/namespaces/{ns}/pods"
        events = self.client.watch(
            f"watch pods in {ns}", path, [("labelSelector", selector)], rv, seconds
        )
        try:
            return next(events, None) is not None
        except Expired:
            return True
        finally:
            events.close()

    def log(self, ns: str, pod: str, container: str) -> str:
        path = f"/api/v1/namespaces/{ns}/pods/{pod}/log"
        return self.client.text(f"get pods/log {pod} in {ns}", path, [("container", container)])

    def daemonset(self, ns: str, name: str) -> dict[str, Any]:
        path = f"/apis/apps/v1/namespaces/{ns}/daemonsets/{name}"
        return self.client.get(f"get daemonsets.apps {name} in {ns}", path)

    def recent_log(
        self, ns: str, pod: str, container: str, since_seconds: int, limit_bytes: int
    ) -> str:
        """The tail of a long-running pod's log: lines written in the last
        ``since_seconds``, at most ``limit_bytes`` (the kubelet cuts the rest)."""
        path = f"/api/v1/namespaces/{ns}/pods/{pod}/log"
        query = [
            ("container", container),
            ("sinceSeconds", str(max(1, since_seconds))),
            ("limitBytes", str(limit_bytes)),
        ]
        return self.client.text(f"get pods/log {pod} in {ns}", path, query)

    def delete(self, ns: str, plural: str, name: str) -> None:
        """Delete with background propagation: the garbage collector removes what the
        object owns (a Job's pods; batch/v1 would orphan them by default). ``NotFound``
        when it is gone already."""
        group = "/apis/batch/v1" if plural == "jobs" else "/api/v1"
        path = f"{group}/namespaces/{ns}/{plural}/{name}"
        what = f"delete {plural}{'.batch' if plural == 'jobs' else ''} {name} in {ns}"
        self.client.delete(what, path, [("propagationPolicy", "Background")])
