"""Each round's targets from the live cluster: ``jobs.plan.discovery`` then ``jobs.plan.planner``.

The plan gives the targets; the agent adds what only it knows: its own SPIFFE ID
(for the mesh checks), its sidecar's admin address (the self check) and the mesh
root (the istio-ca-root-cert ConfigMap in istiod's namespace only - ``jobs.plan.meshroot`` -
or a mounted file) for chain checks.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.agent.sources import CallableSource, SourceError, TargetSource
from probe.cliargs import UsageError
from probe.constants import ENVOY_ADMIN, PROBE_NAMESPACE, PROBE_SERVICE_ACCOUNT
from probe.model import Source, TargetsFile
from probe.spiffe import istio_identity

if TYPE_CHECKING:
    from jobs.plan.discovery import Options

DEFAULT_SIDECAR_ADMIN = ENVOY_ADMIN


@dataclass(frozen=True)
class DiscoveryConfig:
    """Where each round's targets come from when the agent discovers them."""

    options: Options  # what discovery reads; its timeout bounds every API request
    kind: str  # the agent's kind: only a sidecar agent has a sidecar admin to check
    kubeconfig: str | None = None  # None: in-cluster, else $KUBECONFIG / ~/.kube/config
    context: str | None = None
    root_cert: Path | None = None  # a mounted mesh root instead of reading it each round
    source_identity: str | None = None  # default: from $POD_NAMESPACE / $SERVICE_ACCOUNT
    sidecar_admin: str = DEFAULT_SIDECAR_ADMIN


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


def discovery_source(config: DiscoveryConfig) -> TargetSource:
    from jobs.plan.discovery import DiscoveryError, api_client

    try:
        api = api_client(config.kubeconfig, config.context, timeout=config.options.timeout)
    except DiscoveryError as exc:
        raise UsageError(str(exc)) from None
    return CallableSource(
        f"the Kubernetes API at {api.configuration.host}",
        _Planner(api, config),
    )


@dataclass
class _Planner:
    api: Any
    config: DiscoveryConfig

    def __post_init__(self) -> None:
        self._root = _RootFile()

    def __call__(self) -> TargetsFile:
        from jobs.plan.discovery import DiscoveryError, discover
        from jobs.plan.planner import build_plan

        try:
            snapshot = discover(self.api, self.config.options)
        except DiscoveryError as exc:
            raise SourceError(str(exc)) from None
        tf = build_plan(snapshot).targets_file
        config = self.config
        root = config.root_cert or self._root.update(snapshot.root_cert_pem)
        identity = config.source_identity or own_spiffe_id(tf.trust_domain)
        source = Source(
            identity=identity,
            sidecar_admin=config.sidecar_admin if config.kind == "sidecar" else None,
        )
        return replace(tf, source=source, root_cert_file=root)


def own_spiffe_id(trust_domain: str) -> str:
    """What istiod issues to this pod: its namespace and service account (downward API)."""
    ns = os.environ.get("POD_NAMESPACE", PROBE_NAMESPACE)
    sa = os.environ.get("SERVICE_ACCOUNT", PROBE_SERVICE_ACCOUNT)
    return istio_identity(trust_domain, ns, sa)
