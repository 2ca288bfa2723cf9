"""The agent behind ``mtlsprobe agent`` (flags in ``jobs/cli/agent.py``): continuous
probing from every node, with metrics and health.

Each round re-reads the targets (discovery + plan with the read-only service account,
or a targets file), keeps this agent's shard, runs the checks of its kind and exports
the results. Nothing a round meets stops the agent; SIGTERM does, within a bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from probe.cliargs import UsageError

if TYPE_CHECKING:
    from jobs.agent.discovery import DiscoveryConfig
    from jobs.agent.runtime import Agent
    from jobs.agent.server import AgentServer
    from jobs.agent.sources import PeerSource, TargetSource
    from jobs.launch.policyreports import ReportOptions
    from probe.checks.base import Settings

DEFAULT_LISTEN = "0.0.0.0:9090"
DEFAULT_NAMESPACE = "mtlsprobe"
# The DaemonSets carry these labels; an agent shards with the ready pods of its kind.
PEER_SELECTOR = "app.kubernetes.io/name=mtlsprobe,app.kubernetes.io/component=agent-{kind}"


@dataclass(frozen=True)
class AgentOptions:
    """Everything the agent needs, built by the CLI (``jobs/cli/agent.py``) or a test."""

    kind: str  # sidecar | plain
    targets: Path | None = None  # a targets file re-read every round, or:
    discovery: DiscoveryConfig | None = None  # discover the cluster every round
    kubeconfig: str | None = None  # for listing the peer agents
    context: str | None = None
    request_timeout: float = 10.0
    interval: float = 60.0
    jitter: float | None = None  # None: 10% of the interval, at most 30 s
    rounds: int | None = None  # None: until SIGTERM
    shutdown_grace: float = 10.0
    listen: str = DEFAULT_LISTEN
    failure_threshold: int = 3
    probe_all: bool = False
    agent_id: str | None = None
    peers: tuple[str, ...] | None = None  # a fixed peer list instead of listing pods
    peer_selector: str | None = None
    settings: Settings | None = None  # None: the checks' defaults
    policy_reports: ReportOptions | None = None  # write PolicyReports after each round


def _target_source(opts: AgentOptions) -> TargetSource:
    from jobs.agent.sources import FileSource, SourceError

    if opts.targets is not None:
        source = FileSource(opts.targets)
        try:
            source.load()  # a bad file at start-up is a configuration error (exit 64)
        except SourceError as exc:
            raise UsageError(str(exc)) from None
        return source
    from jobs.agent.discovery import discovery_source

    if opts.discovery is None:
        raise UsageError("the agent needs a targets file or discovery")
    return discovery_source(opts.discovery)


def _peer_source(opts: AgentOptions) -> PeerSource | None:
    from jobs.agent.sources import KubePeers, StaticPeers

    if opts.probe_all:
        return None
    if opts.peers:
        return StaticPeers(opts.peers)
    if not (opts.peer_selector or os.environ.get("POD_NAME")):
        return None  # not in a DaemonSet pod: a single agent probes everything
    from jobs.plan.discovery import DiscoveryError, api_client

    try:
        api = api_client(opts.kubeconfig, opts.context, opts.request_timeout)
    except DiscoveryError as exc:
        raise UsageError(str(exc)) from None
    namespace = os.environ.get("POD_NAMESPACE", DEFAULT_NAMESPACE)
    return KubePeers(api, namespace, opts.peer_selector or PEER_SELECTOR.format(kind=opts.kind))


@dataclass
class Assembled:
    agent: Agent
    server: AgentServer
    description: str


def assemble(opts: AgentOptions) -> Assembled:
    """Build the agent and bind its port (no round runs yet)."""
    from jobs.agent.metrics import AgentMetrics
    from jobs.agent.round import RoundRunner
    from jobs.agent.runtime import Agent, Schedule
    from jobs.agent.server import AgentServer, Endpoints, parse_listen
    from jobs.agent.sources import own_identity
    from jobs.agent.state import AgentState
    from probe import telemetry
    from probe.checks.base import Settings

    try:
        listen = parse_listen(opts.listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    me = own_identity(opts.agent_id)
    source = _target_source(opts)
    peers = _peer_source(opts)
    settings = opts.settings or Settings()
    jitter = opts.jitter if opts.jitter is not None else min(opts.interval * 0.1, 30.0)
    # Stale when nothing completed for two intervals plus one slow round's budget.
    state = AgentState(
        failure_threshold=opts.failure_threshold,
        stale_after_s=2 * opts.interval + jitter + 3 * settings.timeout + 30,
    )
    metrics = AgentMetrics(
        state, kind=opts.kind, node=os.environ.get("NODE_NAME"), otlp=telemetry.enabled()
    )
    runner = RoundRunner(kind=opts.kind, source=source, me=me, settings=settings, peers=peers)
    hooks = []
    if opts.policy_reports is not None:
        from jobs.launch.policyreports import agent_hook

        hooks.append(agent_hook(opts.policy_reports, opts.kind, me))
    agent = Agent(
        runner,
        state,
        metrics,
        Schedule(interval_s=opts.interval, jitter_s=jitter, max_rounds=opts.rounds),
        after_round=hooks,
    )
    try:
        server = AgentServer(listen, Endpoints(state, metrics.prometheus_text, agent.results_json))
    except OSError as exc:
        metrics.shutdown()
        raise UsageError(f"--listen {opts.listen}: {exc.strerror or exc}") from None
    description = (
        f"agent {me} ({opts.kind}) on {listen[0]}:{server.port}, every {opts.interval:g}s "
        f"+ up to {jitter:.1f}s jitter, targets from {source.describe()}, "
        + ("probing everything" if peers is None else f"sharding over {peers.describe()}")
    )
    return Assembled(agent, server, description)


def run_agent(opts: AgentOptions) -> int:
    """Run until SIGTERM/SIGINT or ``opts.rounds``; exit code 0."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    _limit_malloc_arenas()
    # APScheduler logs every run at INFO; the agent logs one line per round itself.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    built = assemble(opts)
    stop = threading.Event()
    previous = {s: signal.signal(s, _setter(stop)) for s in (signal.SIGTERM, signal.SIGINT)}
    built.server.start()
    logging.getLogger("mtlsprobe.agent").info("%s", built.description)
    built.agent.start()
    try:
        while not stop.is_set() and not built.agent.done.is_set():
            stop.wait(0.5)
    finally:
        clean = built.agent.stop(opts.shutdown_grace)
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
