"""Each round's targets from the live cluster: ``jobs.plan.discovery`` then ``jobs.plan.planner``.

The plan gives the targets; the agent adds what only it knows: its own SPIFFE ID
(for the mesh checks), its sidecar's admin address (the self check) and the mesh
root (the istio-ca-root-cert ConfigMap in istiod's namespace only - ``jobs.plan.meshroot`` -
or a mounted file) for chain checks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jobs.agent.sources import CallableSource, SourceError, TargetSource
from jobs.cli.flags import add_control_plane_flags, control_plane_problem
from probe.constants import ENVOY_ADMIN, PROBE_NAMESPACE, PROBE_SERVICE_ACCOUNT
from probe.model import Source, TargetsFile
from probe.spiffe import istio_identity


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--kubeconfig", metavar="FILE", help="default: in-cluster, else ~/.kube")
    group.add_argument("--context", metavar="NAME", help="kubeconfig context")
    group.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="probe only these namespaces (repeatable; default: every non-system namespace)",
    )
    group.add_argument(
        "--namespace-selector", metavar="LABELS", help="probe namespaces with these labels"
    )
    group.add_argument("--trust-domain", metavar="TD", help="override the mesh's trust domain")
    add_control_plane_flags(group)
    group.add_argument(
        "--root-cert",
        type=Path,
        metavar="FILE",
        help="mesh root PEM (e.g. the istio-ca-root-cert ConfigMap mounted); default: "
        "read that ConfigMap in --istio-namespace each round, into a temporary file",
    )
    group.add_argument(
        "--source-identity",
        metavar="SPIFFE_ID",
        help="this agent's sidecar SPIFFE ID (default: spiffe://<td>/ns/$POD_NAMESPACE/"
        "sa/$SERVICE_ACCOUNT, service account mtlsprobe)",
    )
    group.add_argument(
        "--sidecar-admin",
        default=ENVOY_ADMIN,
        metavar="URL",
        help=f"the sidecar's Envoy admin for the self check (default: {ENVOY_ADMIN})",
    )


@dataclass
class _RootFile:
    """The mesh root from the snapshot, in a file the checks can read; rewritten only
    when it changes (root rotation), so rounds do not churn the disk."""

    path: Path | None = None
    digest: str | None = None

    def update(self, pem: str | None) -> Path | None:
        if not pem:
            return None
        digest = hashlib.sha256(pem.encode()).hexdigest()
        if digest != self.digest or self.path is None:
            fd, name = tempfile.mkstemp(prefix="mtlsprobe-root-", suffix=".pem")
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(pem)
            if self.path is not None:
                self.path.unlink(missing_ok=True)
            self.path, self.digest = Path(name), digest
        return self.path


def discovery_source(args: argparse.Namespace) -> TargetSource:
    from jobs.plan.discovery import DiscoveryError, Options, api_client
    from probe.cli import UsageError

    problem = control_plane_problem(args)
    if problem:
        raise UsageError(problem)
    try:
        api = api_client(args.kubeconfig, args.context, timeout=min(10.0, args.interval))
    except DiscoveryError as exc:
        raise UsageError(str(exc)) from None
    options = Options(
        namespaces=tuple(args.namespace),
        namespace_selector=args.namespace_selector,
        trust_domain=args.trust_domain,
        istio_namespace=args.istio_namespace,
        revision=args.revision,
        timeout=min(10.0, args.interval),
    )
    return CallableSource(
        f"the Kubernetes API at {api.configuration.host}",
        _Planner(api, options, args.kind, args.root_cert, args.source_identity, args.sidecar_admin),
    )


@dataclass
class _Planner:
    api: Any
    options: Any  # jobs.plan.discovery.Options
    kind: str
    root_cert: Path | None
    source_identity: str | None
    sidecar_admin: str

    def __post_init__(self) -> None:
        self._root = _RootFile()

    def __call__(self) -> TargetsFile:
        from jobs.plan.discovery import DiscoveryError, discover
        from jobs.plan.planner import build_plan

        try:
            snapshot = discover(self.api, self.options)
        except DiscoveryError as exc:
            raise SourceError(str(exc)) from None
        tf = build_plan(snapshot).targets_file
        root = self.root_cert or self._root.update(snapshot.root_cert_pem)
        identity = self.source_identity or own_spiffe_id(tf.trust_domain)
        source = Source(
            identity=identity,
            sidecar_admin=self.sidecar_admin if self.kind == "sidecar" else None,
        )
        return replace(tf, source=source, root_cert_file=root)


def own_spiffe_id(trust_domain: str) -> str:
    """What istiod issues to this pod: its namespace and service account (downward API)."""
    ns = os.environ.get("POD_NAMESPACE", PROBE_NAMESPACE)
    sa = os.environ.get("SERVICE_ACCOUNT", PROBE_SERVICE_ACCOUNT)
    return istio_identity(trust_domain, ns, sa)
