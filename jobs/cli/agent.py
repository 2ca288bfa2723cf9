"""``mtlsprobe agent``: the flags of continuous probing, turned into ``AgentOptions``
for the agent runtime (``jobs/agent/main.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.agent.discovery import DEFAULT_SIDECAR_ADMIN, DiscoveryConfig
from jobs.agent.main import DEFAULT_LISTEN, PEER_SELECTOR, AgentOptions
from jobs.cli import flags
from probe.cliargs import (
    UsageError,
    add_probe_flags,
    old_spelling,
    positive_int,
    positive_seconds,
    probe_settings,
    seconds,
    words,
)

if TYPE_CHECKING:
    from jobs.launch.policyreports import ReportOptions


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Probe continuously: every --interval, re-discover the targets (or re-read "
        "--targets), run the checks of this agent's kind on its shard, and export. "
        "Serves /healthz, /readyz, /metrics and /results on --listen."
    )
    p.add_argument(
        "--kind",
        required=True,
        choices=("sidecar", "plain"),
        help="sidecar: mesh, xfcc-spoof, self (pod with a sidecar); "
        "plain: plaintext, peer-cert, foreign-client (pod without one)",
    )
    p.add_argument(
        "--targets",
        type=Path,
        metavar="FILE",
        help="a targets file re-read every round, instead of discovering the cluster",
    )
    disc = p.add_argument_group("discovery (without --targets)")
    flags.add_cluster_flags(disc)
    flags.add_scope_flags(disc)
    flags.add_mesh_flags(disc)
    disc.add_argument(
        "--root-cert-file",
        type=Path,
        metavar="FILE",
        help="mesh root PEM (e.g. the istio-ca-root-cert ConfigMap mounted); default: "
        "read that ConfigMap in --istio-namespace each round, into a temporary file",
    )
    disc.add_argument(
        "--source-identity",
        metavar="SPIFFE_ID",
        help="this agent's sidecar SPIFFE ID (default: spiffe://<td>/ns/$POD_NAMESPACE/"
        "sa/$SERVICE_ACCOUNT, service account mtlsprobe)",
    )
    disc.add_argument(
        "--sidecar-admin",
        default=DEFAULT_SIDECAR_ADMIN,
        metavar="URL",
        help=f"the sidecar's Envoy admin for the self check (default: {DEFAULT_SIDECAR_ADMIN})",
    )
    sched = p.add_argument_group("schedule")
    sched.add_argument(
        "--interval",
        type=positive_seconds,
        default=60.0,
        metavar="DURATION",
        help="time between round starts (default: 60s)",
    )
    sched.add_argument(
        "--jitter",
        type=seconds,
        default=None,
        metavar="DURATION",
        help="random delay added to each round start (default: 10%% of --interval, max 30s)",
    )
    sched.add_argument(
        "--rounds",
        type=positive_int,
        metavar="N",
        help="exit 0 after N rounds (the lab and benchmarks; default: run until SIGTERM)",
    )
    sched.add_argument(
        "--shutdown-grace",
        type=positive_seconds,
        default=10.0,
        metavar="DURATION",
        help="on SIGTERM, how long a running round may take to wind down (default: 10s)",
    )
    health = p.add_argument_group("health")
    health.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"HTTP for /healthz /readyz /metrics /results (default: {DEFAULT_LISTEN})",
    )
    health.add_argument(
        "--failure-threshold",
        type=positive_int,
        default=3,
        metavar="N",
        help="not ready after N failed rounds in a row (default: 3)",
    )
    shard = p.add_argument_group("sharding")
    shard.add_argument(
        "--probe-all",
        action="store_true",
        help="probe every target from this agent (small clusters); default in a pod: "
        "share the work with the other ready agents of this kind",
    )
    shard.add_argument(
        "--agent-id",
        metavar="NAME",
        help="this agent's name among its peers (default: $POD_NAME, else the hostname)",
    )
    shard.add_argument(
        "--peers",
        metavar="A,B,…",
        help="a fixed list of agent names to share the work with (instead of listing pods)",
    )
    shard.add_argument(
        "--peer-selector",
        metavar="LABELS",
        help="label selector of the agent pods in $POD_NAMESPACE "
        f"(default: {PEER_SELECTOR.format(kind='<kind>')}); used when $POD_NAME is set",
    )
    add_probe_flags(p.add_argument_group("probing"))
    flags.add_policy_report_flags(p.add_argument_group("evidence"), openreports=True)
    old_spelling(p, "--root-cert", "--root-cert-file")


def options(args: argparse.Namespace) -> AgentOptions:
    """The agent's options from its flags; a ``UsageError`` (exit 64) for bad ones."""
    access = flags.cluster_access(args)
    discovery = None
    if args.targets is None:
        # Each request is bounded by the round interval too: a round must not outlast it.
        timeout = min(access.request_timeout, args.interval)
        discovery = DiscoveryConfig(
            options=flags.discovery_options(args, timeout=timeout),
            kind=args.kind,
            kubeconfig=access.kubeconfig,
            context=access.context,
            root_cert=args.root_cert_file,
            source_identity=args.source_identity,
            sidecar_admin=args.sidecar_admin,
        )
    peers = words(args.peers) or None
    return AgentOptions(
        kind=args.kind,
        targets=args.targets,
        discovery=discovery,
        kubeconfig=access.kubeconfig,
        context=access.context,
        request_timeout=access.request_timeout,
        interval=args.interval,
        jitter=args.jitter,
        rounds=args.rounds,
        shutdown_grace=args.shutdown_grace,
        listen=args.listen,
        failure_threshold=args.failure_threshold,
        probe_all=args.probe_all,
        agent_id=args.agent_id,
        peers=peers,
        peer_selector=args.peer_selector,
        settings=probe_settings(args),
        policy_reports=_report_options(args, access.kubeconfig, access.context),
    )


def _report_options(
    args: argparse.Namespace, kubeconfig: str | None, context: str | None
) -> ReportOptions | None:
    if not args.policy_reports:
        return None
    from jobs.launch.policyreports import ReportOptions

    controls = None
    if args.compliance is not None:
        from probe.compliance import ComplianceFileError, load_controls

        try:
            controls = load_controls(args.compliance)
        except ComplianceFileError as exc:
            raise UsageError(str(exc)) from None
    return ReportOptions(
        kind="openreports" if args.openreports else "policyreport",
        controls=controls,
        kubeconfig=kubeconfig,
        context=context,
    )


def main(args: argparse.Namespace) -> int:
    from jobs.agent.main import run_agent

    return run_agent(options(args))
