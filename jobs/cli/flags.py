"""Command-line flags of the control plane that ``plan``, ``run`` and ``agent`` share,
defined once so the commands cannot drift apart in name, default or meaning:

- cluster access: ``--kubeconfig``, ``--context``, ``--in-cluster``, ``--request-timeout``
  (the Kubernetes API's timeout; ``--timeout`` is always the probes' network timeout);
- namespace scope: ``-n/--namespace``, ``-A/--all-namespaces``, ``--namespace-selector``,
  ``--include-system``;
- the mesh: ``--istio-namespace``, ``--revision``, ``--trust-domain``, ``--root-namespace``;
- ``--require`` and ``--probe-namespace`` (where the probes run: the client namespace of
  DestinationRule lookup).

The data plane's groups (``--timeout``, ``--concurrency``, ``-o/--out``) and the argument
types are in ``probe/cliargs.py``. Validation is a separate call (``cluster_access``,
``discovery_options``) rather than an argparse ``type=``: the CLI's usage errors are one
line (exit 64), and argparse would print the usage block before it.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.plan.objects import DEFAULT_ISTIO_NAMESPACE
from probe.cliargs import Group, UsageError, positive_seconds, words

if TYPE_CHECKING:
    from jobs.plan.discovery import Options

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_PROBE_NAMESPACE = "mtlsprobe"
PROBE_NAMESPACE_ENV = "MTLSPROBE_NAMESPACE"

# ---- cluster access ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterAccess:
    """How to reach the Kubernetes API; ``kubeconfig``/``context`` None with
    ``in_cluster`` (or in a pod) means the pod's service account."""

    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT


def add_cluster_flags(group: Group) -> None:
    group.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig (default: the pod's service account in a pod, else $KUBECONFIG "
        "or ~/.kube/config)",
    )
    group.add_argument("--context", metavar="NAME", help="kubeconfig context")
    group.add_argument(
        "--in-cluster",
        action="store_true",
        help="insist on the pod's service account: fail unless running in a pod "
        "(the CronJob passes it)",
    )
    group.add_argument(
        "--request-timeout",
        type=positive_seconds,
        default=DEFAULT_REQUEST_TIMEOUT,
        metavar="SECONDS",
        help=f"client-side timeout of every Kubernetes API request "
        f"(default: {DEFAULT_REQUEST_TIMEOUT:g})",
    )


def cluster_access(args: argparse.Namespace) -> ClusterAccess:
    """The flags above, checked; a UsageError (exit 64) for a contradiction."""
    if args.in_cluster:
        if args.kubeconfig or args.context:
            raise UsageError(
                "--in-cluster uses the pod's service account: drop --kubeconfig/--context"
            )
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise UsageError(
                "--in-cluster: not running in a pod (KUBERNETES_SERVICE_HOST is unset)"
            )
    return ClusterAccess(args.kubeconfig, args.context, args.in_cluster, args.request_timeout)


# ---- namespace scope and the mesh ----------------------------------------------------------------


def add_scope_flags(group: Group) -> None:
    group.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS[,NS]",
        help="only targets in these namespaces (repeatable)",
    )
    group.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="every namespace except system ones (the default)",
    )
    group.add_argument(
        "--namespace-selector",
        metavar="LABELS",
        help="namespaces matching this label selector (e.g. istio-injection=enabled)",
    )
    group.add_argument(
        "--include-system",
        action="store_true",
        help="targets in kube-system, kube-public, kube-node-lease and istio-system too",
    )


def add_mesh_flags(group: Group) -> None:
    """Which istiod the plan believes: the mesh config (ConfigMap ``istio`` /
    ``istio-<rev>``) and the mesh root (``istio-ca-root-cert``) are read only from
    ``--istio-namespace``; ``--trust-domain``/``--root-namespace`` override the config."""
    group.add_argument(
        "--istio-namespace",
        default=DEFAULT_ISTIO_NAMESPACE,
        metavar="NS",
        help="istiod's namespace: its mesh ConfigMap and the mesh root are read only "
        f"there (default: {DEFAULT_ISTIO_NAMESPACE})",
    )
    group.add_argument(
        "--revision",
        metavar="REV",
        help="istiod revision whose mesh config to read (ConfigMap istio-REV)",
    )
    group.add_argument("--trust-domain", metavar="TD", help="override the mesh's trust domain")
    group.add_argument(
        "--root-namespace",
        metavar="NS",
        help="override the mesh root namespace (default: from the mesh config)",
    )


def namespaces(args: argparse.Namespace) -> tuple[str, ...]:
    """``-n a,b -n c`` as one list; a UsageError when combined with a wider scope."""
    chosen = words(args.namespace)
    if chosen and (args.all_namespaces or args.namespace_selector):
        raise UsageError("-n cannot be combined with --all-namespaces or --namespace-selector")
    return chosen


def mesh_problem(args: argparse.Namespace) -> str | None:
    """The one-line usage error for the mesh flags, or None when they are usable."""
    for flag, value in (("--istio-namespace", args.istio_namespace), ("--revision", args.revision)):
        if value is not None and not _NAME.fullmatch(value):
            return f"{flag} {value!r}: not a Kubernetes name (lowercase, digits, '-')"
    if args.trust_domain is not None:
        from jobs.plan.objects import ClusterSnapshot
        from jobs.plan.planner import mesh_names_problem

        if not args.trust_domain or mesh_names_problem(
            ClusterSnapshot(trust_domain=args.trust_domain)
        ):
            return (
                f"--trust-domain {args.trust_domain!r}: lowercase letters, digits, '.', '-' "
                "and '_' only (no port or path)"
            )
    return None


def discovery_options(args: argparse.Namespace, *, timeout: float | None = None) -> Options:
    """What discovery reads, from the scope and mesh flags (checked: UsageError)."""
    from jobs.plan.discovery import Options

    problem = mesh_problem(args)
    if problem:
        raise UsageError(problem)
    return Options(
        namespaces=namespaces(args),
        namespace_selector=args.namespace_selector,
        include_system=args.include_system,
        trust_domain=args.trust_domain,
        root_namespace=args.root_namespace,
        istio_namespace=args.istio_namespace,
        revision=args.revision,
        timeout=args.request_timeout if timeout is None else timeout,
    )


# ---- what is judged, and from where ----------------------------------------------------------


def add_require_flag(group: Group, *, note: str = "") -> None:
    group.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="strict,sidecar",
        help="compliance to judge: strict (every port STRICT), sidecar (every workload "
        f"injected){note}; failures exit 1 (repeatable)",
    )


def add_probe_namespace_flag(group: Group) -> None:
    group.add_argument(
        "--probe-namespace",
        default=os.environ.get(PROBE_NAMESPACE_ENV, DEFAULT_PROBE_NAMESPACE),
        metavar="NS",
        help="where the probes run: the probe Jobs' namespace and the client namespace of "
        f"DestinationRule lookup (default: ${PROBE_NAMESPACE_ENV} or {DEFAULT_PROBE_NAMESPACE})",
    )


def add_policy_report_flags(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, *, openreports: bool = False
) -> None:
    """``--policy-reports`` (and, for the agent, where probe.evidence does not add them,
    ``--openreports`` and ``--compliance``)."""
    p.add_argument(
        "--policy-reports",
        action="store_true",
        help="write the verdicts to the cluster as wgpolicyk8s.io/v1alpha2 PolicyReports "
        "(openreports.io/v1alpha1 Reports with --openreports), one per target namespace; "
        "needs the policy-reports RBAC component",
    )
    if openreports:
        p.add_argument(
            "--openreports",
            action="store_true",
            help="--policy-reports: openreports.io/v1alpha1 Report objects",
        )
        p.add_argument(
            "--compliance",
            type=Path,
            metavar="FILE",
            help="--policy-reports: YAML mapping checks to control IDs, shown in each result",
        )
