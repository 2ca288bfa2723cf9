"""The node capture agent of k8s/overlays/wire as the fake API server holds it, for the
``run --checks wire`` tests: its DaemonSet and one agent pod per node, owned by it."""

from __future__ import annotations

from typing import Any

from jobs.launch.cluster import WIRE_DAEMONSET, WIRE_NS
from tests import kubebuild as kb
from tests.fakekube import FakeKube, Resource

DAEMONSET = Resource("apps", ("v1",), "daemonsets", "DaemonSet")
LABELS = {"app.kubernetes.io/name": "mtlsprobe", "app.kubernetes.io/component": "wire-capture"}


def install_daemonset(kube: FakeKube, ready: int = 1) -> str:
    """The DaemonSet with ``ready`` pods Ready (its status); returns its uid."""
    if ("apps", "daemonsets") not in kube.resources:
        kube.serve(DAEMONSET)
    ds = kube.add(
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": WIRE_DAEMONSET, "namespace": WIRE_NS},
            "spec": {"selector": {"matchLabels": LABELS}},
            "status": {"desiredNumberScheduled": max(1, ready), "numberReady": ready},
        }
    )
    return str(ds["metadata"]["uid"])


def agent_pod(name: str, node: str, owner_uid: str, ready: bool = True) -> dict[str, Any]:
    pod = kb.pod(name, WIRE_NS, LABELS, ip="192.168.0.2", sidecar=False, ready=ready)
    pod["spec"]["nodeName"] = node
    pod["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "name": WIRE_DAEMONSET,
            "uid": owner_uid,
            "controller": True,
        }
    ]
    return pod
