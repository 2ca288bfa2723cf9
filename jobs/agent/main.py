"""``mtlsprobe agent``: continuous probing from every node, with metrics and health.

Each round re-reads the targets (discovery + plan with the read-only service account,
or a targets file), keeps this agent's shard, runs the checks of its kind and exports
the results. Nothing a round meets stops the agent; SIGTERM does, within a bound.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from jobs.agent.discovery import add_arguments as add_discovery_arguments
from probe.cli import UsageError, _positive_float, _positive_int, parse_duration

if TYPE_CHECKING:
    from jobs.agent.runtime import Agent
    from jobs.agent.server import AgentServer
    from jobs.agent.sources import PeerSource, TargetSource

DEFAULT_LISTEN = "0.0.0.0:9090"
DEFAULT_NAMESPACE = "mtlsprobe"
# The DaemonSets carry these labels; an agent shards with the ready pods of its kind.
PEER_SELECTOR = "app.kubernetes.io/name=mtlsprobe,app.kubernetes.io/component=agent-{kind}"


def _seconds(text: str) -> float:
    return parse_duration(text).total_seconds()


def _positive_seconds(text: str) -> float:
    v = _seconds(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return v


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
    add_discovery_arguments(p.add_argument_group("discovery (without --targets)"))
    sched = p.add_argument_group("schedule")
    sched.add_argument(
        "--interval",
        type=_positive_seconds,
        default=60.0,
        metavar="DURATION",
        help="time between round starts (default: 60s)",
    )
    sched.add_argument(
        "--jitter",
        type=_seconds,
        default=None,
        metavar="DURATION",
        help="random delay added to each round start (default: 10%% of --interval, max 30s)",
    )
    sched.add_argument(
        "--rounds",
        type=_positive_int,
        metavar="N",
        help="exit 0 after N rounds (the lab and benchmarks; default: run until SIGTERM)",
    )
    sched.add_argument(
        "--shutdown-grace",
        type=_positive_seconds,
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
        type=_positive_int,
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
    probe = p.add_argument_group("probing")
    probe.add_argument("--timeout", type=_positive_float, default=5.0, metavar="SECONDS")
    probe.add_argument("--concurrency", type=_positive_int, default=32, metavar="N")
    probe.add_argument(
        "--min-remaining", type=parse_duration, default=timedelta(hours=6), metavar="DURATION"
    )
    probe.add_argument(
        "--max-lifetime", type=parse_duration, default=timedelta(days=90), metavar="DURATION"
    )
    from jobs.launch.policyreports import add_flags as add_policy_report_flags

    add_policy_report_flags(p.add_argument_group("evidence"), openreports=True)


def _target_source(args: argparse.Namespace) -> TargetSource:
    from jobs.agent.sources import FileSource, SourceError

    if args.targets is not None:
        source = FileSource(args.targets)
        try:
            source.load()  # a bad file at start-up is a configuration error (exit 64)
        except SourceError as exc:
            raise UsageError(str(exc)) from None
        return source
    from jobs.agent.discovery import discovery_source

    return discovery_source(args)


def _peer_source(args: argparse.Namespace, me: str) -> PeerSource | None:
    from jobs.agent.sources import KubePeers, StaticPeers

    if args.probe_all:
        return None
    if args.peers:
        names = tuple(n.strip() for n in args.peers.split(",") if n.strip())
        return StaticPeers(names)
    if not (args.peer_selector or os.environ.get("POD_NAME")):
        return None  # not in a DaemonSet pod: a single agent probes everything
    from jobs.plan.discovery import DiscoveryError, api_client

    try:
        api = api_client(args.kubeconfig, args.context)
    except DiscoveryError as exc:
        raise UsageError(str(exc)) from None
    namespace = os.environ.get("POD_NAMESPACE", DEFAULT_NAMESPACE)
    return KubePeers(api, namespace, args.peer_selector or PEER_SELECTOR.format(kind=args.kind))


@dataclass
class Assembled:
    agent: Agent
    server: AgentServer
    description: str


def assemble(args: argparse.Namespace) -> Assembled:
    """Build the agent and bind its port from parsed flags (no round runs yet)."""
    from jobs.agent.metrics import AgentMetrics
    from jobs.agent.round import RoundRunner
    from jobs.agent.runtime import Agent, Schedule
    from jobs.agent.server import AgentServer, Endpoints, parse_listen
    from jobs.agent.sources import own_identity
    from jobs.agent.state import AgentState
    from probe import telemetry
    from probe.checks.base import Settings

    try:
        listen = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    me = own_identity(args.agent_id)
    source = _target_source(args)
    peers = _peer_source(args, me)
    settings = Settings(
        timeout=args.timeout,
        concurrency=args.concurrency,
        min_remaining=args.min_remaining,
        max_lifetime=args.max_lifetime,
    )
    jitter = args.jitter if args.jitter is not None else min(args.interval * 0.1, 30.0)
    # Stale when nothing completed for two intervals plus one slow round's budget.
    state = AgentState(
        failure_threshold=args.failure_threshold,
        stale_after_s=2 * args.interval + jitter + 3 * args.timeout + 30,
    )
    metrics = AgentMetrics(
        state, kind=args.kind, node=os.environ.get("NODE_NAME"), otlp=telemetry.enabled()
    )
    runner = RoundRunner(kind=args.kind, source=source, me=me, settings=settings, peers=peers)
    hooks = []
    if args.policy_reports:
        from jobs.launch.policyreports import agent_hook

        hooks.append(agent_hook(args, me))
    agent = Agent(
        runner,
        state,
        metrics,
        Schedule(interval_s=args.interval, jitter_s=jitter, max_rounds=args.rounds),
        after_round=hooks,
    )
    try:
        server = AgentServer(listen, Endpoints(state, metrics.prometheus_text, agent.results_json))
    except OSError as exc:
        metrics.shutdown()
        raise UsageError(f"--listen {args.listen}: {exc.strerror or exc}") from None
    description = (
        f"agent {me} ({args.kind}) on {listen[0]}:{server.port}, every {args.interval:g}s "
        f"+ up to {jitter:.1f}s jitter, targets from {source.describe()}, "
        + ("probing everything" if peers is None else f"sharding over {peers.describe()}")
    )
    return Assembled(agent, server, description)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    _limit_malloc_arenas()
    # APScheduler logs every run at INFO; the agent logs one line per round itself.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    built = assemble(args)
    stop = threading.Event()
    previous = {s: signal.signal(s, _setter(stop)) for s in (signal.SIGTERM, signal.SIGINT)}
    built.server.start()
    logging.getLogger("mtlsprobe.agent").info("%s", built.description)
    built.agent.start()
    try:
        while not stop.is_set() and not built.agent.done.is_set():
            stop.wait(0.5)
    finally:
        clean = built.agent.stop(args.shutdown_grace)
        built.server.close()
        for s, h in previous.items():
            signal.signal(s, h)
    logging.getLogger("mtlsprobe.agent").info(
        "stopped%s; telemetry flushed", "" if clean else " (a round was abandoned)"
    )
    return 0


def _limit_malloc_arenas() -> None:
    """Each round's worker threads would otherwise get their own glibc malloc arenas,
    and RSS creeps up over hundreds of rounds (BENCHMARKS.md); two arenas keep it
    flat. Same as MALLOC_ARENA_MAX=2; a no-op off glibc."""
    import ctypes
    import ctypes.util

    m_arena_max = -8
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(m_arena_max, 2)


def _setter(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return handler
